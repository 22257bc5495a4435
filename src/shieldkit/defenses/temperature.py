"""Temperature scaling of a classifier's logits: defensive distillation's network as seen at T.

Papernot et al. 2016 train (teacher and distilled network) at temperature T and deploy at T = 1, so the
deployed logits are ~T times larger than normal and the softmax saturates; :class:`TemperatureScaled`
is ``z(x)/T`` — used to train at T and, by the adaptive attack (Carlini & Wagner 2016), to undo the
saturation.
"""

from __future__ import annotations

import torch
from torch import nn

from shieldkit.defenses.base import BaseModelAlias, Defense


class TemperatureScaled(Defense):
    """``z(x)/T`` — the network as seen at temperature T (training and the adaptive attack on it).

    Deterministic and differentiable: no randomness, no BPDA surrogate."""

    model = BaseModelAlias()  # old name

    def __init__(self, model: nn.Module, temperature: float) -> None:
        super().__init__(model)
        self.temperature = temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_model(x) / self.temperature
