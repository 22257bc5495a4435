"""Small convolutional generators used by the adapted baselines (DataFreeShield §5.2, Table 2, App. A.4).

One class, :class:`ConvGenerator`, covers the three families the baselines use:

* ``"dfad"`` — the unconditional generator of DFAD (Fang et al. 2019) that DFME (Truong et al. 2021)
  reuses: ``Linear → BN → ↑2 → Conv3 → BN → LReLU → ↑2 → Conv3 → BN → LReLU → Conv3``;
* ``"acgan"`` — the same trunk driven by ``embed(y) ⊙ z``: the label-conditional ACGAN generator
  (Odena et al. 2017) that DataFreeShield used for DFARD because DFARD publishes no architecture (App. A);
  AIT's GDFQ-style generator and DaST's label-controlled generator are conditional in the same way.

Deviation (documented): the reference generators end in ``tanh`` (+ an affine-free BN) and feed a
normalised-input network; shieldkit models take [0, 1] images and normalise internally, so our last
layer is a sigmoid — the output is a valid image for the teacher, PGD and the metrics without clipping.
Spatial size: the trunk starts at ``⌈H/4⌉`` and is centre-cropped to ``H×W`` (28 → 7·4 = 28 exactly,
32 → 8·4).
"""

from __future__ import annotations

import torch
from torch import nn

GENERATOR_KINDS = ("dfad", "acgan")


class ConvGenerator(nn.Module):
    """``G(z, y) -> images`` in [0, 1] of shape ``(N, C, H, W)``; ``y`` is ignored when unconditional."""

    def __init__(
        self, nz: int, image_shape: tuple[int, int, int], num_classes: int, kind: str = "dfad", ngf: int = 32
    ) -> None:
        super().__init__()
        if kind not in GENERATOR_KINDS:
            raise ValueError(f"unknown generator kind {kind!r}; choose from {GENERATOR_KINDS}")
        c, h, w = image_shape
        if c not in (1, 3) or h < 8 or w < 8:
            raise ValueError(f"generator needs a 1- or 3-channel image of at least 8×8, got {image_shape}")
        self.nz, self.image_shape, self.num_classes, self.kind = nz, tuple(image_shape), num_classes, kind
        self.conditional = kind == "acgan"
        self.init = (-(-h // 4), -(-w // 4))
        self.embed = nn.Embedding(num_classes, nz) if self.conditional else None
        self.fc = nn.Linear(nz, 2 * ngf * self.init[0] * self.init[1])
        self.ngf = ngf
        self.body = nn.Sequential(
            nn.BatchNorm2d(2 * ngf),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(2 * ngf, 2 * ngf, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * ngf),
            nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(2 * ngf, ngf, 3, padding=1, bias=False),
            nn.BatchNorm2d(ngf),
            nn.LeakyReLU(0.2),
            nn.Conv2d(ngf, c, 3, padding=1),
        )

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if z.ndim != 2 or z.shape[1] != self.nz:
            raise ValueError(f"z must have shape (N, {self.nz}), got {tuple(z.shape)}")
        if self.conditional:
            if y is None:
                raise ValueError("a conditional (acgan) generator needs labels y")
            z = self.embed(y) * z
        h = self.fc(z).view(z.shape[0], 2 * self.ngf, *self.init)
        out = torch.sigmoid(self.body(h))
        _, H, W = self.image_shape
        top, left = (out.shape[2] - H) // 2, (out.shape[3] - W) // 2
        return out[:, :, top : top + H, left : left + W]

    def sample_inputs(
        self, n: int, generator: torch.Generator | None = None, device: str | torch.device = "cpu"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Noise z ~ N(0, I) and balanced-then-shuffled labels (labels unused when unconditional)."""
        z = torch.randn((n, self.nz), generator=generator).to(device)
        y = (torch.arange(n) % self.num_classes)[torch.randperm(n, generator=generator)].to(device)
        return z, y

    @torch.no_grad()
    def generate(
        self,
        n: int,
        generator: torch.Generator | None = None,
        batch_size: int = 500,
        device: str | torch.device = "cpu",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` images (eval-mode BN) and their conditioning labels — for grids and diversity metrics."""
        was = self.training
        self.eval()
        xs, ys = [], []
        try:
            for i in range(0, n, batch_size):
                z, y = self.sample_inputs(min(batch_size, n - i), generator, device)
                xs.append(self(z, y).cpu())
                ys.append(y.cpu())
        finally:
            self.train(was)
        return torch.cat(xs), torch.cat(ys)


def create_generator(
    kind: str, nz: int, image_shape: tuple[int, int, int], num_classes: int, ngf: int = 32
) -> ConvGenerator:
    return ConvGenerator(nz, image_shape, num_classes, kind=kind, ngf=ngf)
