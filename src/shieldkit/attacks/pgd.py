"""Projected gradient descent (Madry et al. 2018; DataFreeShield Eq 2) with a pluggable loss.

Why our own PGD rather than torchattacks': robust training needs the inner maximisation on losses
that are not cross-entropy to a label — DataFreeShield's KL(S(x')‖S(x)), TRADES' KL, DFShield
Table 21's modified attacks — and it must draw its random start from an explicit generator so that
training is reproducible and resumable. With ``loss="ce"`` it matches torchattacks.PGD (tested in
``tests/test_pgd.py``).

Update (ℓ∞):  x ← Π_ε(x + α·sign(∇ℓ));  (ℓ2): x ← Π_ε(x + α·∇ℓ/‖∇ℓ‖₂); both then clipped to [0, 1].
The attack keeps, per sample, the iterate with the highest loss when ``track_best`` is set (as
AutoAttack's APGD does); training uses the last iterate, as the reference implementations do.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits_adv, target) -> per-sample loss


@dataclass
class PGDConfig:
    eps: float = 0.3
    norm: str = "linf"  # "linf" | "l2"
    steps: int = 10
    alpha: float | None = None  # step size; default ε/4 (DataFreeShield App. A.3) for ℓ∞, 2.5ε/steps for ℓ2
    random_start: bool = True
    start: str = "uniform"  # "uniform" (Madry) | "normal" (reference code: x + 0.001·N(0,1))
    restarts: int = 1

    def step_size(self) -> float:
        if self.alpha is not None:
            return self.alpha
        return self.eps / 4 if self.norm == "linf" else 2.5 * self.eps / max(self.steps, 1)

    def __post_init__(self) -> None:
        if self.norm not in ("linf", "l2"):
            raise ValueError(f"norm must be 'linf' or 'l2', got {self.norm!r}")
        if self.eps < 0 or self.steps < 0:
            raise ValueError("eps and steps must be non-negative")


def ce_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y, reduction="none")


def kl_to_target_probs(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """Per-sample KL(target ‖ softmax(logits)) — maximised to push S(x') away from a reference
    distribution (TRADES' inner loss, DFShield's KL(S(x')‖S(x)))."""
    logp = F.log_softmax(logits, dim=1)
    return F.kl_div(logp, target_probs, reduction="none").sum(1)


LOSSES: dict[str, LossFn] = {"ce": ce_loss, "kl": kl_to_target_probs}


def _l2_norm(v: torch.Tensor) -> torch.Tensor:
    return v.flatten(1).norm(p=2, dim=1).clamp_min(1e-12).view(-1, *([1] * (v.ndim - 1)))


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Π onto the ε-ball around ``x`` intersected with the [0, 1] box."""
    delta = x_adv - x
    delta = delta.clamp(-eps, eps) if norm == "linf" else delta * torch.clamp(eps / _l2_norm(delta), max=1.0)
    return (x + delta).clamp(0.0, 1.0)


def _random_init(x: torch.Tensor, cfg: PGDConfig, generator: torch.Generator | None) -> torch.Tensor:
    if not cfg.random_start or cfg.eps == 0:
        return x.clone()
    noise = torch.empty_like(x)
    if cfg.start == "normal":
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 0.001
    elif cfg.norm == "linf":
        noise = (torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1) * cfg.eps
    else:
        d = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        r = torch.rand((x.shape[0],) + (1,) * (x.ndim - 1), generator=generator, device=x.device, dtype=x.dtype)
        noise = d / _l2_norm(d) * r * cfg.eps
    return project(x + noise, x, cfg.eps, cfg.norm)


def pgd(model: nn.Module, x: torch.Tensor, target: torch.Tensor, cfg: PGDConfig, loss_fn: LossFn | str = "ce",
        generator: torch.Generator | None = None, track_best: bool = False, targeted: bool = False
        ) -> torch.Tensor:
    """Return adversarial examples for ``x`` (in [0, 1]) that maximise ``loss_fn(model(x'), target)``.

    ``target`` is whatever the loss takes (labels for CE, probabilities for KL). The model's mode is
    left as the caller set it (training code attacks in eval mode, as the reference does); parameter
    gradients are not accumulated. With ``targeted=True`` the loss is minimised instead.
    """
    lf = LOSSES[loss_fn] if isinstance(loss_fn, str) else loss_fn
    if cfg.steps == 0 or cfg.eps == 0:
        return x.detach().clone()
    alpha = cfg.step_size()
    sign = -1.0 if targeted else 1.0
    x = x.detach()
    best_x, best_loss = x.clone(), torch.full((x.shape[0],), -float("inf"), device=x.device)
    params = [p for p in model.parameters() if p.requires_grad]
    saved = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        for _ in range(max(cfg.restarts, 1)):
            x_adv = _random_init(x, cfg, generator)
            for _ in range(cfg.steps):
                x_adv.requires_grad_(True)
                with torch.enable_grad():
                    loss = sign * lf(model(x_adv), target)
                    grad, = torch.autograd.grad(loss.sum(), x_adv)
                x_adv = x_adv.detach()
                if track_best:
                    _update_best(best_x, best_loss, x_adv, loss.detach())
                step = grad.sign() if cfg.norm == "linf" else grad / _l2_norm(grad)
                x_adv = project(x_adv + alpha * step, x, cfg.eps, cfg.norm)
            if track_best:
                with torch.no_grad():
                    final = sign * lf(model(x_adv), target)
                _update_best(best_x, best_loss, x_adv, final)
        return best_x if track_best else x_adv.detach()
    finally:
        for p, s in zip(params, saved, strict=True):
            p.requires_grad_(s)


def _update_best(best_x: torch.Tensor, best_loss: torch.Tensor, x_adv: torch.Tensor, loss: torch.Tensor) -> None:
    better = loss > best_loss
    best_loss[better] = loss[better]
    best_x[better] = x_adv[better]
