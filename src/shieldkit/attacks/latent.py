"""Latent-space attack (Sabour et al. 2016, "Adversarial manipulation of deep representations"),
as used in DataFreeShield Appendix G / Table 21 (A_Latent).

Find x' in the ε-ball of x whose penultimate representation φ(x') is as close as possible to that
of a *guide* image x_g of another class:  min_{x'} ‖φ(x') − φ(x_g)‖²₂.  If the representation can
be dragged to the guide's, the classifier head follows.

Deviation: Sabour et al. (and DataFreeShield) solve it with L-BFGS-B under box constraints; we use
projected gradient descent (:func:`shieldkit.attacks.pgd.pgd`, ``targeted=True``) on the same
objective, which handles the ε-ball ∩ [0, 1] constraint for ℓ∞ and ℓ2 alike and shares the
seeded engine with every other attack. Guides are chosen deterministically: for each point, the
next point (cyclically, in a seeded permutation) of the evaluation set whose label differs.
"""

from __future__ import annotations

import torch
from torch import nn

from shieldkit.attacks.pgd import PGDConfig, pgd


class _Features(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.features(x).flatten(1)


def _feature_distance(f: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (f - target).pow(2).sum(1)


def choose_guides(y: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Index of a guide with a different label for every point (−1 if none exists)."""
    g = torch.Generator().manual_seed(seed)
    n = len(y)
    perm = torch.randperm(n, generator=g)
    yc = y.cpu()
    out = torch.full((n,), -1, dtype=torch.long)
    for i in range(n):
        for k in range(n):
            j = int(perm[(i + k) % n])
            if yc[j] != yc[i]:
                out[i] = j
                break
    return out


def latent_attack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: PGDConfig,
    seed: int = 0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Adversarial examples from the latent attack; ``model`` must expose ``.features(x)``."""
    if not hasattr(model, "features"):
        raise TypeError(
            "the latent attack needs model.features(x) (penultimate features); "
            f"{type(model).__name__} has none"
        )
    guides = choose_guides(y, seed)
    has = guides >= 0
    x_adv = x.detach().clone()
    if not bool(has.any()):
        return x_adv
    idx = torch.nonzero(has).flatten().to(x.device)
    fm = _Features(model).train(model.training)
    with torch.no_grad():
        target = fm(x[guides[has].to(x.device)])
    x_adv[idx] = pgd(fm, x[idx], target, cfg, loss_fn=_feature_distance, generator=generator, targeted=True)
    return x_adv
