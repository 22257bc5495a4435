"""GradRefine (DataFreeShield §4.3, Eq 9-10, Algorithm 1 lines 12-21).

Gradients g^(b) of ℬ minibatches are taken at the *same* weights. Per parameter element k:

    A_k  = (1/ℬ) Σ_b sign(g_k^(b))                                   (Eq 9)
    g*_k = Φ(A_k) · Σ_b 1{A_k·g_k^(b) > 0} · g_k^(b),  Φ = 1{|A_k| ≥ τ}   (Eq 10)

i.e. where the signs agree strongly enough, the sum of the majority-sign components; elsewhere 0.
Like the reference we keep only running sums (Σ sign, Σ positive parts, Σ negative parts), so the
memory cost is 3× the parameters regardless of ℬ.

Learning rate: Appendix A.3 says the lr is "incremented linearly with ℬ". Eq 10 already *sums* (no
1/ℬ), so the refined step is ~ℬ× a single-minibatch step — that is the linear scaling. Multiplying
the lr by ℬ on top scales the step by ℬ² and diverged in our measurements (ℬ = 4). We therefore
default to the sum with the base lr (``lr_scale_with_batches=False`` in the trainer) and document it.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class GradRefine:
    def __init__(self, params: Iterable[torch.nn.Parameter], num_batches: int, tau: float = 0.5) -> None:
        if num_batches < 1:
            raise ValueError("GradRefine needs num_batches ≥ 1")
        if not 0.0 <= tau <= 1.0:
            raise ValueError(f"tau must lie in [0, 1], got {tau}")
        self.params = [p for p in params if p.requires_grad]
        self.B, self.tau = num_batches, tau
        self.count = 0
        self._sign = [torch.zeros_like(p) for p in self.params]
        self._pos = [torch.zeros_like(p) for p in self.params]
        self._neg = [torch.zeros_like(p) for p in self.params]

    @torch.no_grad()
    def accumulate(self) -> None:
        """Read the current ``.grad`` of every parameter (one minibatch's gradient) and clear it."""
        for p, s, pos, neg in zip(self.params, self._sign, self._pos, self._neg, strict=True):
            if p.grad is None:
                continue
            g = p.grad
            s.add_(torch.sign(g))
            pos.add_(g.clamp(min=0))
            neg.add_(g.clamp(max=0))
            p.grad = None
        self.count += 1

    @property
    def ready(self) -> bool:
        return self.count >= self.B

    @torch.no_grad()
    def apply(self) -> float:
        """Write g* into ``.grad`` (Eq 10), reset the accumulators, return the kept fraction."""
        if self.count == 0:
            raise RuntimeError("GradRefine.apply() called before any accumulate()")
        kept = total = 0
        for p, s, pos, neg in zip(self.params, self._sign, self._pos, self._neg, strict=True):
            A = s / self.count
            mask = A.abs() >= self.tau
            g = torch.where(A > 0, pos, torch.where(A < 0, neg, torch.zeros_like(pos))) * mask
            p.grad = g
            kept += int(mask.sum())
            total += mask.numel()
            s.zero_()
            pos.zero_()
            neg.zero_()
        self.count = 0
        return kept / max(total, 1)


def refine(grads: torch.Tensor, tau: float = 0.5) -> torch.Tensor:
    """Functional Eq 9-10 on a stacked ``(ℬ, ...)`` gradient tensor (for tests and analysis)."""
    A = torch.sign(grads).mean(0)
    agree = (A.unsqueeze(0) * grads) > 0
    return (A.abs() >= tau) * (grads * agree).sum(0)
