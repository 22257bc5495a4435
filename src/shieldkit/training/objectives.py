"""Robust training objectives behind one interface, and L_DFShield (DataFreeShield Eq 11).

An :class:`Objective` owns both halves of the min-max problem (Eq 1 / Eq 7): how to craft x' (its
inner loss) and the outer loss on (x, x'). Objectives are registered by name so trainers, the CLI
and benchmarks pick them with a string (``"dfshield"``, and the zoo added by the baseline modules).

A :class:`Batch` carries the clean images, their (assigned or true) hard labels and, when a teacher
exists, the teacher's logits T(x) — computed once at synthesis time and stored with the samples.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from shieldkit.attacks.pgd import PGDConfig, kl_to_target_probs, pgd

OBJECTIVES: dict[str, type[Objective]] = {}


def register_objective(name: str) -> Callable[[type[Objective]], type[Objective]]:
    def deco(cls: type[Objective]) -> type[Objective]:
        cls.name = name
        OBJECTIVES[name] = cls
        return cls

    return deco


def create_objective(name: str, attack: PGDConfig, **kwargs) -> Objective:
    if name not in OBJECTIVES:
        _load_zoo()
    if name not in OBJECTIVES:
        raise KeyError(f"unknown objective {name!r}; available: {', '.join(sorted(OBJECTIVES))}")
    return OBJECTIVES[name](attack=attack, **kwargs)


def _load_zoo() -> None:
    """Import sibling modules that register more objectives (they may not all be present)."""
    import importlib

    for mod in ("shieldkit.training.distillation_losses", "shieldkit.training.adversarial_losses",
                "shieldkit.training.defense_training"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name != mod:
                raise


@dataclass
class Batch:
    x: torch.Tensor
    y: torch.Tensor | None = None
    t_logits: torch.Tensor | None = None


class Objective(ABC):
    """``loss, stats = objective(student, batch, generator)``; the student is in train mode on entry."""

    name: str = "objective"
    needs_teacher: bool = False

    def __init__(self, attack: PGDConfig) -> None:
        self.attack = attack

    def perturb(self, student: nn.Module, x: torch.Tensor, target: torch.Tensor,
                loss_fn: str | Callable, generator: torch.Generator | None) -> torch.Tensor:
        """Inner maximisation in eval mode (as the reference implementations do), mode restored after."""
        was_training = student.training
        student.eval()
        try:
            return pgd(student, x, target, self.attack, loss_fn=loss_fn, generator=generator)
        finally:
            student.train(was_training)

    def check(self, batch: Batch) -> None:
        if self.needs_teacher and batch.t_logits is None:
            raise ValueError(f"objective {self.name!r} needs teacher logits T(x) in the batch")

    @abstractmethod
    def __call__(self, student: nn.Module, batch: Batch, generator: torch.Generator | None = None
                 ) -> tuple[torch.Tensor, dict[str, float]]: ...


def kl_div_batchmean(student_logits: torch.Tensor, target_logits: torch.Tensor, temperature: float = 1.0
                     ) -> torch.Tensor:
    """KL(softmax(target/T) ‖ softmax(student/T)), summed over classes, averaged over the batch.

    The paper writes KL(S(·), T(·)) for "make S match T"; like every KD implementation (and the
    reference code) this is ``F.kl_div(log S, T)``, i.e. KL(T ‖ S). ``target_logits`` is *not*
    detached here: callers decide (L_DFShield keeps S(x) attached in term (c), as the reference does).
    """
    logp = F.log_softmax(student_logits / temperature, dim=1)
    # The target in log space (``log_target=True``): identical value, but with an attached target whose
    # softmax underflows to exactly 0 (logit gaps ≳ 90, seen on a briefly trained imported ResNet-18)
    # ``kl_div(logp, softmax(t))`` back-propagates d/dq[q·log q] = log 0 + 1 → NaN into every weight.
    log_q = F.log_softmax(target_logits / temperature, dim=1)
    return F.kl_div(logp, log_q, reduction="batchmean", log_target=True)


@register_objective("dfshield")
class DFShieldObjective(Objective):
    """L_DFShield (DataFreeShield Eq 11) — soft-label guided robust training:

        KL(S(x), T(x)) + λ1·KL(S(x'), T(x)) + λ2·KL(S(x'), S(x))

    (a) keeps clean accuracy, (b) robustness, (c) smoothness. No hard label is used: synthetic
    labels are only optimisation targets (§4.4).

    Choices where the paper is silent, following the reference implementation:
    * x' maximises KL(S(x')‖S(x)) (the smoothness term) by PGD in eval mode, starting from
      x + 0.001·N(0,1) (``PGDConfig.start="normal"``), 10 steps of ε/4;
    * term (a) is computed at temperature τ_a = 20 and scaled by τ_a² (Hinton et al. 2015), terms
      (b) and (c) at temperature 1; S(x) is not detached in (c);
    * BatchNorm: the reference runs the clean and the adversarial batch through the student in two
      train-mode forwards, so the running statistics become a mixture that neither forward was
      normalised with. Harmless at CIFAR's ε = 4/255, it is not at MNIST's ε = 0.2: with the weights
      frozen (lr = 0), 20 such updates alone dropped the teacher's clean accuracy from 97.7 % to 68.7 %
      (measured, mnist5k). By default (``joint_bn=True``) we forward the concatenated batch [x; x'] once,
      so training normalises with exactly the statistics the running averages then track;
      ``joint_bn=False`` restores the reference behaviour;
    * reductions are ``batchmean`` (the true KL per sample). The reference's ``reduction='mean'`` on
      term (a) also divides by the number of classes — almost certainly unintended — so we use the
      mathematically correct KL and expose ``clean_temperature`` / λ's for users who need parity.
    """

    needs_teacher = True

    def __init__(self, attack: PGDConfig, lambda1: float = 1.0, lambda2: float = 1.0,
                 clean_temperature: float = 20.0, bn_mode: str = "joint", inner_target: str = "student") -> None:
        super().__init__(attack)
        if bn_mode not in ("joint", "separate", "frozen"):
            raise ValueError(f"bn_mode must be joint|separate|frozen, got {bn_mode!r}")
        if inner_target not in ("student", "teacher"):
            raise ValueError(f"inner_target must be student|teacher, got {inner_target!r}")
        self.lambda1, self.lambda2, self.clean_temperature = lambda1, lambda2, clean_temperature
        self.bn_mode, self.inner_target = bn_mode, inner_target

    def __call__(self, student: nn.Module, batch: Batch, generator: torch.Generator | None = None
                 ) -> tuple[torch.Tensor, dict[str, float]]:
        self.check(batch)
        x, t_logits = batch.x, batch.t_logits.detach()
        if self.inner_target == "teacher":
            ref = F.softmax(t_logits, dim=1)
        else:
            with torch.no_grad():
                was = student.training
                student.eval()
                ref = F.softmax(student(x), dim=1)
                student.train(was)
        x_adv = self.perturb(student, x, ref, kl_to_target_probs, generator)
        was = student.training
        if self.bn_mode == "frozen":
            student.eval()
        if self.bn_mode == "joint":
            s_clean, s_adv = student(torch.cat([x, x_adv])).split(len(x))
        else:
            s_clean, s_adv = student(x), student(x_adv)
        student.train(was)
        return self.loss_terms(s_clean, s_adv, t_logits)

    def loss_terms(self, s_clean: torch.Tensor, s_adv: torch.Tensor, t_logits: torch.Tensor
                   ) -> tuple[torch.Tensor, dict[str, float]]:
        """Eq 11 given the three sets of logits (separated so tests can check it on hand values)."""
        T = self.clean_temperature
        a = kl_div_batchmean(s_clean, t_logits, T) * (T * T)
        b = kl_div_batchmean(s_adv, t_logits)
        c = kl_div_batchmean(s_adv, s_clean)
        loss = a + self.lambda1 * b + self.lambda2 * c
        return loss, {"loss": loss.item(), "kl_clean": a.item(), "kl_adv_teacher": b.item(),
                      "kl_adv_student": c.item()}


@register_objective("soft_at")
class SoftLabelATObjective(Objective):
    """Adversarial training toward the teacher's soft labels, KL(S(x'), T(x)) — the objective of
    DataFreeShield's motivational study (§3.2, Fig 1) for training on *another* dataset whose label
    space differs (the "Public" rows of Tables 1 and 18). x' maximises the same KL by PGD."""

    needs_teacher = True

    def __call__(self, student: nn.Module, batch: Batch, generator: torch.Generator | None = None
                 ) -> tuple[torch.Tensor, dict[str, float]]:
        self.check(batch)
        t_prob = F.softmax(batch.t_logits.detach(), dim=1)
        x_adv = self.perturb(student, batch.x, t_prob, kl_to_target_probs, generator)
        loss = kl_div_batchmean(student(x_adv), batch.t_logits.detach())
        return loss, {"loss": loss.item()}
