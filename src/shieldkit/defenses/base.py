"""The one defence base: every shieldkit defence is a :class:`Defense` wrapped around a classifier.

A defence declares, in one place, what an evaluator or an adaptive attacker needs to know about it:

* ``base_model`` — the wrapped (undefended) classifier;
* ``randomised`` — whether two passes over the same input may differ (then attack it with EOT, and
  call :meth:`~Defense.reseed` before an evaluation to make it reproducible);
* :meth:`~Defense.reseed` — restart the defence's own random stream (a no-op for deterministic ones);
* :meth:`~Defense.bpda_surrogate` — the differentiable approximation of the defence's
  non-differentiable part that a BPDA attack (:class:`shieldkit.attacks.adaptive.BPDAWrapper`) should
  use on the backward pass; ``None`` means the defence is differentiable end to end (nothing to
  approximate), identity is the default for input transforms.

Randomness is declared only through ``randomised`` (a class attribute, or set per instance by
defences that are random for some settings only).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

Transform = Callable[[torch.Tensor], torch.Tensor]


def identity(x: torch.Tensor) -> torch.Tensor:
    """The default BPDA surrogate of an input transform (Athalye et al. 2018 §4.1: g(x) ≈ x)."""
    return x


class Defense(nn.Module):
    """Base of every defence: ``forward`` maps [0, 1] images to logits of the defended system."""

    randomised: bool = False

    def __init__(self, base_model: nn.Module) -> None:
        super().__init__()
        self.base_model = base_model

    def reseed(self, seed: int | None) -> None:
        """Restart the defence's random stream with ``seed`` (deterministic defences: nothing to do)."""

    def bpda_surrogate(self) -> Transform | None:
        """The differentiable stand-in for the non-differentiable part, or ``None`` if there is none."""
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_model(x)


class BaseModelAlias:
    """A read-only old name of ``base_model`` (``.model``, ``.classifier``, ``.base``), kept only for
    callers outside :mod:`shieldkit.defenses` that still read it; new code reads ``base_model``."""

    def __get__(self, obj: Defense | None, owner: type) -> object:
        return self if obj is None else obj.base_model

    def __set__(self, obj: Defense, value: object) -> None:
        raise AttributeError("read-only alias of base_model: assign base_model instead")
