"""The three synthesis losses of DataFreeShield Eq 3-5 (after DeepInversion, Yin et al. 2020).

* L_class (Eq 3): cross-entropy of T(x̂) to the assigned labels ŷ.
* L_feature (Eq 4): for every BatchNorm layer l, the distance between the batch statistics of the
  layer's *input* and the running statistics stored in the layer, read through forward hooks.
* L_prior (Eq 5): total variation of the images.

Eq 4/5 are written with squared ℓ2 norms; the reference implementation (a fork of DeepInversion)
uses *unsquared* ℓ2 norms of the whole difference vectors, compares variances (biased batch variance vs
running_var), and adds the two diagonal differences to the TV prior. We follow the reference by
default (``norm="unsquared"``) — it is what produced the paper's numbers — and offer the literal
equations with ``norm="squared"``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from shieldkit.models.introspect import require_batchnorm


def class_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Eq 3 (mean over the batch)."""
    return F.cross_entropy(logits, labels)


def tv_prior(x: torch.Tensor, norm: str = "unsquared") -> torch.Tensor:
    """Eq 5 total variation. ``unsquared``: ‖Δh‖₂ + ‖Δv‖₂ + ‖Δd₁‖₂ + ‖Δd₂‖₂ over the batch (reference);
    ``squared``: Σ (Δh)² + (Δv)² (Eq 5 as printed)."""
    dh = x[:, :, :, 1:] - x[:, :, :, :-1]
    dv = x[:, :, 1:, :] - x[:, :, :-1, :]
    if norm == "squared":
        return dh.pow(2).sum() + dv.pow(2).sum()
    d1 = x[:, :, 1:, 1:] - x[:, :, :-1, :-1]
    d2 = x[:, :, :-1, 1:] - x[:, :, 1:, :-1]
    return dh.norm() + dv.norm() + d1.norm() + d2.norm()


class BNStatistics:
    """Forward hooks on every BatchNorm layer collecting Eq 4's per-layer distance.

    Use as a context manager; after a forward pass ``.loss()`` returns Σ_l d(μ_l, μ_l^T) + d(σ²_l, σ²_l^T)
    with all layers weighted equally. Raises a clear error for a model without BatchNorm.
    """

    def __init__(self, model: nn.Module, norm: str = "unsquared") -> None:
        if norm not in ("unsquared", "squared"):
            raise ValueError(f"norm must be 'unsquared' or 'squared', got {norm!r}")
        self.layers = require_batchnorm(model)
        self.norm = norm
        self._terms: list[torch.Tensor] = []
        self._handles: list = []

    def _hook(self, module: nn.modules.batchnorm._BatchNorm, inputs: tuple, _output: torch.Tensor) -> None:
        x = inputs[0]
        dims = [0] + list(range(2, x.ndim))
        var, mean = torch.var_mean(x, dim=dims, unbiased=False)  # one pass; biased, as BN uses
        mean, var = self._compared(module, mean, var)
        dm = module.running_mean - mean
        dv = module.running_var - var
        if self.norm == "squared":
            self._terms.append(dm.pow(2).sum() + dv.pow(2).sum())
        else:
            self._terms.append(dm.norm() + dv.norm())

    def _compared(self, module: nn.Module, mean: torch.Tensor, var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The statistics compared with the running ones: the batch's own (a subclass may blend in history)."""
        return mean, var

    def __enter__(self) -> BNStatistics:
        self._handles = [m.register_forward_hook(self._hook) for _, m in self.layers]
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def reset(self) -> None:
        self._terms = []

    def loss(self) -> torch.Tensor:
        if not self._terms:
            raise RuntimeError("no BatchNorm statistics collected: run a forward pass inside the context")
        out = torch.stack(self._terms).sum()
        self._terms = []
        return out
