"""Transfer attack from a substitute model (Papernot et al. 2017; "perform a transferability attack
using a similar substitute model", Carlini et al. 2019 checklist).

The substitute is trained *black-box*: on images the evaluator holds (the dataset's training split)
labelled by the **target model's own predictions** (hard labels), i.e. only queries to the target.
Adversarial examples are crafted with PGD (cross-entropy) on the substitute and then fed to the target.
A transfer attack beating the white-box attacks is a strong sign of gradient masking.
"""

from __future__ import annotations

import torch
from torch import nn

from shieldkit.attacks.pgd import PGDConfig, pgd


def transfer_attack(
    substitute: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: PGDConfig,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """PGD on the substitute; the caller evaluates the examples on the target."""
    substitute.eval()
    return pgd(substitute, x, y, cfg, loss_fn="ce", generator=generator, track_best=False)
