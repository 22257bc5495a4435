"""The shape every built-in architecture shares: a trunk, global pooling and one ``nn.Linear`` head."""

from __future__ import annotations

import torch
from torch import nn


class PooledLinearClassifier(nn.Module):
    """``forward = head ∘ forward_features``: the head/features contract that the features-based methods
    (DataFreeShield's feature-level terms, the latent attack, MMC) read from a model. Subclasses build
    ``self.head`` and define :meth:`forward_features` (trunk → pooled, flattened features)."""

    # no class-level ``head: nn.Linear`` annotation: torch.jit.script reads class annotations and cannot
    # resolve it (the TorchScript import route scripts user models built on these classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))
