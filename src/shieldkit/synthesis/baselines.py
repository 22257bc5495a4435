"""The four data-free baselines of DataFreeShield §5.2, adapted to robustness as in Table 2 / App. A.4.

All four alternate a *generator* phase and a *student* phase; they differ only in (i) the generator,
(ii) the generator's loss ``L_Synth`` and (iii) the student objective ``L_train``. So there is ONE loop,
:func:`run_baseline`, parameterised by a :class:`BaselineSpec` (the registry :data:`BASELINES`):

==========  ==========================================  ===========================  ================
baseline    L_Synth (generator minimises)               L_train (student)            generator
==========  ==========================================  ===========================  ================
``dast``    −CE(S(x), y), y = argmax T(x)               CE(S(x'), y)  → ``std``       label-cond.
``dfme``    −Σ|T(x) − S(x)|  (ℓ1 on logits)              Σ|T(x) − S(x')| → ``dfme_l1`` DFAD
``ait``     L_feature(T; x) + CE(T(x), y_cond)           TRADES → ``trades``          label-cond.
``dfard``   −τ̃²·KL(S_τ̃(x), T_τ̃(x))                     τ̃²·KL(S_τ̃(x'), T_τ̃(x)) → ``dfard_kl``  ACGAN
==========  ==========================================  ===========================  ================

x' is the inner-maximisation adversary of each student objective (PGD in eval mode); the student starts
as a copy of the teacher (as for DataFreeShield, Algorithm 1 line 2).

Adaptations and deviations (said plainly, since none of these methods was designed for this problem):

* **White-box teacher.** DaST and DFME are black-box methods that estimate the teacher's gradient
  (DFME by forward differences). In the data-free robustness problem the teacher's weights are given,
  so we back-propagate through T exactly — this can only help the baselines.
* **DaST** (Zhou et al. 2020): the victim's answer ``argmax T(x)`` labels the substitute's training data,
  as in DaST; its multi-branch label-controlled generator becomes our label-conditional generator, and
  Table 2 keeps only the imitation term −CE(S(x), y) in L_Synth.
* **AIT** (Choi et al. 2022): the generator loss is Table 2's BN-statistics term (``BNStatistics``, Eq 4)
  plus CE of the teacher to the conditioning label; AIT's quantisation-specific parts (gradient
  inclusion, bit-width) have no counterpart here.
* **DFARD** (Wang et al. 2023b): no public code. The teacher is the non-robust T (App. A.4). Its
  Interactive Temperature Adjustment is approximated by a rule driven by the student's agreement with
  the teacher: ``τ̃ = τ_max − (τ_max − τ_min)·agree``, so a struggling student gets softer targets and a
  student that already agrees gets sharper ones — the "regulate learning difficulty" intent of ITA.
  The Adaptive Generator Balance module is not reproduced (Table 2 lists only the KL term).
* Budget: each baseline gets the same number of student updates and batch size as the DataFreeShield
  run it is compared with (``student_steps``), plus ``g_steps`` generator updates per student update.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from shieldkit.attacks.pgd import PGDConfig
from shieldkit.synthesis.generators import ConvGenerator, create_generator
from shieldkit.synthesis.losses import BNStatistics
from shieldkit.training.distillation_losses import l1_logit_gap
from shieldkit.training.objectives import Batch, Objective, create_objective, kl_div_batchmean
from shieldkit.utils.progress import progress_bar
from shieldkit.utils.seed import derive_seed, make_generator


@dataclass
class GenStep:
    """What a generator loss sees: the generated images, conditioning labels, and the teacher/student
    logits on them (with gradients to the generator). ``bn_loss`` is set when the spec asks for it."""

    x: torch.Tensor
    y_cond: torch.Tensor
    t_logits: torch.Tensor
    s_logits: torch.Tensor | None
    bn_loss: torch.Tensor | None
    temperature: float = 1.0


GenLoss = Callable[[GenStep], torch.Tensor]


def dast_generator_loss(s: GenStep) -> torch.Tensor:
    """Table 2 DaST: −CE(S(x), y) with y the teacher's (victim's) label."""
    return -F.cross_entropy(s.s_logits, s.t_logits.argmax(1))


def dfme_generator_loss(s: GenStep) -> torch.Tensor:
    """Table 2 DFME: −Σ|T(x) − S(x)| (mean over the batch)."""
    return -l1_logit_gap(s.s_logits, s.t_logits).mean()


def ait_generator_loss(s: GenStep) -> torch.Tensor:
    """Table 2 AIT: L_feature (BN statistics of T, Eq 4) + CE(T(x), y_cond)."""
    return s.bn_loss + F.cross_entropy(s.t_logits, s.y_cond)


def dfard_generator_loss(s: GenStep) -> torch.Tensor:
    """Table 2 DFARD: −τ̃²·KL(S_τ̃(x), T_τ̃(x))."""
    tau = s.temperature
    return -kl_div_batchmean(s.s_logits, s.t_logits, tau) * tau * tau


@dataclass(frozen=True)
class BaselineSpec:
    name: str
    generator: str  # ConvGenerator kind
    generator_loss: GenLoss
    objective: str  # registered student objective
    needs_student: bool = True  # generator loss uses S(x)
    needs_bn: bool = False  # generator loss uses the teacher's BN statistics
    labels: str = "teacher"  # hard labels y for the student batch: "teacher" (argmax T) | "cond" | "none"
    adaptive_temperature: bool = False
    objective_kwargs: dict = field(default_factory=dict)


BASELINES: dict[str, BaselineSpec] = {
    "dast": BaselineSpec("dast", "acgan", dast_generator_loss, "std", labels="teacher"),
    "dfme": BaselineSpec("dfme", "dfad", dfme_generator_loss, "dfme_l1", labels="none"),
    "ait": BaselineSpec(
        "ait", "acgan", ait_generator_loss, "trades", needs_student=False, needs_bn=True, labels="cond"
    ),
    "dfard": BaselineSpec(
        "dfard", "acgan", dfard_generator_loss, "dfard_kl", labels="none", adaptive_temperature=True
    ),
}


@dataclass
class BaselineConfig:
    student_steps: int = 50  # student updates (match the DataFreeShield run's update count)
    g_steps: int = 1  # generator updates per student update
    batch_size: int = 100
    lr_student: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_generator: float = 1e-3
    nz: int = 64
    ngf: int = 32
    eps: float = 0.2
    norm: str = "linf"
    attack_steps: int = 10
    attack_alpha: float | None = None
    tau_min: float = 1.0  # DFARD adaptive temperature range
    tau_max: float = 10.0
    seed: int = 0

    def attack(self) -> PGDConfig:
        return PGDConfig(
            eps=self.eps,
            norm=self.norm,
            steps=self.attack_steps,
            alpha=self.attack_alpha,
            random_start=True,
            start="uniform",
        )

    def to_dict(self) -> dict:
        return asdict(self)


def adaptive_temperature(agreement: float, tau_min: float, tau_max: float) -> float:
    """DFARD τ̃ (our ITA approximation): τ_max when the student never agrees with T, τ_min when it
    always does."""
    a = min(max(float(agreement), 0.0), 1.0)
    return tau_max - (tau_max - tau_min) * a


def _student_batch(
    spec: BaselineSpec, x: torch.Tensor, y_cond: torch.Tensor, t_logits: torch.Tensor
) -> Batch:
    y = {"teacher": t_logits.argmax(1), "cond": y_cond, "none": None}[spec.labels]
    return Batch(x, y, t_logits)


def _generator_phase(gen: ConvGenerator, teacher: nn.Module, student: nn.Module, spec: BaselineSpec,
                     cfg: BaselineConfig, rng: torch.Generator, device: torch.device, bn: BNStatistics | None,
                     tau: float, opt_g: torch.optim.Optimizer) -> torch.Tensor:
    """``cfg.g_steps`` generator updates minimising the baseline's L_Synth; returns the last loss. The student
    is in eval mode: its BN statistics are not polluted by the generator's queries, its weights not updated."""
    gen.train()
    student.eval()
    for _ in range(cfg.g_steps):
        z, y_cond = gen.sample_inputs(cfg.batch_size, rng, device)
        x = gen(z, y_cond)
        if bn is not None:
            bn.reset()
            with bn:
                t_logits = teacher(x)
            bn_loss = bn.loss()
        else:
            t_logits, bn_loss = teacher(x), None
        s_logits = student(x) if spec.needs_student else None
        g_loss = spec.generator_loss(GenStep(x, y_cond, t_logits, s_logits, bn_loss, tau))
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
    return g_loss


def run_baseline(
    name: str,
    teacher: nn.Module,
    cfg: BaselineConfig,
    *,
    student: nn.Module | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> tuple[nn.Module, ConvGenerator, dict]:
    """Train a robust student from ``teacher`` with baseline ``name`` (one shared alternating loop).

    Returns ``(student in eval mode, trained generator, history)``. The teacher is never modified.
    """
    if name not in BASELINES:
        raise KeyError(f"unknown baseline {name!r}; available: {', '.join(sorted(BASELINES))}")
    spec = BASELINES[name]
    device = torch.device(device)
    card = getattr(teacher, "card", None)
    if card is None:
        raise ValueError("run_baseline needs a shieldkit NormalizedClassifier teacher (with a .card)")
    image_shape = (card.in_channels, card.image_size, card.image_size)
    teacher = teacher.to(device).eval()
    flags = [p.requires_grad for p in teacher.parameters()]
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = (student if student is not None else copy.deepcopy(teacher)).to(device)
    for p in student.parameters():
        p.requires_grad_(True)
    torch.manual_seed(derive_seed(cfg.seed, "baseline-init", name))  # generator weight init
    gen = create_generator(spec.generator, cfg.nz, image_shape, card.num_classes, cfg.ngf).to(device)
    objective: Objective = create_objective(spec.objective, cfg.attack(), **spec.objective_kwargs)
    opt_s = torch.optim.SGD(
        student.parameters(), lr=cfg.lr_student, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    opt_g = torch.optim.Adam(gen.parameters(), lr=cfg.lr_generator)
    rng = make_generator(derive_seed(cfg.seed, "baseline", name))
    tau = cfg.tau_max if spec.adaptive_temperature else 1.0
    history: dict = {"baseline": name, "config": cfg.to_dict(), "g_loss": [], "s_loss": [], "temperature": []}
    bn = BNStatistics(teacher) if spec.needs_bn else None
    t0 = time.perf_counter()
    try:
        with progress_bar(f"baseline[{name}]", total=cfg.student_steps, enabled=progress) as bar:
            for step in range(cfg.student_steps):
                # --- generator phase: minimise L_Synth (student in eval mode: its BN statistics are not
                # polluted by the generator's queries, and its weights receive no update here)
                g_loss = _generator_phase(gen, teacher, student, spec, cfg, rng, device, bn, tau, opt_g)
                student.zero_grad(set_to_none=True)
                # --- student phase: one robust update on a fresh generated batch
                with torch.no_grad():
                    z, y_cond = gen.sample_inputs(cfg.batch_size, rng, device)
                    x = gen(z, y_cond)
                    t_logits = teacher(x)
                if spec.adaptive_temperature:
                    with torch.no_grad():
                        agree = (student(x).argmax(1) == t_logits.argmax(1)).float().mean().item()
                    tau = adaptive_temperature(agree, cfg.tau_min, cfg.tau_max)
                    objective.temperature = tau  # type: ignore[attr-defined]
                student.train()
                s_loss, _ = objective(student, _student_batch(spec, x, y_cond, t_logits), rng)
                if not torch.isfinite(s_loss):
                    raise FloatingPointError(f"baseline {name}: non-finite student loss at step {step}")
                opt_s.zero_grad(set_to_none=True)
                s_loss.backward()
                opt_s.step()
                history["g_loss"].append(g_loss.item())
                history["s_loss"].append(s_loss.item())
                history["temperature"].append(tau)
                bar.advance(1, g=g_loss.item(), s=s_loss.item())
    finally:
        for p, f in zip(teacher.parameters(), flags, strict=True):
            p.requires_grad_(f)
    history["seconds"] = time.perf_counter() - t0
    gen.eval()
    return student.eval(), gen, history
