"""Pre-training the purifier with its original loss L_org (AToP §3.2; Algorithm 1 line 1).

The purifier learns to restore ``x`` from the random transform ``t(x)`` of the pipeline it will serve:
``L_org = L_df`` for the gated (GAN) purifier — ``−E[D(g(t(x)))] + E‖x − g(t(x))‖₁`` for g, the hinge
loss for the SN-PatchGAN D (Eq 9) — and ``L_org = L_mae`` for the AE purifier. For RT3 ``g(t(x))`` is
the aggregated Eq 4 output, so the purifier is trained exactly on what the classifier will see.

Training images are real ones (``ImageDataset.x``) or, for the data-free variant, DataFreeShield
synthetic ones (``shieldkit.synthesis.load_synthetic(dir).x``) — the purifier never needs labels here.

:class:`PurifierTrainer` (one L_org update of g and D) and :func:`fit` (epochs, per-epoch atomic
checkpoints, resume) are shared with :mod:`shieldkit.defenses.atop.finetune`, which only adds the
adversarial examples and the classification term.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from shieldkit.defenses.atop.pipeline import PurificationPipeline, Purified, save_purifier
from shieldkit.defenses.atop.purifiers import (
    PatchDiscriminator,
    PurifierConfig,
    build_purifier,
    df_discriminator_loss,
    df_generator_loss,
    mae_loss,
)
from shieldkit.defenses.atop.transforms import TransformConfig
from shieldkit.utils.io import atomic_torch_save, atomic_write_json, safe_torch_load
from shieldkit.utils.progress import progress_bar
from shieldkit.utils.seed import derive_seed, make_generator

CHECKPOINT = "checkpoint.pt"


@dataclass
class PretrainConfig:
    epochs: int = 3
    batch_size: int = 64
    lr: float = 1e-3            # Adam; DeepFill uses 1e-4 for 256-px nets trained for days
    betas: tuple[float, float] = (0.5, 0.999)  # DeepFill-v2 / AToP reference
    d_lr: float | None = None   # discriminator lr (default = lr)
    adv_weight: float = 1.0     # weight of −E[D(g)] in L_df (Eq 9: 1)
    l1_weight: float = 1.0      # weight of E‖x − g‖₁ in L_df (Eq 9: 1)
    d_width: int = 16
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


class PurifierTrainer:
    """One L_org (+ optional extra) update of the purifier, and D's hinge update for the GAN purifier."""

    def __init__(self, pipeline: PurificationPipeline, purifier_cfg: PurifierConfig, *, lr: float,
                 betas: tuple[float, float] = (0.5, 0.999), d_lr: float | None = None, adv_weight: float = 1.0,
                 l1_weight: float = 1.0, d_width: int = 16, discriminator: nn.Module | None = None) -> None:
        self.pipeline = pipeline
        self.pcfg = purifier_cfg
        self.adv_weight, self.l1_weight = adv_weight, l1_weight
        dev = next(pipeline.purifier.parameters()).device
        self.gan = purifier_cfg.kind == "gated" and adv_weight > 0
        self.disc = None
        if self.gan:
            self.disc = discriminator if discriminator is not None else PatchDiscriminator(
                purifier_cfg.channels, d_width)
            self.disc.to(dev)
            self.opt_d = torch.optim.Adam(self.disc.parameters(), lr=d_lr or lr, betas=betas)
        self.opt_g = torch.optim.Adam(pipeline.purifier.parameters(), lr=lr, betas=betas)

    def org_loss(self, target: torch.Tensor, pur: Purified) -> torch.Tensor:
        """L_org: L_df for the GAN purifier (Eq 9), L_mae for the AE purifier."""
        if self.pcfg.kind == "ae":
            return mae_loss(target, pur.x_hat)
        d_fake = self.disc(pur.x_hat, pur.hole) if self.disc is not None else None
        return df_generator_loss(target, pur.stages, d_fake, self.adv_weight, self.l1_weight)

    def update(self, x_in: torch.Tensor, target: torch.Tensor,
               extra: Callable[[Purified], torch.Tensor] | None = None) -> dict[str, float]:
        """Purify ``x_in``, update D (real = ``target``), then g on L_org(target) + extra(purified)."""
        self.pipeline.purifier.train()
        pur = self.pipeline.purify(x_in, return_details=True)
        stats: dict[str, float] = {}
        if self.disc is not None:
            self.disc.train()
            loss_d = df_discriminator_loss(self.disc(target, pur.hole), self.disc(pur.x_hat.detach(), pur.hole))
            self.opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            self.opt_d.step()
            stats["d"] = float(loss_d.detach())
            for p in self.disc.parameters():
                p.requires_grad_(False)
        try:
            loss_org = self.org_loss(target, pur)
            loss = loss_org
            if extra is not None:
                loss_x = extra(pur)
                loss = loss + loss_x
                stats["extra"] = float(loss_x.detach())
            self.opt_g.zero_grad(set_to_none=True)
            loss.backward()
            self.opt_g.step()
        finally:
            if self.disc is not None:
                for p in self.disc.parameters():
                    p.requires_grad_(True)
        stats["org"] = float(loss_org.detach())
        self.pipeline.purifier.eval()
        return stats

    def state(self) -> dict:
        s = {"purifier": self.pipeline.purifier.state_dict(), "opt_g": self.opt_g.state_dict()}
        if self.disc is not None:
            s.update(discriminator=self.disc.state_dict(), opt_d=self.opt_d.state_dict())
        return s

    def load_state(self, s: dict) -> None:
        self.pipeline.purifier.load_state_dict(s["purifier"])
        self.opt_g.load_state_dict(s["opt_g"])
        if self.disc is not None and "discriminator" in s:
            self.disc.load_state_dict(s["discriminator"])
            self.opt_d.load_state_dict(s["opt_d"])


BatchFn = Callable[[torch.Tensor, torch.Tensor, torch.Generator],
                   tuple[torch.Tensor, torch.Tensor, Callable[[Purified], torch.Tensor] | None]]


def fit(trainer: PurifierTrainer, x: torch.Tensor, y: torch.Tensor | None, *, epochs: int, batch_size: int,
        seed: int, batch_fn: BatchFn, tag: str, out_dir: str | Path | None = None, config: dict | None = None,
        progress: bool = True) -> list[dict]:
    """Run ``epochs`` of ``trainer.update`` over shuffled batches; ``batch_fn(xb, yb, g)`` returns
    ``(x_in, target, extra)``. With ``out_dir`` an atomic checkpoint is written after every epoch and a
    run with the same ``config`` resumes from it. Returns the per-epoch history (mean losses)."""
    if x.ndim != 4:
        raise ValueError(f"training images must be N×C×H×W, got {tuple(x.shape)}")
    if len(x) == 0:
        raise ValueError("no training images")
    if float(x.min()) < 0 or float(x.max()) > 1:
        raise ValueError("training images must lie in [0, 1]")
    dev = next(trainer.pipeline.purifier.parameters()).device
    ckpt = Path(out_dir) / f"{tag}_{CHECKPOINT}" if out_dir is not None else None
    history: list[dict] = []
    start = 0
    if ckpt is not None and ckpt.exists():
        saved = safe_torch_load(ckpt, map_location=dev)
        if saved.get("config") != config:
            raise ValueError(f"{ckpt} was written with another configuration; use another output directory")
        trainer.load_state(saved["state"])
        history, start = list(saved["history"]), int(saved["epoch"])
    steps = math.ceil(len(x) / batch_size)
    with progress_bar(tag, total=epochs * steps, enabled=progress, completed=start * steps) as bar:
        for epoch in range(start, epochs):
            g = make_generator(derive_seed(seed, tag, "epoch", epoch))
            trainer.pipeline.reseed(derive_seed(seed, tag, "transform", epoch))
            perm = torch.randperm(len(x), generator=g)
            sums: dict[str, float] = {}
            for i in range(steps):
                idx = perm[i * batch_size:(i + 1) * batch_size]
                xb = x[idx].to(dev)
                yb = y[idx].to(dev) if y is not None else torch.zeros(len(idx), dtype=torch.long, device=dev)
                x_in, target, extra = batch_fn(xb, yb, g)
                st = trainer.update(x_in, target, extra)
                for k, v in st.items():
                    sums[k] = sums.get(k, 0.0) + v
                bar.advance(1, **{k: round(v, 4) for k, v in st.items()})
            history.append({"epoch": epoch + 1, **{k: v / steps for k, v in sums.items()}})
            if ckpt is not None:
                atomic_torch_save(ckpt, {"state": trainer.state(), "history": history, "epoch": epoch + 1,
                                         "config": config})
    trainer.pipeline.reseed(None)
    return history


def pretrain_purifier(x: torch.Tensor, transform_cfg: TransformConfig, purifier_cfg: PurifierConfig,
                      cfg: PretrainConfig | None = None, *, out_dir: str | Path | None = None,
                      device: str | torch.device = "cpu", progress: bool = True
                      ) -> tuple[nn.Module, nn.Module | None, list[dict]]:
    """Train a fresh purifier on clean images ``x`` (real or synthetic, [0, 1]) with L_org under
    ``transform_cfg``. Returns ``(purifier, discriminator or None, history)``; with ``out_dir`` it also
    writes ``out_dir/purifier.pt`` (see :func:`save_purifier`) and ``out_dir/pretrain.json``."""
    cfg = cfg or PretrainConfig()
    if purifier_cfg.channels != x.shape[1]:
        raise ValueError(f"purifier expects {purifier_cfg.channels} channels, images have {x.shape[1]}")
    with torch.random.fork_rng(devices=[]):  # seeded weight init without touching the caller's RNG
        torch.manual_seed(derive_seed(cfg.seed, "init"))
        purifier = build_purifier(purifier_cfg).to(device)
        disc = PatchDiscriminator(purifier_cfg.channels, cfg.d_width).to(device)
    pipe = PurificationPipeline(nn.Identity(), purifier, transform_cfg, check_range=False)
    trainer = PurifierTrainer(pipe, purifier_cfg, lr=cfg.lr, betas=cfg.betas, d_lr=cfg.d_lr,
                              adv_weight=cfg.adv_weight, l1_weight=cfg.l1_weight, d_width=cfg.d_width,
                              discriminator=disc)
    config = {"stage": "pretrain", "pretrain": cfg.to_dict(), "purifier": purifier_cfg.to_dict(),
              "transform": transform_cfg.to_dict(), "n": len(x)}
    history = fit(trainer, x, None, epochs=cfg.epochs, batch_size=cfg.batch_size, seed=cfg.seed,
                  batch_fn=lambda xb, yb, g: (xb, xb, None), tag="pretrain", out_dir=out_dir, config=config,
                  progress=progress)
    if out_dir is not None:
        save_purifier(Path(out_dir) / "purifier.pt", purifier, purifier_cfg, transform_cfg, trainer.disc,
                      meta={"stage": "pretrain"})
        atomic_write_json(Path(out_dir) / "pretrain.json", {**config, "history": history})
    return purifier.eval(), trainer.disc, history
