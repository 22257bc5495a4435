"""The one interface every synthesis method implements (:class:`SynthesisMethod`) and what it is given
(:class:`SynthesisContext`). The run driver (:mod:`~shieldkit.synthesis.engine`) owns everything methods share
— fingerprints, the per-shard seeds and draws, finiteness checks, atomic shard writes, the manifest — so a
method only turns one shard's draws into images."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from shieldkit.synthesis.config import SynthesisConfig


@dataclass
class SynthesisContext:
    teacher: nn.Module  # eval mode, frozen, channels-last on CPU while the run lasts
    out: Path
    cfg: SynthesisConfig
    num_classes: int
    image_shape: tuple[int, int, int]
    mean: torch.Tensor  # the teacher's input normalisation, (1, C, 1, 1) on the device
    std: torch.Tensor
    device: torch.device

    @property
    def channels_last(self) -> bool:
        """Channels-last input makes a small CNN's input-gradient pass ~2.2× faster on CPU (measured, dss.py)."""
        return self.device.type == "cpu"


class SynthesisMethod(Protocol):
    """Shard ``i`` is made from ``labels``/``alphas``/``g`` drawn from ``derive_seed(seed, "shard", i)`` alone."""

    def plan(self, mine: list[int], world_size: int) -> list[int]:
        """The shards of ``mine`` to (re)make, in order; every other shard of ``mine`` must already exist."""
        ...

    def prepare(self, progress: bool) -> None:
        """Work before the first shard (the fast path's generator warm-up); resumable on its own."""
        ...

    def make(self, i: int, labels: torch.Tensor, alphas: torch.Tensor,
             g: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        """[0, 1] images for shard ``i`` and the final loss terms (``class``, ``feature``, ``prior``)."""
        ...

    def committed(self, i: int) -> None:
        """Shard ``i`` is on disk (the fast path saves its state now)."""
        ...

    def summary(self) -> dict:
        """Method facts for the manifest (e.g. warm-up time); ``{}`` if none."""
        ...
