"""Max-Mahalanobis centre (MMC) heads, Pang et al. 2020 ("Rethinking softmax cross-entropy loss for adversarial
robustness"): the final linear layer is replaced by a projection whose logits are −½‖z − μ_k‖²₂ for fixed
Max-Mahalanobis centres μ_k. The head is the deployed defence; its training objective (``"mmc"``) is
:mod:`shieldkit.training.defense_training`, its break :func:`shieldkit.evaluation.breaks.break_mmc`.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def max_mahalanobis_centers(num_classes: int, dim: int, c_mm: float = 10.0) -> torch.Tensor:
    """Max-Mahalanobis centres (Pang et al. 2018, MM-LDA Algorithm 1): ``num_classes`` vectors of norm
    ``c_mm`` in R^dim whose pairwise inner products are all −c_mm²/(L − 1) — the L-simplex, i.e. maximal
    minimal distance between classes. Requires dim ≥ L − 1."""
    L = num_classes
    if L < 2 or dim < L - 1:
        raise ValueError(f"need ≥ 2 classes and feature dim ≥ L − 1 = {L - 1}, got L={L}, dim={dim}")
    mu = torch.zeros(L, dim, dtype=torch.float64)
    mu[0, 0] = 1.0
    for i in range(1, L):
        for j in range(i):
            mu[i, j] = -(1.0 / (L - 1) + mu[i] @ mu[j]) / mu[j, j]
        if i < dim:
            mu[i, i] = math.sqrt(max(1.0 - float(mu[i] @ mu[i]), 0.0))
    return (mu * c_mm).float()


class MMCHead(nn.Module):
    """Pang et al. 2020 head: a linear map to z, then logits_k = −½‖z − μ_k‖²₂ with fixed MM centres μ."""

    def __init__(self, in_features: int, num_classes: int, c_mm: float = 10.0) -> None:
        super().__init__()
        self.proj = nn.Linear(in_features, in_features)
        self.register_buffer("centers", max_mahalanobis_centers(num_classes, in_features, c_mm))

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        return self.proj(features)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        z = self.embed(features)
        return -0.5 * torch.cdist(z, self.centers).pow(2)


def attach_mmc_head(model: nn.Module, c_mm: float = 10.0) -> nn.Module:
    """Replace a shieldkit classifier's linear head by an :class:`MMCHead` (in place); returns the model."""
    net = getattr(model, "net", model)
    head = getattr(net, "head", None)
    if not isinstance(head, nn.Linear):
        raise TypeError("attach_mmc_head needs a model whose .net.head (or .head) is an nn.Linear")
    net.head = MMCHead(head.in_features, head.out_features, c_mm).to(head.weight.device)
    return model


def find_mmc_head(model: nn.Module) -> MMCHead:
    net = getattr(model, "net", model)
    head = getattr(net, "head", None)
    if not isinstance(head, MMCHead):
        raise TypeError("the 'mmc' objective needs a model with an MMCHead: call attach_mmc_head(model)")
    return head
