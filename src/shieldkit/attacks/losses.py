"""Attack objectives beyond cross-entropy, as per-sample losses ``loss(logits, target)`` to be
*maximised* by :func:`shieldkit.attacks.pgd.pgd`.

* :func:`margin_loss` — the Carlini-Wagner margin  max_{j≠y} z_j − z_y  (C&W 2017, their f_6 with
  κ = ∞). It acts on logits, so it is invariant to a temperature / logit scaling that saturates the
  softmax and zeroes cross-entropy gradients (defensive distillation, C&W 2016) — the standard
  adaptive loss against that kind of masking.
* :func:`dfs_modified_loss` — DataFreeShield Appendix G / Table 21 "modified attacks": PGD whose
  inner loss is (a) KL(S(x')‖S(x)), (b) KL(S(x')‖T(x)) or (c) their sum, where S is the evaluated
  (student) model and T the teacher. Following the paper's (and TRADES') convention the KL is
  ``F.kl_div(log S(x'), P)`` = KL(P ‖ S(x')) with P the fixed reference distribution.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from shieldkit.attacks.pgd import kl_to_target_probs


def margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample CW margin max_{j≠y} z_j − z_y (positive ⇔ misclassified)."""
    z_y = logits.gather(1, y.view(-1, 1)).squeeze(1)
    other = logits.clone()
    other.scatter_(1, y.view(-1, 1), -float("inf"))
    return other.amax(1) - z_y


def dfs_modified_loss(variant: str, n_classes: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Loss for DataFreeShield Table 21 variant 'a' | 'b' | 'c'.

    The target handed to PGD is the concatenation ``[S(x) probs, T(x) probs]`` (N × 2K) so that
    a single ``target`` tensor carries both references.
    """
    if variant not in ("a", "b", "c"):
        raise ValueError(f"DFShield modified attack must be 'a', 'b' or 'c', got {variant!r}")

    def loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        p_s, p_t = target[:, :n_classes], target[:, n_classes:]
        if variant == "a":
            return kl_to_target_probs(logits, p_s)
        if variant == "b":
            return kl_to_target_probs(logits, p_t)
        return kl_to_target_probs(logits, p_t) + kl_to_target_probs(logits, p_s)

    return loss


def softmax_probs(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([F.softmax(model(x[i : i + batch_size]), 1) for i in range(0, len(x), batch_size)])
