"""RND — Random Noise Defense (Qin, Fan, Zha & Wu, NeurIPS 2021), the randomness-injection baseline of
UniG Table 1: every query is answered for ``x + ν·N(0, I)`` with fresh noise, ν = 0.02.

Small input noise barely moves clean predictions, but it swamps the tiny loss differences that
score-based query attacks estimate gradients (or accept/reject random-search steps) from. As in RND's
reference code the noisy input is *not* clipped back to [0, 1] (clipping would bias the noise on the
many saturated MNIST pixels); ``clip=True`` is offered for models that cannot take out-of-range input.
Noise comes from an explicit generator so an evaluation is reproducible.
"""

from __future__ import annotations

import torch
from torch import nn

from shieldkit.defenses.base import Defense
from shieldkit.utils.seed import derive_seed


class RandomNoiseDefense(Defense):
    """``logits = model(x + σ·ε)``, ε ~ N(0, I) drawn afresh for every call (RND, Qin et al. 2021).

    Differentiable (no BPDA surrogate); randomised, so attack it with EOT."""

    randomised = True

    def __init__(self, model: nn.Module, sigma: float = 0.02, *, clip: bool = False, seed: int = 0) -> None:
        super().__init__(model)
        if sigma < 0:
            raise ValueError(f"sigma must be >= 0, got {sigma}")
        self.sigma = sigma
        self.clip = clip
        self.seed = seed
        self._generators: dict[str, torch.Generator] = {}

    def _generator(self, device: torch.device) -> torch.Generator:
        key = str(device)
        if key not in self._generators:
            g = torch.Generator(device=device)
            g.manual_seed(derive_seed(self.seed, "rnd", key))
            self._generators[key] = g
        return self._generators[key]

    def reseed(self, seed: int | None) -> None:
        self.seed = 0 if seed is None else seed
        self._generators.clear()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(x.shape, generator=self._generator(x.device), device=x.device, dtype=x.dtype)
        xn = x + self.sigma * noise
        if self.clip:
            xn = xn.clamp(0.0, 1.0)
        return self.base_model(xn)
