"""Every shieldkit model takes [0, 1] images and returns logits; normalisation lives inside."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn


@dataclass
class ModelCard:
    """What the JSON sidecar of a weight file records (and all that is needed to rebuild the model)."""

    arch: str
    num_classes: int
    in_channels: int
    image_size: int
    mean: list[float]
    std: list[float]
    dataset: str = ""
    classes: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelCard:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)


class NormalizedClassifier(nn.Module):
    """``logits = net((x - mean) / std)`` for images ``x`` in [0, 1].

    Keeping the normalisation inside the module means attacks, synthesis and purifiers all work in
    [0, 1] pixel space, where ε is defined — the reference code's habit of attacking in normalised
    space silently rescales ε.
    """

    def __init__(self, net: nn.Module, card: ModelCard) -> None:
        super().__init__()
        self.net = net
        self.card = card
        c = card.in_channels
        self.register_buffer("mean", torch.tensor(card.mean, dtype=torch.float32).view(1, c, 1, 1))
        self.register_buffer("std", torch.tensor(card.std, dtype=torch.float32).view(1, c, 1, 1))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (N, d) for [0, 1] inputs."""
        return self.net.forward_features(self.normalize(x))

    @property
    def head(self) -> nn.Linear:
        return self.net.head
