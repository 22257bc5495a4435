"""Generative purifiers for AToP and their original losses L_org (AToP §3.2, Eq 5, 9).

* :class:`GatedInpainter` — a DeepFill-v2-style inpainting generator (Yu et al. 2019, "Free-form image
  inpainting with gated convolution"), as used by Ughini et al. 2022 and AToP's GAN-based purifier,
  scaled down to 28 × 28 / 32 × 32: gated convolutions ``φ(conv_f(x)) ⊙ σ(conv_g(x))`` (ELU features,
  sigmoid gates), two stride-2 downsamplings, dilated convolutions for context, nearest upsampling; an
  optional second *refine* stage takes the coarse result composited into the known pixels. Input: the
  masked image, a ones channel and the hole indicator ``1 − m`` (DeepFill's input layout); output a
  full image in [0, 1] (clamp with a straight-through gradient: a sigmoid head saturated and collapsed
  to the black image on MNIST) — the reference maps DeepFill's [−1, 1] output into a [0, 1]
  classifier without rescaling in training; here there is one range. DeepFill-v2's contextual
  attention is left out: at 7 × 7 bottleneck resolution the dilated convolutions already see the whole
  image.
* :class:`PatchDiscriminator` — SN-PatchGAN (spectral-normalised strided convolutions, one score per
  patch), trained with the hinge loss as in DeepFill-v2.
* :func:`df_generator_loss` — the purifier's part of L_df (Eq 9): ``−E[D(g(t(x)))] + E‖x − g(t(x))‖₁``
  (``E[D(x)]`` does not depend on θ_g); the ℓ1 term is applied to every generator stage (coarse and
  refine), as DeepFill and the AToP reference do. :func:`df_discriminator_loss` is D's hinge loss.
* :class:`AEPurifier` + :func:`mae_loss` — the AE-based purifier of Wu et al. 2023 (denoising masked
  autoencoder), as a small convolutional encoder-decoder with L_mae = mean squared reconstruction
  error over all pixels (DMAE reconstructs the whole clean image, not only the masked patches).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

PURIFIERS = ("gated", "ae")


@dataclass
class PurifierConfig:
    kind: str = "gated"      # "gated" (DeepFill-style GAN purifier) | "ae" (autoencoder)
    channels: int = 1        # image channels
    width: int = 16          # base number of feature maps
    refine: bool = False     # add DeepFill's second (refinement) stage

    def __post_init__(self) -> None:
        if self.kind not in PURIFIERS:
            raise ValueError(f"purifier kind must be one of {PURIFIERS}, got {self.kind!r}")
        if self.channels < 1 or self.width < 1:
            raise ValueError("channels and width must be positive")

    def to_dict(self) -> dict:
        return asdict(self)


class GatedConv2d(nn.Module):
    """Gated convolution (DeepFill-v2): ``ELU(W_f * x) ⊙ sigmoid(W_g * x)``; one conv, split in two."""

    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, dilation: int = 1,
                 activation: bool = True) -> None:
        super().__init__()
        pad = dilation * (k - 1) // 2
        self.conv = nn.Conv2d(cin, 2 * cout, k, stride=stride, padding=pad, dilation=dilation)
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f, g = self.conv(x).chunk(2, dim=1)
        if self.activation:
            f = F.elu(f)
        return f * torch.sigmoid(g)


def _clamp_st(z: torch.Tensor) -> torch.Tensor:
    """Clamp to [0, 1] in the forward pass, identity gradient (straight-through). A sigmoid output
    saturated and collapsed the AE to the all-zero image on MNIST's mostly-black pixels."""
    return z + (z.clamp(0.0, 1.0) - z).detach()


class _GatedStage(nn.Module):
    """One encoder-decoder stage of gated convolutions (¼ resolution bottleneck with dilations).

    U-Net skips (full and ½ resolution) carry the known pixels to the decoder; without them a
    network this small collapses to the all-background image on MNIST (measured: L1 stuck at the
    mean intensity, sigmoid saturated).
    """

    def __init__(self, cin: int, cout: int, w: int) -> None:
        super().__init__()
        self.e1 = GatedConv2d(cin, w, 5)
        self.e2 = nn.Sequential(GatedConv2d(w, 2 * w, 3, stride=2), GatedConv2d(2 * w, 2 * w, 3))
        self.mid = nn.Sequential(
            GatedConv2d(2 * w, 4 * w, 3, stride=2), GatedConv2d(4 * w, 4 * w, 3, dilation=2),
            GatedConv2d(4 * w, 4 * w, 3, dilation=4), GatedConv2d(4 * w, 4 * w, 3))
        self.up1 = GatedConv2d(4 * w + 2 * w, 2 * w, 3)
        self.up2 = GatedConv2d(2 * w + w, w, 3)
        self.out = nn.Conv2d(w, cout, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h1 = self.e1(x)
        h2 = self.e2(h1)
        z = self.mid(h2)
        z = self.up1(torch.cat([F.interpolate(z, size=h2.shape[-2:], mode="nearest"), h2], dim=1))
        z = self.up2(torch.cat([F.interpolate(z, size=h1.shape[-2:], mode="nearest"), h1], dim=1))
        return _clamp_st(self.out(z))


def _purifier_input(x_masked: torch.Tensor, mask: torch.Tensor, ones: bool) -> torch.Tensor:
    hole = 1.0 - mask.expand(x_masked.shape[0], 1, *x_masked.shape[-2:])
    parts = [x_masked, torch.ones_like(hole), hole] if ones else [x_masked, hole]
    return torch.cat(parts, dim=1)


class GatedInpainter(nn.Module):
    """DeepFill-style generator ``g(x_t, m) → x̂`` (images in [0, 1]); see the module docstring."""

    def __init__(self, cfg: PurifierConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or PurifierConfig(kind="gated")
        c, w = self.cfg.channels, self.cfg.width
        self.coarse = _GatedStage(c + 2, c, w)
        self.fine = _GatedStage(c + 2, c, w) if self.cfg.refine else None

    def forward(self, x_masked: torch.Tensor, mask: torch.Tensor, return_stages: bool = False
                ) -> torch.Tensor | list[torch.Tensor]:
        coarse = self.coarse(_purifier_input(x_masked, mask, ones=True))
        stages = [coarse]
        if self.fine is not None:
            composite = mask * x_masked + (1.0 - mask) * coarse
            stages.append(self.fine(_purifier_input(composite, mask, ones=True)))
        return stages if return_stages else stages[-1]


class AEPurifier(nn.Module):
    """Convolutional denoising (masked) autoencoder ``g(x_t, m) → x̂`` in [0, 1] (Wu et al. 2023, small;
    plain convolutions with leaky ReLUs — plain ReLUs died and collapsed the output to zeros —
    and U-Net skips for the same reason as :class:`_GatedStage`)."""

    def __init__(self, cfg: PurifierConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or PurifierConfig(kind="ae")
        c, w = self.cfg.channels, self.cfg.width
        self.e1 = nn.Sequential(nn.Conv2d(c + 1, w, 3, padding=1), nn.LeakyReLU(0.2))
        self.e2 = nn.Sequential(nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.LeakyReLU(0.2))
        self.mid = nn.Sequential(nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
                                 nn.Conv2d(4 * w, 4 * w, 3, padding=1), nn.LeakyReLU(0.2))
        self.dec1 = nn.Sequential(nn.Conv2d(4 * w + 2 * w, 2 * w, 3, padding=1), nn.LeakyReLU(0.2))
        self.dec2 = nn.Sequential(nn.Conv2d(2 * w + w, w, 3, padding=1), nn.LeakyReLU(0.2),
                                  nn.Conv2d(w, c, 3, padding=1))

    def forward(self, x_masked: torch.Tensor, mask: torch.Tensor, return_stages: bool = False
                ) -> torch.Tensor | list[torch.Tensor]:
        h1 = self.e1(_purifier_input(x_masked, mask, ones=False))
        h2 = self.e2(h1)
        z = self.mid(h2)
        z = self.dec1(torch.cat([F.interpolate(z, size=h2.shape[-2:], mode="nearest"), h2], dim=1))
        z = self.dec2(torch.cat([F.interpolate(z, size=h1.shape[-2:], mode="nearest"), h1], dim=1))
        out = _clamp_st(z)
        return [out] if return_stages else out


class PatchDiscriminator(nn.Module):
    """SN-PatchGAN discriminator on (image, hole mask): a map of per-patch realness scores."""

    def __init__(self, channels: int = 1, width: int = 16) -> None:
        super().__init__()
        w = width
        self.net = nn.Sequential(
            spectral_norm(nn.Conv2d(channels + 1, w, 5, stride=2, padding=2)), nn.LeakyReLU(0.2),
            spectral_norm(nn.Conv2d(w, 2 * w, 5, stride=2, padding=2)), nn.LeakyReLU(0.2),
            spectral_norm(nn.Conv2d(2 * w, 2 * w, 5, stride=2, padding=2)), nn.LeakyReLU(0.2),
            spectral_norm(nn.Conv2d(2 * w, 1, 3, padding=1)))

    def forward(self, x: torch.Tensor, hole: torch.Tensor | None = None) -> torch.Tensor:
        if hole is None:
            hole = torch.zeros_like(x[:, :1])
        return self.net(torch.cat([x, hole.expand(x.shape[0], 1, *x.shape[-2:])], dim=1))


def build_purifier(cfg: PurifierConfig) -> nn.Module:
    return GatedInpainter(cfg) if cfg.kind == "gated" else AEPurifier(cfg)


# ------------------------------------------------------------------------------------------------- losses
def l1_reconstruction(x: torch.Tensor, stages: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    """Σ over generator stages of E‖x − stage‖₁ (mean absolute error per pixel)."""
    stages = stages if isinstance(stages, list) else [stages]
    return sum((s - x).abs().mean() for s in stages)  # type: ignore[return-value]


def df_generator_loss(x: torch.Tensor, stages: list[torch.Tensor] | torch.Tensor, d_fake: torch.Tensor | None,
                      adv_weight: float = 1.0, l1_weight: float = 1.0) -> torch.Tensor:
    """Purifier part of L_df (Eq 9): ``−adv_weight·E[D(g(t(x)))] + l1_weight·Σ_stages E‖x − g‖₁``.

    ``d_fake`` = D's scores on the purifier output (None skips the adversarial term, e.g. no D yet).
    """
    loss = l1_weight * l1_reconstruction(x, stages)
    if d_fake is not None and adv_weight:
        loss = loss - adv_weight * d_fake.mean()
    return loss


def df_discriminator_loss(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """Hinge loss for D (DeepFill-v2 / SN-PatchGAN): E[relu(1 − D(x))] + E[relu(1 + D(g))]."""
    return F.relu(1.0 - d_real).mean() + F.relu(1.0 + d_fake).mean()


def mae_loss(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """L_mae of the AE purifier (Wu et al. 2023): mean squared error ‖x − g(t(x))‖² over all pixels."""
    if x.shape != x_hat.shape:
        raise ValueError(f"shape mismatch: {tuple(x.shape)} vs {tuple(x_hat.shape)}")
    return (x_hat - x).pow(2).mean()
