"""The early training-time defences, each trained by its own objective rather than on adversarial examples.

========== ================================================================================================
name       objective (p(·) = softmax(f(·)))
========== ================================================================================================
igr        Ross & Doshi-Velez 2018 Eq 4:   CE(f(x), y) + λ·‖∇_x CE(f(x), y)‖²₂ (double backpropagation).
distill…   Papernot et al. 2016 §4:        soft CE at temperature T to a teacher trained at T.
gaussian…  Cohen et al. 2019 §4:          CE(f(x + δ), y), δ ~ N(0, σ²I) (base classifier for smoothing).
mmc        Pang et al. 2020 Eq 8:          ½‖z(x) − μ_y‖²₂ with fixed Max-Mahalanobis centres μ_k.
========== ================================================================================================

``distillation`` and ``mmc`` need more than a minibatch (a teacher, a special head):
:func:`train_defensive_distillation` and :func:`shieldkit.defenses.mmc.attach_mmc_head` set those up, and the
trainer (:func:`shieldkit.training.robust.train_robust`) runs the loop. The deployed wrappers
(:class:`~shieldkit.defenses.temperature.TemperatureScaled`, :class:`~shieldkit.defenses.mmc.MMCHead`) are
defences, one layer down.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from shieldkit.attacks.pgd import PGDConfig
from shieldkit.defenses.mmc import find_mmc_head
from shieldkit.defenses.temperature import TemperatureScaled
from shieldkit.models.protocol import has_linear_head
from shieldkit.training.adversarial_losses import LabelledObjective, Stats
from shieldkit.training.objectives import Batch, Objective, register_objective


@register_objective("igr")
class InputGradientRegularization(LabelledObjective):
    """Ross & Doshi-Velez 2018, Eq 4 (Drucker & LeCun 1992 "double backpropagation"):

        CE(f(x), y) + λ · ‖∇_x CE(f(x), y)‖²₂

    with the per-sample gradient norm of the per-sample loss averaged over the batch (the paper sums
    both over n). The gradient is kept in the graph (``create_graph=True``) so the penalty trains θ.
    λ is scale-dependent (pixels in [0, 1] here); ``lam`` = 10 keeps MNIST clean accuracy near the
    undefended model's. No attack is used; the PGD config is ignored.
    """

    def __init__(self, attack: PGDConfig, lam: float = 10.0) -> None:
        super().__init__(attack)
        if lam < 0:
            raise ValueError("igr lam must be non-negative")
        self.lam = lam

    def __call__(self, student: nn.Module, batch: Batch, generator: torch.Generator | None = None
                 ) -> tuple[torch.Tensor, Stats]:
        self.check(batch)
        x = batch.x.detach().requires_grad_(True)
        per_sample = F.cross_entropy(student(x), batch.y, reduction="none")
        (gx,) = torch.autograd.grad(per_sample.sum(), x, create_graph=True)
        penalty = gx.pow(2).flatten(1).sum(1).mean()
        ce = per_sample.mean()
        loss = ce + self.lam * penalty
        return loss, {"loss": loss.item(), "ce": ce.item(), "grad_penalty": penalty.item()}


@register_objective("distillation")
class DefensiveDistillation(Objective):
    """Papernot et al. 2016 §4, step 2: train the distilled network at temperature T on the teacher's soft
    labels F^T(x) = softmax(z_teacher(x)/T):  −Σ_k softmax(t/T)_k · log softmax(z(x)/T)_k.

    ``batch.t_logits`` are the teacher's raw logits (the teacher itself trained at temperature T: see
    :func:`train_defensive_distillation`). At test time the network is used at T = 1, i.e. its raw
    logits, which are ~T times larger than normal — the source of its vanishing gradients.
    """

    needs_teacher = True

    def __init__(self, attack: PGDConfig, temperature: float = 100.0) -> None:
        super().__init__(attack)
        if temperature <= 0:
            raise ValueError("distillation temperature must be positive")
        self.temperature = temperature

    def __call__(self, student: nn.Module, batch: Batch, generator: torch.Generator | None = None
                 ) -> tuple[torch.Tensor, Stats]:
        self.check(batch)
        soft = F.softmax(batch.t_logits.detach() / self.temperature, dim=1)
        loss = -(soft * F.log_softmax(student(batch.x) / self.temperature, dim=1)).sum(1).mean()
        return loss, {"loss": loss.item()}


def train_defensive_distillation(make_model: Callable[[], nn.Module], data, temperature: float = 100.0,
                                 epochs: int = 3, device: str | torch.device = "cpu", seed: int = 0,
                                 progress: bool = False, init: nn.Module | None = None
                                 ) -> tuple[nn.Module, nn.Module]:
    """Papernot et al. 2016 Figure 5: (1) train a teacher with softmax at temperature T on the hard
    labels, (2) label the training set with its soft labels at T, (3) train a fresh network of the same
    architecture on them at T, (4) deploy it at T = 1. Returns ``(distilled, teacher)``; both take
    [0, 1] images and return raw logits (deployed at T = 1).

    ``init`` (deviation, for small CPU budgets): start teacher and student from a standard-trained network
    whose final layer is multiplied by T, i.e. from the solution softmax(z/T) = softmax(z_init). Trained
    from scratch at T = 100, the gradients are T times smaller and a few epochs leave the network at chance
    (Papernot et al. train for 50 epochs); the warm start has the defining property — logits ~T times
    larger than normal at deployment — from the first step.
    """
    from shieldkit.training.robust import RobustTrainConfig, train_robust
    from shieldkit.training.standard import StandardTrainConfig, train_classifier

    def start() -> nn.Module:
        if init is None:
            return make_model().to(device)
        m = copy.deepcopy(init).to(device)
        if not has_linear_head(m):
            raise TypeError("defensive distillation's warm start needs a linear .head to scale by T")
        head = m.head
        with torch.no_grad():
            head.weight.mul_(temperature)
            if head.bias is not None:
                head.bias.mul_(temperature)
        return m

    teacher = start()
    train_classifier(TemperatureScaled(teacher, temperature), data,
                     StandardTrainConfig(epochs=epochs, seed=seed), device=device, progress=progress)
    teacher.eval()
    with torch.no_grad():
        t_logits = torch.cat([teacher(data.x[i:i + 500].to(device)).cpu() for i in range(0, len(data), 500)])
    student = start()
    cfg = RobustTrainConfig(objective="distillation", objective_kwargs={"temperature": temperature},
                            epochs=epochs, batch_size=128, lr=0.05, schedule="cosine", seed=seed)
    train_robust(student, data.x, cfg, t_logits=t_logits, device=device, progress=progress)
    return student.eval(), teacher


@register_objective("mmc")
class MMC(LabelledObjective):
    """Max-Mahalanobis centre loss, Pang et al. 2020 ("Rethinking softmax cross-entropy loss for adversarial
    robustness") Eq 8:  L_MMC = ½‖z(x) − μ*_y‖²₂ = −logit_y for an :class:`MMCHead`. Prediction is the
    nearest centre (argmax of −½‖z − μ_k‖²). Plain MMC (no adversarial training), the variant Tramèr et al.
    2020 (App. F) break by attacking the feature space directly.
    """

    def __call__(self, student: nn.Module, batch: Batch, generator: torch.Generator | None = None
                 ) -> tuple[torch.Tensor, Stats]:
        self.check(batch)
        find_mmc_head(student)
        logits = student(batch.x)
        loss = -logits.gather(1, batch.y.unsqueeze(1)).mean()
        return loss, {"loss": loss.item(), "acc": (logits.argmax(1) == batch.y).float().mean().item()}


@register_objective("gaussian_aug")
class GaussianAugmentation(LabelledObjective):
    """Cohen et al. 2019 §4 base-classifier training for randomised smoothing: CE(f(x + δ), y) with
    δ ~ N(0, σ²I) (not clipped, matching the certificate's noise). ``sigma`` is the smoothing σ; the PGD
    config is ignored."""

    def __init__(self, attack: PGDConfig, sigma: float = 0.25) -> None:
        super().__init__(attack)
        if sigma <= 0:
            raise ValueError("gaussian_aug sigma must be positive")
        self.sigma = sigma

    def __call__(self, student: nn.Module, batch: Batch, generator: torch.Generator | None = None
                 ) -> tuple[torch.Tensor, Stats]:
        self.check(batch)
        x = batch.x
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype) * self.sigma
        logits = student(x + noise)
        loss = F.cross_entropy(logits, batch.y)
        return loss, {"loss": loss.item(), "noisy_acc": (logits.argmax(1) == batch.y).float().mean().item()}
