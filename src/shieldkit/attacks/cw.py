"""Carlini-Wagner attacks (C&W 2017) under an ε-bounded threat model.

* ℓ2: the original optimisation attack, through torchattacks' ``CW`` (Adam on tanh-space
  w, objective ‖δ‖²₂ + c·max(max_{j≠y} z_j − z_y, −κ)). It is a *minimum-norm* attack, so an
  example counts only if its ℓ2 distortion is ≤ ε; otherwise the clean point is kept.
* ℓ∞: C&W's ℓ∞ algorithm is rarely used; the de-facto "CW-ℓ∞" (Madry et al. 2018, AutoAttack
  paper, RobustBench) is PGD on the CW margin loss, which is what :func:`cw_linf` runs.
"""

from __future__ import annotations

import torch
from torch import nn

from shieldkit.attacks.library import run_torchattack
from shieldkit.attacks.losses import margin_loss
from shieldkit.attacks.pgd import PGDConfig, pgd


def cw_linf(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    steps: int = 30,
    restarts: int = 1,
    generator: torch.Generator | None = None,
    norm: str = "linf",
) -> torch.Tensor:
    """PGD on the CW margin loss (best iterate per point kept)."""
    cfg = PGDConfig(eps=eps, norm=norm, steps=steps, alpha=2.5 * eps / max(steps, 1), restarts=restarts)
    return pgd(model, x, y, cfg, loss_fn=margin_loss, generator=generator, track_best=True)


def cw_l2(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    steps: int = 100,
    c: float = 1.0,
    lr: float = 0.01,
    seed: int = 0,
    device: str | torch.device = "cpu",
    batch_size: int = 250,
) -> tuple[torch.Tensor, torch.Tensor]:
    """torchattacks CW-ℓ2, examples outside the ℓ2 ε-ball discarded; returns ``(robust, x_adv)``."""
    from shieldkit.attacks.library import correct_mask

    _, xa = run_torchattack(
        "CW", model, x, y, seed=seed, batch_size=batch_size, device=device, c=c, kappa=0, steps=steps, lr=lr
    )
    dist = (xa - x).flatten(1).norm(dim=1)
    keep = (dist <= eps * (1 + 1e-4)).view(-1, *([1] * (x.ndim - 1)))
    xa = torch.where(keep, xa, x)
    return correct_mask(model, xa, y, batch_size, device), xa
