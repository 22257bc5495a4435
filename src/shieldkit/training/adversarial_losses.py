"""Adversarial-training losses (the classic family), as :class:`~shieldkit.training.objectives.Objective` s.

Every objective here uses hard labels ``batch.y`` (real labels, or a synthetic set's assigned labels when
:mod:`~shieldkit.training.distillation_losses` reuses PGD-AT / TRADES / MART). The notation follows the
lecture (``papers/lecture-adversarial-defense.txt``) and each paper:

========== ================================================================================================
name       objective (x' = inner maximiser; p(·) = softmax(f(·)); KL(p‖q) = Σ p log p/q)
========== ================================================================================================
pgd_at/std Madry et al. 2018 Eq 2.1:      min_θ E max_{‖r‖≤ε} CE(f(x+r), y); PGD-k inner max on CE.
trades     Zhang et al. 2019 Eq 5:         CE(f(x), y) + β·KL(p(x) ‖ p(x')),  x' = argmax KL(p(x)‖p(x')).
mart       Wang et al. 2020 Eq 10:         BCE(p(x'), y) + λ·KL(p(x) ‖ p(x'))·(1 − p_y(x)),  x' = PGD on CE.
fgsm_at    Wong et al. 2020 Alg. 3:        δ~U(−ε,ε); δ ← Π(δ + 1.25ε·sign ∇CE); CE(f(x+δ), y).
alp        Kannan et al. 2018 Eq 2:        J(M) + λ·‖z(x) − z(x')‖²₂ (logit pairing; J = mixed clean/adv CE).
clp        Kannan et al. 2018 §3.2:        CE(f(x), y) + λ·‖z(x_i) − z(x_j)‖²₂ for random clean pairs.
vat        Miyato et al. 2018 Eq 1-5:      CE(f(x), y) + α·KL(p(x) ‖ p(x + r_vadv)), ℓ2 power iteration.
dynamic_at Wang et al. 2019 Alg. 1:        PGD, per-sample stop at FOSC c(x^k) ≤ c_t; c_t ↓ 0.
========== ================================================================================================

The early defences trained by their own objective (IGR, defensive distillation, MMC, Gaussian augmentation
for smoothing) are :mod:`~shieldkit.training.defense_training`; the trainer is
:func:`shieldkit.training.robust.train_robust`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from shieldkit.attacks.pgd import PGDConfig, ce_loss, kl_to_target_probs, project
from shieldkit.training.objectives import Batch, Objective, kl_div_batchmean, register_objective

Stats = dict[str, float]


class LabelledObjective(Objective):
    """An objective that needs the hard labels ``batch.y`` (every classic method does)."""

    def check(self, batch: Batch) -> None:
        super().check(batch)
        if batch.y is None:
            raise ValueError(f"objective {self.name!r} needs hard labels y in the batch")
        if batch.y.shape[0] != batch.x.shape[0]:
            raise ValueError(f"batch has {batch.x.shape[0]} images but {batch.y.shape[0]} labels")

    @staticmethod
    def clean_probs(student: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """p(x) in eval mode, detached — the fixed reference distribution of a KL inner maximisation
        (TRADES reference code: ``model.eval(); criterion_kl(..., F.softmax(model(x_natural)))``)."""
        was = student.training
        student.eval()
        try:
            with torch.no_grad():
                return F.softmax(student(x), dim=1)
        finally:
            student.train(was)


class PairedCEObjective(LabelledObjective):
    """A loss of the clean and the adversarial logits, ``loss_terms(f(x), f(x'), y)``, with x' the PGD-CE
    maximiser (MART, ALP): the two train-mode passes are made here, the method says only its loss."""

    def __call__(self, student: nn.Module, batch: Batch, generator: torch.Generator | None = None
                 ) -> tuple[torch.Tensor, Stats]:
        self.check(batch)
        x_adv = self.perturb(student, batch.x, batch.y, "ce", generator)
        return self.loss_terms(student(batch.x), student(x_adv), batch.y)

    def loss_terms(self, logits_clean: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor
                   ) -> tuple[torch.Tensor, Stats]:
        raise NotImplementedError


# --------------------------------------------------------------------------------------------------
# PGD-AT, TRADES, MART (also reused by distillation_losses on synthetic data)
# --------------------------------------------------------------------------------------------------


class _BetaObjective(LabelledObjective):
    """A labelled objective with a non-negative trade-off weight β on its robustness term (TRADES, MART)."""

    def __init__(self, attack: PGDConfig, beta: float = 6.0) -> None:
        super().__init__(attack)
        if beta < 0:
            raise ValueError(f"{type(self).__name__} beta must be non-negative")
        self.beta = beta


@register_objective("pgd_at")
class PGDAT(LabelledObjective):
    """Madry et al. 2018 (Eq 2.1): train only on the PGD-k maximiser of CE inside the ε-ball.

    Inner max: PGD on CE(f(x'), y) with the given :class:`PGDConfig` (Madry: uniform random start,
    k = 40 steps of 0.01 on MNIST ε = 0.3; 7 × 2/255 on CIFAR ε = 8/255). Outer: CE(f(x'), y).
    """

    def __call__(self, student: nn.Module, batch: Batch, generator: torch.Generator | None = None
                 ) -> tuple[torch.Tensor, Stats]:
        self.check(batch)
        x_adv = self.perturb(student, batch.x, batch.y, "ce", generator)
        logits_adv = student(x_adv)
        loss = F.cross_entropy(logits_adv, batch.y)
        acc = (logits_adv.argmax(1) == batch.y).float().mean()
        return loss, {"loss": loss.item(), "adv_acc": acc.item()}


@register_objective("std")
class StdAT(PGDAT):
    """Alias of ``pgd_at``: "standard adversarial training" in TRADES/MART/DataFreeShield tables."""


@register_objective("trades")
class TRADES(_BetaObjective):
    """Zhang et al. 2019, Eq 5 / Algorithm 1:

        min_θ  CE(f(x), y) + β · max_{x'∈B(x,ε)} KL(p(x) ‖ p(x'))

    Inner max: PGD on KL(p(x) ‖ p(x')) with p(x) fixed (computed in eval mode, detached), starting from
    x + 0.001·N(0, 1) in the reference code (``PGDConfig(start="normal")``). Outer: both terms with
    p(x) attached (the reference's ``criterion_kl(log_softmax(model(x_adv)), softmax(model(x)))``),
    KL summed over classes and averaged over the batch. β = 6 is the paper's (1/λ = 6) setting.
    """

    def __call__(self, student: nn.Module, batch: Batch, generator: torch.Generator | None = None
                 ) -> tuple[torch.Tensor, Stats]:
        self.check(batch)
        p_ref = self.clean_probs(student, batch.x)
        x_adv = self.perturb(student, batch.x, p_ref, kl_to_target_probs, generator)
        return self.loss_terms(student(batch.x), student(x_adv), batch.y)

    def loss_terms(self, logits_clean: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor
                   ) -> tuple[torch.Tensor, Stats]:
        """The outer TRADES loss on given logits (separate so tests check it by hand)."""
        natural = F.cross_entropy(logits_clean, y)
        robust = kl_div_batchmean(logits_adv, logits_clean)  # KL(p(x) ‖ p(x'))
        loss = natural + self.beta * robust
        return loss, {"loss": loss.item(), "ce_clean": natural.item(), "kl_robust": robust.item()}


def mart_bce(logits_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """MART's boosted CE (Wang et al. 2020 Eq 6), per sample:

        −log p_y(x') − log(1 − max_{k≠y} p_k(x'))

    The first term is computed as CE for numerical stability; the second uses the reference code's
    ``log(1.0001 − p + 1e-12)`` guard so a saturated wrong class cannot produce log(0).
    """
    probs = F.softmax(logits_adv, dim=1)
    wrong = probs.scatter(1, y.unsqueeze(1), -1.0)  # exclude the true class from the max
    top_wrong = wrong.max(dim=1).values
    return F.cross_entropy(logits_adv, y, reduction="none") - torch.log(1.0001 - top_wrong + 1e-12)


@register_objective("mart")
class MART(_BetaObjective, PairedCEObjective):
    """Wang et al. 2020 ("Improving adversarial robustness requires revisiting misclassified examples"),
    Eq 10 / the lecture's surrogate table:

        BCE(p(x'), y) + λ · KL(p(x) ‖ p(x')) · (1 − p_y(x))

    Inner max: PGD on CE(f(x'), y) (the paper finds the inner-max choice has negligible effect).
    The weight (1 − p_y(x)) — not detached, as in the reference code — emphasises misclassified
    examples. λ = 6 is the paper's CIFAR-10 value (``beta`` in the reference code).
    """

    def loss_terms(self, logits_clean: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor
                   ) -> tuple[torch.Tensor, Stats]:
        bce = mart_bce(logits_adv, y).mean()
        p_clean = F.softmax(logits_clean, dim=1)
        kl = (p_clean * (torch.log(p_clean + 1e-12) - F.log_softmax(logits_adv, dim=1))).sum(1)
        weight = 1.0000001 - p_clean.gather(1, y.unsqueeze(1)).squeeze(1)
        robust = (kl * weight).mean()
        loss = bce + self.beta * robust
        return loss, {"loss": loss.item(), "bce_adv": bce.item(), "weighted_kl": robust.item()}


# --------------------------------------------------------------------------------------------------
# Fast AT, logit pairing, VAT, Dynamic AT
# --------------------------------------------------------------------------------------------------


@register_objective("fgsm_at")
class FGSMAT(LabelledObjective):
    """Wong, Rice & Kolter 2020, "Fast is better than free", Algorithm 3 (FGSM with random start):

        δ ~ U(−ε, ε);  δ ← Π_ε(δ + α·sign ∇_δ CE(f(x+δ), y)),  α = 1.25ε;  loss = CE(f(x+δ), y)

    The attack config only contributes ε and the norm (ℓ∞); ``alpha_factor`` = 1.25 is the paper's
    step. x+δ is clipped to [0, 1] like the reference code. Deviation: the gradient step is taken in
    eval mode (shieldkit's convention for every inner maximisation) where Wong et al. stay in train
    mode; for BN nets this only changes which statistics normalise the one attack step.
    """

    def __init__(self, attack: PGDConfig, alpha_factor: float = 1.25) -> None:
        if attack.norm != "linf":
            raise ValueError("FGSM-AT is an ℓ∞ method; use pgd_at for ℓ2")
        super().__init__(PGDConfig(eps=attack.eps, norm="linf", steps=1, alpha=alpha_factor * attack.eps,
                                   random_start=True, start="uniform"))
        self.alpha_factor = alpha_factor

    def __call__(self, student: nn.Module, batch: Batch, generator: torch.Generator | None = None
                 ) -> tuple[torch.Tensor, Stats]:
        self.check(batch)
        x_adv = self.perturb(student, batch.x, batch.y, "ce", generator)
        logits = student(x_adv)
        loss = F.cross_entropy(logits, batch.y)
        return loss, {"loss": loss.item(), "adv_acc": (logits.argmax(1) == batch.y).float().mean().item()}


@register_objective("alp")
class ALP(PairedCEObjective):
    """Adversarial logit pairing, Kannan, Kurakin & Goodfellow 2018, Eq 2:

        J(M, θ) + λ · (1/m) Σ ‖z(x_i) − z(x'_i)‖²₂

    with z the logits, x' the PGD-CE maximiser and J the adversarial-training loss of the minibatch.
    Kannan et al. train on a mixture of clean and adversarial examples, J = w·CE(f(x), y) +
    (1 − w)·CE(f(x'), y) with w = ``clean_weight`` = 0.5; ``clean_weight=0`` gives the lecture's
    form CE(f(x'), y) + λ‖f(x') − f(x)‖². λ = 0.5 (``lam``) as in their ImageNet runs.
    """

    def __init__(self, attack: PGDConfig, lam: float = 0.5, clean_weight: float = 0.5) -> None:
        super().__init__(attack)
        if lam < 0 or not 0.0 <= clean_weight <= 1.0:
            raise ValueError("ALP needs lam ≥ 0 and clean_weight in [0, 1]")
        self.lam, self.clean_weight = lam, clean_weight

    def loss_terms(self, logits_clean: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor
                   ) -> tuple[torch.Tensor, Stats]:
        w = self.clean_weight
        ce = w * F.cross_entropy(logits_clean, y) + (1 - w) * F.cross_entropy(logits_adv, y)
        pairing = logit_pairing(logits_clean, logits_adv)
        loss = ce + self.lam * pairing
        return loss, {"loss": loss.item(), "ce": ce.item(), "pairing": pairing.item()}


def logit_pairing(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(1/m) Σ_i ‖a_i − b_i‖²₂ — Kannan et al.'s L(f(x), f(x̃)) with L the squared ℓ2 distance."""
    return (a - b).pow(2).sum(1).mean()


@register_objective("clp")
class CLP(LabelledObjective):
    """Clean logit pairing, Kannan et al. 2018 §3.2: no adversarial examples; the minibatch is split
    into halves and random clean pairs are pulled together:

        CE(f(x), y) + λ · (2/m) Σ_{i≤m/2} ‖z(x_i) − z(x_{i+m/2})‖²₂

    (The trainer shuffles every epoch, so the halves pair random examples, usually of different
    classes.) Kannan et al. also add Gaussian-noise augmentation for CLP; pass ``noise_std`` for that.
    """

    def __init__(self, attack: PGDConfig, lam: float = 0.5, noise_std: float = 0.0) -> None:
        super().__init__(attack)
        if lam < 0 or noise_std < 0:
            raise ValueError("CLP needs lam ≥ 0 and noise_std ≥ 0")
        self.lam, self.noise_std = lam, noise_std

    def __call__(self, student: nn.Module, batch: Batch, generator: torch.Generator | None = None
                 ) -> tuple[torch.Tensor, Stats]:
        self.check(batch)
        x = batch.x
        if self.noise_std > 0:
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = (x + self.noise_std * noise).clamp(0, 1)
        return self.loss_terms(student(x), batch.y)

    def loss_terms(self, logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, Stats]:
        half = logits.shape[0] // 2
        if half == 0:
            raise ValueError("CLP needs at least two examples per batch")
        ce = F.cross_entropy(logits, y)
        pairing = logit_pairing(logits[:half], logits[half:2 * half])
        loss = ce + self.lam * pairing
        return loss, {"loss": loss.item(), "ce": ce.item(), "pairing": pairing.item()}


def _unit_l2(v: torch.Tensor) -> torch.Tensor:
    return v / v.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (v.ndim - 1)))


def vat_perturbation(model: nn.Module, x: torch.Tensor, p_ref: torch.Tensor, eps: float, xi: float = 1e-6,
                     power_iterations: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
    """r_vadv ≈ ε · g/‖g‖₂, g the dominant eigenvector of the KL Hessian (Miyato et al. 2018 Eq 11-13):
    start from a random unit d, and K times set d ← ∇_r KL(p_ref ‖ p(x + r))|_{r=ξd}, normalised."""
    d = _unit_l2(torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype))
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        for _ in range(power_iterations):
            r = (xi * d).requires_grad_(True)
            with torch.enable_grad():
                kl = kl_to_target_probs(model(x + r), p_ref).sum()
                (g,) = torch.autograd.grad(kl, r)
            d = _unit_l2(g.detach())
    finally:
        for p in params:
            p.requires_grad_(True)
    return eps * d


@register_objective("vat")
class VAT(LabelledObjective):
    """Virtual adversarial training, Miyato et al. 2016/2018 (Eq 1-5, supervised form):

        CE(f(x), y) + α · LDS(x),  LDS(x) = KL(p(x) ‖ p(x + r_vadv)),  ‖r_vadv‖₂ = ε_vat

    r_vadv by ``power_iterations`` (K = 1) of the power method with ξ = 1e-6. VAT is an ℓ2 method with its
    own radius: ``eps_l2`` defaults to the attack's ε when the attack is ℓ2, else to 2.0 (Miyato et al.'s
    supervised-MNIST value); p(x) in the LDS is detached (the reference code's ``logit.detach()``).
    x + r is not clipped to [0, 1], as in the paper.
    """

    def __init__(self, attack: PGDConfig, alpha: float = 1.0, eps_l2: float | None = None, xi: float = 1e-6,
                 power_iterations: int = 1) -> None:
        super().__init__(attack)
        self.alpha, self.xi, self.power_iterations = alpha, xi, power_iterations
        self.eps_l2 = eps_l2 if eps_l2 is not None else (attack.eps if attack.norm == "l2" else 2.0)

    def __call__(self, student: nn.Module, batch: Batch, generator: torch.Generator | None = None
                 ) -> tuple[torch.Tensor, Stats]:
        self.check(batch)
        logits = student(batch.x)
        p_ref = F.softmax(logits.detach(), dim=1)
        r = vat_perturbation(student, batch.x, p_ref, self.eps_l2, self.xi, self.power_iterations, generator)
        lds = kl_to_target_probs(student(batch.x + r), p_ref).mean()
        ce = F.cross_entropy(logits, batch.y)
        loss = ce + self.alpha * lds
        return loss, {"loss": loss.item(), "ce": ce.item(), "lds": lds.item()}


def fosc(x_adv: torch.Tensor, x0: torch.Tensor, grad: torch.Tensor, eps: float) -> torch.Tensor:
    """First-order stationary condition (Wang et al. 2019 Def. 1, closed form Eq 5), per sample:

        c(x^k) = ε‖∇f(x^k)‖₁ − ⟨x^k − x^0, ∇f(x^k)⟩  ≥ 0;  0 ⟺ x^k is a KKT point of the inner max.
    """
    return eps * grad.flatten(1).abs().sum(1) - ((x_adv - x0) * grad).flatten(1).sum(1)


@register_objective("dynamic_at")
class DynamicAT(LabelledObjective):
    """Dynamic adversarial training, Wang et al. 2019 ("On the convergence and robustness of adversarial
    training"), Algorithm 1: PGD on CE where each sample stops as soon as its FOSC c(x^k) ≤ c_t, and the
    criterion decreases linearly from ``c_max`` to 0 over the first ``decay_fraction`` of training
    (weak attacks early for generalisation, strong attacks late for robustness). Paper: c_max = 0.5,
    decay over 80 % of epochs (CIFAR-10 ε = 8/255).

    The objective needs training progress: pass ``total_updates`` (the trainer's total number of
    objective calls); it counts its own calls. ``progress`` can be set explicitly (e.g. after a resume).
    """

    def __init__(self, attack: PGDConfig, total_updates: int = 1000, c_max: float = 0.5,
                 decay_fraction: float = 0.8) -> None:
        super().__init__(attack)
        if total_updates < 1 or c_max < 0 or not 0 < decay_fraction <= 1:
            raise ValueError("dynamic_at needs total_updates ≥ 1, c_max ≥ 0, 0 < decay_fraction ≤ 1")
        self.total_updates, self.c_max, self.decay_fraction = total_updates, c_max, decay_fraction
        self.calls = 0
        self.last_mean_steps = 0.0

    def criterion(self, progress: float) -> float:
        """c_t: linear decay from c_max (progress 0) to 0 (progress ≥ decay_fraction)."""
        return self.c_max * max(0.0, 1.0 - progress / self.decay_fraction)

    def perturb_fosc(self, student: nn.Module, x: torch.Tensor, y: torch.Tensor, c_t: float,
                     generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """PGD-CE with per-sample early stopping on FOSC; returns x' and the number of steps taken."""
        cfg, alpha = self.attack, self.attack.step_size()
        was = student.training
        student.eval()
        x = x.detach()
        x_adv = x.clone()
        if cfg.random_start and cfg.start == "uniform":
            u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            noise = (u * 2 - 1) * cfg.eps
            x_adv = project(x + noise, x, cfg.eps, "linf")
        elif cfg.random_start:  # "normal": the reference codes' x + 0.001·N(0, 1)
            noise = 0.001 * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x_adv = project(x + noise, x, cfg.eps, "linf")
        steps = torch.zeros(x.shape[0], device=x.device)
        try:
            for _ in range(cfg.steps):
                x_adv.requires_grad_(True)
                with torch.enable_grad():
                    loss = ce_loss(student(x_adv), y).sum()
                    (grad,) = torch.autograd.grad(loss, x_adv)
                x_adv = x_adv.detach()
                active = fosc(x_adv, x, grad, cfg.eps) > c_t
                if not active.any():
                    break
                mask = active.view(-1, *([1] * (x.ndim - 1))).to(x.dtype)
                x_adv = project(x_adv + mask * alpha * grad.sign(), x, cfg.eps, "linf")
                steps += active.to(steps.dtype)
        finally:
            student.train(was)
        for p in student.parameters():
            p.grad = None
        return x_adv, steps

    def __call__(self, student: nn.Module, batch: Batch, generator: torch.Generator | None = None
                 ) -> tuple[torch.Tensor, Stats]:
        self.check(batch)
        if self.attack.norm != "linf":
            raise ValueError("dynamic_at's FOSC closed form is for the ℓ∞ ball")
        c_t = self.criterion(self.calls / self.total_updates)
        self.calls += 1
        x_adv, steps = self.perturb_fosc(student, batch.x, batch.y, c_t, generator)
        self.last_mean_steps = steps.mean().item()
        loss = F.cross_entropy(student(x_adv), batch.y)
        return loss, {"loss": loss.item(), "fosc_criterion": c_t, "mean_steps": self.last_mean_steps}


# --------------------------------------------------------------------------------------------------
# Early training-time defences: input-gradient regularisation, defensive distillation, MMC
# --------------------------------------------------------------------------------------------------
