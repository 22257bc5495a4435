"""Standard (non-robust) supervised training — how shieldkit makes teachers.

Plain SGD + Nesterov momentum with a one-cycle-free cosine schedule and light augmentation
(random ±2 px shifts), seeded through an explicit generator. This produces the *non-robust*
pretrained model that DataFreeShield starts from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from shieldkit.data.augment import random_shift
from shieldkit.data.base import ImageDataset
from shieldkit.utils.progress import progress_bar
from shieldkit.utils.seed import derive_seed, make_generator


@dataclass
class StandardTrainConfig:
    epochs: int = 8
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    shift: int = 2  # random-translation augmentation (pixels); 0 disables
    seed: int = 0


@torch.no_grad()
def accuracy(model: nn.Module, data: ImageDataset, batch_size: int = 500, device: str | torch.device = "cpu"
             ) -> float:
    was_training = model.training
    model.eval()
    correct = 0
    for i in range(0, len(data), batch_size):
        xb, yb = data.x[i:i + batch_size].to(device), data.y[i:i + batch_size].to(device)
        correct += (model(xb).argmax(1) == yb).sum().item()
    model.train(was_training)
    return correct / max(len(data), 1)


def train_classifier(model: nn.Module, data: ImageDataset, cfg: StandardTrainConfig,
                     device: str | torch.device = "cpu", progress: bool = True) -> nn.Module:
    model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=True,
                          weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(data) / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    # One-cycle needs a few steps to ramp up and down; very short runs (tests) use a constant lr.
    sched = (torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total, pct_start=0.25)
             if total > 4 else torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0))
    with progress_bar("teacher", total=total, enabled=progress) as bar:
        for epoch in range(cfg.epochs):
            g = make_generator(derive_seed(cfg.seed, "epoch", epoch))
            perm = torch.randperm(len(data), generator=g)
            for i in range(steps_per_epoch):
                idx = perm[i * cfg.batch_size:(i + 1) * cfg.batch_size]
                xb = random_shift(data.x[idx], cfg.shift, g).to(device)
                yb = data.y[idx].to(device)
                loss = F.cross_entropy(model(xb), yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                bar.advance(1, loss=loss.item())
    return model.eval()
