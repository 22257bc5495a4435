"""Image-augmentation diversifiers on top of fixed-coefficient synthesis (DataFreeShield Table 6, 19, 20).

The paper compares DSS with Mixup, Cutout and CutMix applied "on top of direct sample optimization"
(Yin et al. 2020) and trains all of them with L_DFShield, which uses only the teacher's soft labels.
So an augmented image's target is not a mixed label: we **recompute the teacher's logits on the
augmented image** (the natural data-free choice; it also keeps the stored ``t_logits`` consistent
with the images). Hard labels are kept for objectives that need them: the label of the image that
dominates the mix (Mixup: λ ≥ 0.5; CutMix: the larger area), otherwise the original.

* Mixup (Zhang et al. 2018): x̃ = λ·x_i + (1 − λ)·x_j, λ ~ Beta(α, α);
* Cutout (DeVries & Taylor 2017): one square of side ``size`` zeroed at a uniform centre (clipped at borders);
* CutMix (Yun et al. 2019): a box of area fraction 1 − λ, λ ~ Beta(α, α), pasted from x_j.

Each sample is augmented with probability ``p`` (default 0.5), so the augmented set has the same size as
the synthetic set it came from (equal training budget) and keeps half of the original samples.
Qimera / IntraQ / RDSKD are not implemented (generator-based synthesis methods with their own
training loops; out of time) — :data:`AUGMENTATIONS` lists what is.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

AUGMENTATIONS = ("mixup", "cutout", "cutmix")


def _box(h: int, w: int, cut_h: int, cut_w: int, g: torch.Generator) -> tuple[int, int, int, int]:
    cy = int(torch.randint(0, h, (1,), generator=g))
    cx = int(torch.randint(0, w, (1,), generator=g))
    y0, y1 = max(cy - cut_h // 2, 0), min(cy + (cut_h + 1) // 2, h)
    x0, x1 = max(cx - cut_w // 2, 0), min(cx + (cut_w + 1) // 2, w)
    return y0, y1, x0, x1


def augment_images(
    x: torch.Tensor,
    y: torch.Tensor,
    method: str,
    *,
    generator: torch.Generator,
    p: float = 0.5,
    alpha: float = 1.0,
    cutout_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(x_aug, y_aug)`` of the same shapes; see the module docstring for each method."""
    if method not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {method!r}; choose from {AUGMENTATIONS}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must lie in [0, 1], got {p}")
    n, _, h, w = x.shape
    out, y_out = x.clone(), y.clone()
    chosen = torch.rand(n, generator=generator) < p
    partner = torch.randperm(n, generator=generator)
    # λ ~ Beta(α, α) from a numpy Generator seeded from ``generator`` (torch.distributions has no generator
    # argument and would touch the global RNG)
    np_rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
    size = cutout_size if cutout_size is not None else max(h // 2, 1)
    for i in torch.nonzero(chosen).flatten().tolist():
        j = int(partner[i])
        if method == "cutout":
            y0, y1, x0, x1 = _box(h, w, size, size, generator)
            out[i, :, y0:y1, x0:x1] = 0.0
            continue
        lam = float(np_rng.beta(alpha, alpha))
        if method == "mixup":
            out[i] = lam * x[i] + (1 - lam) * x[j]
            if lam < 0.5:
                y_out[i] = y[j]
        else:  # cutmix
            cut = (1 - lam) ** 0.5
            y0, y1, x0, x1 = _box(h, w, int(h * cut), int(w * cut), generator)
            out[i, :, y0:y1, x0:x1] = x[j, :, y0:y1, x0:x1]
            if (y1 - y0) * (x1 - x0) > 0.5 * h * w:
                y_out[i] = y[j]
    return out, y_out


@torch.no_grad()
def augment_synthetic(
    x: torch.Tensor,
    y: torch.Tensor,
    teacher: nn.Module,
    method: str,
    *,
    seed: int = 0,
    p: float = 0.5,
    alpha: float = 1.0,
    batch_size: int = 500,
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Augment a synthetic set and recompute the teacher's soft labels: ``(x_aug, y_aug, t_logits)``."""
    g = torch.Generator().manual_seed(seed)
    xa, ya = augment_images(x.cpu(), y.cpu(), method, generator=g, p=p, alpha=alpha)
    was = teacher.training
    teacher.eval()
    try:
        t = torch.cat(
            [teacher(xa[i : i + batch_size].to(device)).cpu() for i in range(0, len(xa), batch_size)]
        )
    finally:
        teacher.train(was)
    return xa, ya, t
