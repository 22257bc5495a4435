"""Model stealing + transfer: the black-box adaptive attack of UniG §4.4 / Table 4 (KnockoffNets).

KnockoffNets (Orekondy, Schiele & Fritz, CVPR 2019), 'random' sampling strategy: the attacker sends
images from a *public* distribution (here scikit-learn's 8×8 ``digits``, resized to 28×28 — related to,
but not, MNIST) to the victim API, records the returned probability vectors, and trains a surrogate
on them with the soft-label cross-entropy ``−Σ_k P_victim(k|x) log P_surrogate(k|x)``. Random ±2 px
shifts of the public images give fresh queries each round. White-box PGD on the surrogate then yields
adversarial examples that are *transferred* to the victim. A score-modifying defence (UniG, RND) is
queried exactly as a user would query it — in batches, through its own forward — so whatever it does
to its outputs is what the surrogate learns from.

Deviation: the paper's surrogate data budget (3×10⁷ queries, ImageNet-scale public sets) is far
beyond an MNIST-sized CPU benchmark; we report the number of queries actually spent.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from shieldkit.attacks.pgd import PGDConfig, pgd
from shieldkit.data.augment import random_shift
from shieldkit.data.base import ImageDataset
from shieldkit.models import create_model
from shieldkit.utils.seed import derive_seed, make_generator


@dataclass
class StealConfig:
    arch: str = "mnist_cnn"  # surrogate architecture (the attacker does not know the victim's)
    rounds: int = 4  # passes over the public set, each with fresh random shifts (= queries / |public|)
    shift: int = 2
    epochs: int = 15
    batch_size: int = 128
    lr: float = 0.05
    query_batch: int = 256  # the batch size the victim API sees
    seed: int = 0


@torch.no_grad()
def query_victim(victim: nn.Module, x: torch.Tensor, batch: int) -> torch.Tensor:
    """Probabilities returned by the victim for ``x``, asked in API-sized batches."""
    return torch.cat([F.softmax(victim(c), 1) for c in x.split(batch)], 0)


def knockoff_steal(victim: nn.Module, public: ImageDataset, cfg: StealConfig | None = None,
                   device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Train a surrogate on the victim's answers for (shifted) public images. Returns (surrogate, info)."""
    cfg = cfg or StealConfig()
    if cfg.rounds < 1 or cfg.epochs < 1:
        raise ValueError("rounds and epochs must be >= 1")
    g = make_generator(derive_seed(cfg.seed, "knockoff"))
    victim.eval()
    xs, ps = [], []
    for r in range(cfg.rounds):
        xr = public.x if r == 0 else random_shift(public.x, cfg.shift, g)
        xs.append(xr)
        ps.append(query_victim(victim, xr.to(device), cfg.query_batch).cpu())
    X, P = torch.cat(xs), torch.cat(ps)
    c = X.shape[1]
    sur = create_model(cfg.arch, num_classes=P.shape[1], in_channels=c, image_size=X.shape[-1],
                       dataset=f"knockoff:{public.name}").to(device)
    opt = torch.optim.SGD(sur.parameters(), lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    steps = cfg.epochs * ((len(X) + cfg.batch_size - 1) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps, pct_start=0.25)
    sur.train()
    for _ in range(cfg.epochs):
        perm = torch.randperm(len(X), generator=g)
        for i in range(0, len(X), cfg.batch_size):
            idx = perm[i:i + cfg.batch_size]
            xb, pb = X[idx].to(device), P[idx].to(device)
            loss = -(pb * F.log_softmax(sur(xb), 1)).sum(1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    sur.eval()
    agreement = float((query_victim(sur, X.to(device), 512).argmax(1).cpu() == P.argmax(1)).float().mean())
    return sur, {"queries": int(len(X)), "public": public.name, "train_agreement": agreement}


def transfer_attack(surrogate: nn.Module, victim: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float,
                    norm: str = "linf", steps: int = 40, seed: int = 0, batch: int = 256) -> dict:
    """PGD on the surrogate, evaluated on the victim: robust accuracy under the transferred examples."""
    cfg = PGDConfig(eps=eps, norm=norm, steps=steps, alpha=2.5 * eps / steps)
    x_adv = pgd(surrogate, x, y, cfg, generator=make_generator(derive_seed(seed, "transfer")))
    with torch.no_grad():
        pred_v = query_victim(victim, x_adv, batch).argmax(1)
        pred_s = surrogate(x_adv).argmax(1)
        clean_v = query_victim(victim, x, batch).argmax(1)
    return {"victim_clean_accuracy": float((clean_v == y).float().mean()),
            "victim_robust_accuracy": float((pred_v == y).float().mean()),
            "surrogate_robust_accuracy": float((pred_s == y).float().mean()), "eps": eps, "norm": norm,
            "pgd_steps": steps}
