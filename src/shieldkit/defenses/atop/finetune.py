"""AToP fine-tuning of the purifier with the frozen classifier's adversarial loss (Eq 5, 9; Algorithm 1).

For every batch (Algorithm 1, lines 3-5):

1. build adversarial examples ``x' = x + δ`` **against the full defended pipeline** ``F(g(t(·)))``,
   with EOT over the random transform (``EOT(pipeline, eot_samples)``). The attack is PGD on the CE
   loss (:func:`shieldkit.attacks.pgd.pgd`); the default ``attack_steps=1, alpha=ε, random_start=False``
   is FGSM, the attack AToP §4.1 uses for fine-tuning. (The reference notebooks run FGSM against the
   *classifier alone*, which ignores the transform and purifier the defence actually consists of.)
2. freeze θ_f and update θ_g on

       L_θg = L_org(x', θ_g) + λ · CE(F(g(t(x'))), y)                              (Eq 5, 9)

   with ``L_org = L_df`` (GAN purifier; D keeps training on real = the reconstruction target) or
   ``L_mae`` (AE purifier). Eq 9 writes L_df on x' — the reconstruction target is the adversarial image
   itself (``recon_target="adv"``, the default); ``recon_target="clean"`` uses the clean x instead
   (an option, not the paper's equation).

The reference code switches the CE term on after two epochs and uses λ = 0.05-0.1; here λ = 0.1
(§4.1) from the first step, because the purifier arrives pre-trained.

Labels ``y`` are the ground truth on real data or, for the data-free variant, the teacher's arg-max
pseudo-labels on DataFreeShield synthetic images (``SyntheticSet.t_logits.argmax(1)``).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from shieldkit.attacks.adaptive import EOT
from shieldkit.attacks.pgd import PGDConfig, pgd
from shieldkit.defenses.atop.pipeline import PurificationPipeline, save_purifier
from shieldkit.defenses.atop.pretrain import PurifierTrainer, fit
from shieldkit.defenses.atop.purifiers import PatchDiscriminator, PurifierConfig
from shieldkit.defenses.atop.transforms import TransformConfig
from shieldkit.utils.io import atomic_write_json
from shieldkit.utils.seed import derive_seed


@dataclass
class FinetuneConfig:
    epochs: int = 2
    batch_size: int = 64
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    d_lr: float | None = None
    lam: float = 0.1                 # λ of Eq 5 (§4.1)
    eps: float = 0.2                 # ℓ∞ budget of the training attack
    norm: str = "linf"
    attack_steps: int = 1            # 1 = FGSM (§4.1); >1 = PGD
    attack_alpha: float | None = None  # default: ε for FGSM, 2.5ε/steps for PGD
    random_start: bool = False
    eot_samples: int = 2             # EOT samples of the pipeline per attack gradient
    recon_target: str = "adv"        # "adv" (Eq 9: ‖x' − g(t(x'))‖) | "clean"
    adv_weight: float = 1.0
    l1_weight: float = 1.0
    d_width: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        if self.recon_target not in ("adv", "clean"):
            raise ValueError(f"recon_target must be 'adv' or 'clean', got {self.recon_target!r}")
        if self.lam < 0:
            raise ValueError("λ must be non-negative")
        if self.eot_samples < 1 or self.attack_steps < 0:
            raise ValueError("eot_samples must be ≥ 1 and attack_steps ≥ 0")

    def attack(self) -> PGDConfig:
        alpha = self.attack_alpha
        if alpha is None:
            alpha = self.eps if self.attack_steps == 1 else 2.5 * self.eps / max(self.attack_steps, 1)
        return PGDConfig(eps=self.eps, norm=self.norm, steps=self.attack_steps, alpha=alpha,
                         random_start=self.random_start)

    def describe_attack(self) -> str:
        kind = "FGSM" if self.attack_steps == 1 and not self.random_start else f"PGD-{self.attack_steps}"
        return f"{kind} ({self.norm}, eps={self.eps:g}) on CE through EOT(pipeline, {self.eot_samples})"

    def to_dict(self) -> dict:
        return asdict(self)


def finetune_purifier(classifier: nn.Module, purifier: nn.Module, purifier_cfg: PurifierConfig,
                      transform_cfg: TransformConfig, x: torch.Tensor, y: torch.Tensor,
                      cfg: FinetuneConfig | None = None, *, discriminator: nn.Module | None = None,
                      out_dir: str | Path | None = None, device: str | torch.device = "cpu",
                      progress: bool = True) -> tuple[nn.Module, list[dict]]:
    """AToP-fine-tune a copy of ``purifier`` (Algorithm 1); the classifier stays frozen and unchanged.

    ``x`` in [0, 1] with labels ``y`` (ground truth or teacher pseudo-labels). Returns the fine-tuned
    purifier and the per-epoch history; with ``out_dir`` writes ``out_dir/purifier.pt`` and
    ``out_dir/finetune.json`` and checkpoints every epoch (resumable).
    """
    cfg = cfg or FinetuneConfig()
    if len(x) != len(y):
        raise ValueError(f"{len(x)} images but {len(y)} labels")
    purifier = copy.deepcopy(purifier).to(device)
    if discriminator is not None:
        discriminator = copy.deepcopy(discriminator).to(device)
    elif purifier_cfg.kind == "gated" and cfg.adv_weight > 0:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(cfg.seed, "disc"))
            discriminator = PatchDiscriminator(purifier_cfg.channels, cfg.d_width).to(device)
    classifier = classifier.to(device)
    was_training = classifier.training
    flags = [p.requires_grad for p in classifier.parameters()]
    classifier.eval()
    for p in classifier.parameters():  # θ_f frozen (Algorithm 1, line 4)
        p.requires_grad_(False)
    pipe = PurificationPipeline(classifier, purifier, transform_cfg)
    trainer = PurifierTrainer(pipe, purifier_cfg, lr=cfg.lr, betas=cfg.betas, d_lr=cfg.d_lr,
                              adv_weight=cfg.adv_weight, l1_weight=cfg.l1_weight, discriminator=discriminator)
    eot = EOT(pipe, cfg.eot_samples)
    attack = cfg.attack()

    def batch_fn(xb: torch.Tensor, yb: torch.Tensor, g: torch.Generator):  # noqa: ANN202
        x_adv = pgd(eot, xb, yb, attack, generator=g)  # against the whole pipeline, parameters untouched

        def cls_term(pur) -> torch.Tensor:  # noqa: ANN001
            return cfg.lam * F.cross_entropy(classifier(pur.x_hat), yb)

        target = x_adv if cfg.recon_target == "adv" else xb
        return x_adv, target, cls_term

    config = {"stage": "finetune", "finetune": cfg.to_dict(), "purifier": purifier_cfg.to_dict(),
              "transform": transform_cfg.to_dict(), "n": len(x), "attack": cfg.describe_attack()}
    try:
        history = fit(trainer, x, y, epochs=cfg.epochs, batch_size=cfg.batch_size, seed=cfg.seed,
                      batch_fn=batch_fn, tag="finetune", out_dir=out_dir, config=config, progress=progress)
    finally:
        for p, f in zip(classifier.parameters(), flags, strict=True):
            p.requires_grad_(f)
        classifier.train(was_training)
    if out_dir is not None:
        save_purifier(Path(out_dir) / "purifier.pt", purifier, purifier_cfg, transform_cfg, trainer.disc,
                      meta={"stage": "finetune", "attack": cfg.describe_attack()})
        atomic_write_json(Path(out_dir) / "finetune.json", {**config, "history": history})
    return purifier.eval(), history
