"""Adaptive-attack building blocks (Athalye et al. 2018): EOT and BPDA.

* :class:`EOT` turns a randomised model into the deterministic expectation an attacker should
  differentiate: ``EOT(model, samples=k)(x)`` = mean over k independent forward passes of the
  logits, so its gradient is the Monte-Carlo estimate of ∇E_t[f(t(x))].
* :func:`bpda` wraps a non-differentiable preprocessing ``g`` so that the forward pass is ``g(x)`` and
  the backward pass uses a differentiable approximation (identity by default: g(x) ≈ x).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class EOT(nn.Module):
    """Expectation over transformation: average the logits of ``samples`` stochastic passes."""

    def __init__(self, model: nn.Module, samples: int = 8) -> None:
        super().__init__()
        if samples < 1:
            raise ValueError("EOT needs at least one sample")
        self.model = model
        self.samples = samples

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.model(x) for _ in range(self.samples)]).mean(0)


class _BPDA(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, fn: Callable, approx: Callable | None):  # noqa: ANN205
        ctx.save_for_backward(x)
        ctx.approx = approx
        with torch.no_grad():
            return fn(x)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # noqa: ANN205
        (x,) = ctx.saved_tensors
        if ctx.approx is None:  # identity approximation: ∂g/∂x ≈ I
            return grad_out, None, None
        with torch.enable_grad():
            xr = x.detach().requires_grad_(True)
            y = ctx.approx(xr)
            (g,) = torch.autograd.grad(y, xr, grad_out)
        return g, None, None


def bpda(fn: Callable[[torch.Tensor], torch.Tensor], approx: Callable[[torch.Tensor], torch.Tensor] | None = None
         ) -> Callable[[torch.Tensor], torch.Tensor]:
    """Return ``x ↦ fn(x)`` whose gradient is that of ``approx`` (identity when ``None``)."""
    return lambda x: _BPDA.apply(x, fn, approx)


class BPDAWrapper(nn.Module):
    """``model(bpda(preprocess)(x))`` as a module — the defended pipeline an attacker differentiates."""

    def __init__(self, preprocess: Callable[[torch.Tensor], torch.Tensor], model: nn.Module,
                 approx: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        super().__init__()
        self.model = model
        self._pre = bpda(preprocess, approx)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self._pre(x))
