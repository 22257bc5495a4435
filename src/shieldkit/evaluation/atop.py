"""Evaluating an AToP pipeline honestly: every gradient attack goes through EOT over the transforms.

The pipeline is randomised, so each white-box attack differentiates ``EOT(pipeline, k)`` (mean
logits of k passes; :class:`shieldkit.attacks.adaptive.EOT`). The final verdict on an adversarial
example is one fresh stochastic pass of the pipeline (what a deployed model does, and what
AutoAttack-rand checks), with the pipeline's random stream re-seeded identically for every attack.

Attacks (names used in the results): ``clean``; ``fgsm`` (one signed step through EOT); ``pgd_eot``
(ℓ∞ PGD through EOT, Lee & Kim 2023's protocol in AToP §4.4); ``bpda_eot`` (purifier and transform
approximated by the identity on the backward pass, Yang et al. 2019 / Athalye et al. 2018, with EOT —
AToP §4.4); ``cw`` (PGD on the C&W margin through EOT — the ℓ∞ "CW" of AToP Table 7);
``autoattack_rand`` (official AutoAttack ``rand``: APGD-CE + APGD-DLR with its own EOT, through
pyautoattack; budgets may be reduced, then recorded); unseen threat models: ``pgd_l2_eot`` and
``stadv`` (:mod:`shieldkit.attacks.stadv`, through EOT).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from shieldkit.attacks.adaptive import EOT, BPDAWrapper
from shieldkit.attacks.cw import cw_linf
from shieldkit.attacks.library import correct_mask, preserved_rng, run_autoattack
from shieldkit.attacks.pgd import PGDConfig, pgd
from shieldkit.attacks.stadv import StAdvConfig, stadv
from shieldkit.defenses.atop.pipeline import PurificationPipeline
from shieldkit.evaluation.runner import EvaluationResult, Runner
from shieldkit.evaluation.stats import accuracy_summary
from shieldkit.utils.seed import derive_seed, make_generator

ATTACKS = ("clean", "fgsm", "pgd_eot", "bpda_eot", "cw", "autoattack_rand", "pgd_l2_eot", "stadv")


@dataclass
class AToPEvalConfig:
    eps: float = 0.2
    eot: int = 4                 # EOT samples per gradient
    pgd_steps: int = 10
    cw_steps: int = 10
    aa_iters: int | None = 20    # APGD iterations in AutoAttack-rand (None = official 100)
    aa_eot: int | None = 4       # APGD EOT iterations (None = official 20)
    l2_eps: float = 1.5
    stadv_steps: int = 20
    stadv_bound: float | None = 1.0  # pixels
    attacks: tuple[str, ...] = ("clean", "fgsm", "pgd_eot", "bpda_eot", "cw", "autoattack_rand")
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = set(self.attacks) - set(ATTACKS)
        if unknown:
            raise ValueError(f"unknown attacks {sorted(unknown)}; available: {ATTACKS}")


def _autoattack_rand(pipe: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: AToPEvalConfig,
                     device: str | torch.device) -> torch.Tensor:
    """Adversarial examples of AutoAttack ``rand`` (official budgets when both overrides are None)."""
    if cfg.aa_iters is None and cfg.aa_eot is None:
        return run_autoattack(pipe, x, y, norm="linf", eps=cfg.eps, version="rand", seed=cfg.seed,
                              device=device)[1]
    import pyautoattack

    with preserved_rng():  # pyautoattack mutates the global RNG
        aa = pyautoattack.AutoAttack(pipe, norm="Linf", eps=float(cfg.eps), version="rand", seed=cfg.seed,
                                     device=device)
        if cfg.aa_iters is not None:
            aa.apgd.n_iter = cfg.aa_iters
        if cfg.aa_eot is not None:
            aa.apgd.eot_iter = cfg.aa_eot
        x_adv, _ = aa.run_standard_evaluation(x, y.to(x.device), batch_size=len(x))
    return x_adv


# name -> (pipeline, EOT(pipeline), x, y, config, generator, device) -> x_adv; every gradient attack through EOT
_Builder = Callable[[PurificationPipeline, nn.Module, torch.Tensor, torch.Tensor, AToPEvalConfig, torch.Generator,
                     "str | torch.device"], torch.Tensor]


def _pgd_cfg(cfg: AToPEvalConfig) -> PGDConfig:
    return PGDConfig(eps=cfg.eps, steps=cfg.pgd_steps, alpha=2.5 * cfg.eps / cfg.pgd_steps)


BUILDERS: dict[str, _Builder] = {
    "clean": lambda pipe, eot, x, y, cfg, g, dev: x,
    "fgsm": lambda pipe, eot, x, y, cfg, g, dev: pgd(eot, x, y, PGDConfig(eps=cfg.eps, steps=1, alpha=cfg.eps,
                                                                           random_start=False)),
    "pgd_eot": lambda pipe, eot, x, y, cfg, g, dev: pgd(eot, x, y, _pgd_cfg(cfg), generator=g),
    "bpda_eot": lambda pipe, eot, x, y, cfg, g, dev: pgd(EOT(BPDAWrapper(pipe.purify, pipe.classifier), cfg.eot), x,
                                                         y, _pgd_cfg(cfg), generator=g),
    "cw": lambda pipe, eot, x, y, cfg, g, dev: cw_linf(eot, x, y, eps=cfg.eps, steps=cfg.cw_steps, generator=g),
    "autoattack_rand": lambda pipe, eot, x, y, cfg, g, dev: _autoattack_rand(pipe, x, y, cfg, dev),
    "pgd_l2_eot": lambda pipe, eot, x, y, cfg, g, dev: pgd(eot, x, y, PGDConfig(eps=cfg.l2_eps, norm="l2",
                                                                                 steps=cfg.pgd_steps), generator=g),
    "stadv": lambda pipe, eot, x, y, cfg, g, dev: stadv(eot, x, y, StAdvConfig(steps=cfg.stadv_steps,
                                                                                bound=cfg.stadv_bound), generator=g),
}
UNSEEN = ("pgd_l2_eot", "stadv")  # other threat models: reported, not part of the ℓ∞ worst case


def evaluate_pipeline(pipe: PurificationPipeline, x: torch.Tensor, y: torch.Tensor,
                      cfg: AToPEvalConfig | None = None, device: str | torch.device = "cpu",
                      log: bool = False) -> dict:
    """Accuracy of ``pipe`` on ``(x, y)`` under each attack of ``cfg`` plus the per-point ℓ∞ worst case,
    run by the evaluation :class:`~shieldkit.evaluation.runner.Runner` (one batch; the verdict is one
    fresh pass of the pipeline with its random stream re-seeded identically for every attack)."""
    cfg = cfg or AToPEvalConfig()
    pipe = pipe.to(device).eval()
    eot = EOT(pipe, cfg.eot)
    verdict_seed = derive_seed(cfg.seed, "verdict")

    def verdict(x_adv: torch.Tensor, yy: torch.Tensor) -> torch.Tensor:
        pipe.reseed(verdict_seed)
        try:
            return correct_mask(pipe, x_adv, yy, device=device)
        finally:
            pipe.reseed(None)

    runner = Runner(pipe, x, y, seed=cfg.seed, device=device, batch_size=len(x), judge=verdict)

    def attack(name: str) -> torch.Tensor:
        g = make_generator(derive_seed(cfg.seed, name))
        pipe.reseed(derive_seed(cfg.seed, name, "attack"))
        return BUILDERS[name](pipe, eot, runner.x, runner.y, cfg, g, device)

    t0 = time.perf_counter()
    for name in cfg.attacks:
        r = runner.run(name, "clean" if name == "clean" else "white-box", lambda name=name: attack(name),
                       in_worst_case=name not in UNSEEN, eps=None if name in UNSEEN else cfg.eps)
        if log:
            print(f"  {name}: {r.acc:.3f} ({r.wall_time_s:.0f}s)", flush=True)
    pipe.reseed(None)
    worst = runner.worst_case()
    ws = accuracy_summary(int(worst.sum()), len(x))
    clean = runner.find("clean")
    return EvaluationResult(
        clean_acc=clean.acc if clean is not None else None, robust=worst, attacks=runner.records(), audit=[],
        eps=cfg.eps, norm="linf", seed=cfg.seed, suite="atop", dataset="", model=EvaluationResult.describe(pipe),
        threat_model="Linf", autoattack_acc=next((r.acc for r in runner.runs if r.name.startswith("autoattack")), None),
        notes=[f"{', '.join(UNSEEN)}: other threat models, reported and not part of the ℓ∞ worst case"],
        audited=False,
        extra={"config": asdict(cfg), "worst_case_linf": {"acc": ws["acc"], "k": ws["k"], "ci": ws["ci"]}},
    ).to_dict(wall_time_s=time.perf_counter() - t0, device=str(device))
