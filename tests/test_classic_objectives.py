"""Hand-computed checks of the classic adversarial-training objectives (adversarial_losses) and the early
defences' own training objectives (defense_training, defenses.mmc)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from shieldkit.attacks.pgd import PGDConfig
from shieldkit.defenses.mmc import attach_mmc_head, find_mmc_head, max_mahalanobis_centers
from shieldkit.training.adversarial_losses import (
    ALP,
    CLP,
    FGSMAT,
    MART,
    TRADES,
    DynamicAT,
    fosc,
    logit_pairing,
    mart_bce,
    vat_perturbation,
)
from shieldkit.training.defense_training import DefensiveDistillation
from shieldkit.training.objectives import OBJECTIVES, Batch, create_objective

ATTACK = PGDConfig(eps=0.2, steps=3, alpha=0.1, start="uniform")


def _kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))


def _softmax(z: list[float]) -> list[float]:
    e = [math.exp(v) for v in z]
    return [v / sum(e) for v in e]


class Linear(nn.Module):
    """logits = W·flatten(x): input gradients are known in closed form."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.w.t()


CLASSIC_NAMES = {"pgd_at", "std", "trades", "mart", "fgsm_at", "alp", "clp", "vat", "dynamic_at", "igr",
                 "distillation", "mmc", "gaussian_aug"}


def test_registered_names_and_kwargs() -> None:
    # exactly these names come from adversarial_losses / defense_training (none missing, extra or shadowed)
    classic = {n for n, cls in OBJECTIVES.items()
               if cls.__module__ in ("shieldkit.training.adversarial_losses", "shieldkit.training.defense_training")}
    assert classic == CLASSIC_NAMES
    for name in sorted(CLASSIC_NAMES):
        obj = create_objective(name, ATTACK)
        assert type(obj) is OBJECTIVES[name] and obj.name == name
    assert create_objective("std", ATTACK).name == "std"
    assert create_objective("trades", ATTACK, beta=3.0).beta == 3.0
    assert create_objective("mart", ATTACK, beta=5.0).beta == 5.0
    with pytest.raises(ValueError, match="hard labels"):
        create_objective("trades", ATTACK)(Linear(torch.zeros(3, 4)), Batch(torch.zeros(2, 1, 2, 2)))


def test_trades_loss_by_hand() -> None:
    zc, za, y = [2.0, 0.0, -1.0], [0.5, 1.0, 0.0], 0
    trades = TRADES(ATTACK, beta=6.0)
    loss, stats = trades.loss_terms(torch.tensor([zc]), torch.tensor([za]), torch.tensor([y]))
    pc, pa = _softmax(zc), _softmax(za)
    expected = -math.log(pc[y]) + 6.0 * _kl(pc, pa)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert stats["kl_robust"] == pytest.approx(_kl(pc, pa), rel=1e-5)


def test_mart_bce_and_weighting_by_hand() -> None:
    za, y = [1.0, 2.0, 0.0], 0
    pa = _softmax(za)
    bce = mart_bce(torch.tensor([za]), torch.tensor([y])).item()
    assert bce == pytest.approx(-math.log(pa[0]) - math.log(1.0001 - pa[1] + 1e-12), rel=1e-5)
    # two samples with the same adversarial logits: the confidently-correct one contributes ~no KL term
    zc = torch.tensor([[10.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    zadv = torch.tensor([za, za])
    yy = torch.tensor([0, 0])
    loss, stats = MART(ATTACK, beta=2.0).loss_terms(zc, zadv, yy)
    kls, ws = [], []
    for row in zc.tolist():
        p = _softmax(row)
        kls.append(_kl(p, pa))
        ws.append(1.0000001 - p[0])
    assert ws[0] < 1e-4 and ws[1] == pytest.approx(2 / 3, rel=1e-5)
    expected_robust = (kls[0] * ws[0] + kls[1] * ws[1]) / 2
    assert stats["weighted_kl"] == pytest.approx(expected_robust, rel=1e-4)
    assert loss.item() == pytest.approx(bce + 2.0 * expected_robust, rel=1e-4)


def test_fgsm_at_step_is_random_start_plus_125_eps_sign() -> None:
    torch.manual_seed(0)
    w = torch.randn(3, 4)
    model = Linear(w)
    x = torch.full((2, 1, 2, 2), 0.5)
    y = torch.tensor([0, 2])
    obj = FGSMAT(PGDConfig(eps=0.1, steps=10))
    assert obj.attack.steps == 1 and obj.attack.alpha == pytest.approx(0.125)
    x_adv = obj.perturb(model, x, y, "ce", torch.Generator().manual_seed(1))
    delta0 = (torch.rand(x.shape, generator=torch.Generator().manual_seed(1)) * 2 - 1) * 0.1
    xs = (x + delta0).requires_grad_(True)
    F.cross_entropy(model(xs), y, reduction="sum").backward()
    expected = (delta0 + 0.125 * xs.grad.sign()).clamp(-0.1, 0.1)
    assert torch.allclose(x_adv - x, expected, atol=1e-6)


def test_alp_and_clp_pairing_by_hand() -> None:
    a = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    b = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    assert logit_pairing(a, b).item() == pytest.approx((5.0 + 25.0) / 2)
    y = torch.tensor([1, 0])
    loss, st = ALP(ATTACK, lam=0.5, clean_weight=0.5).loss_terms(a, b, y)
    ce = 0.5 * F.cross_entropy(a, y).item() + 0.5 * F.cross_entropy(b, y).item()
    assert loss.item() == pytest.approx(ce + 0.5 * 15.0, rel=1e-6) and st["pairing"] == pytest.approx(15.0)
    logits = torch.tensor([[1.0, 0.0], [0.0, 1.0], [3.0, 0.0], [0.0, 0.0]])
    loss, st = CLP(ATTACK, lam=1.0).loss_terms(logits, torch.tensor([0, 1, 0, 1]))
    assert st["pairing"] == pytest.approx((4.0 + 1.0) / 2)  # pairs (0,2) and (1,3)


def test_vat_perturbation_norm_and_direction() -> None:
    # For a linear model the KL Hessian's dominant eigenvector lies in the row space of W.
    w = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    model = Linear(w)
    x = torch.zeros(1, 1, 2, 2)
    p = F.softmax(model(x), dim=1)
    g = torch.Generator().manual_seed(0)
    r = vat_perturbation(model, x, p, eps=2.0, xi=1e-3, power_iterations=2, generator=g)
    assert r.flatten().norm().item() == pytest.approx(2.0, rel=1e-5)
    assert abs(r.flatten()[0].item()) == pytest.approx(2.0, rel=1e-3)


def test_fosc_by_hand_and_dynamic_schedule() -> None:
    x0 = torch.zeros(1, 1, 1, 2)
    g = torch.tensor([[[[1.0, -2.0]]]])
    assert fosc(x0, x0, g, 0.1).item() == pytest.approx(0.3)  # ε‖g‖₁ at the centre
    corner = torch.tensor([[[[0.1, -0.1]]]])  # PGD's fixed point: x − x0 = ε·sign(g)
    assert fosc(corner, x0, g, 0.1).item() == pytest.approx(0.0, abs=1e-7)
    dyn = DynamicAT(ATTACK, total_updates=10, c_max=0.5, decay_fraction=0.8)
    assert dyn.criterion(0.0) == 0.5 and dyn.criterion(0.4) == pytest.approx(0.25)
    assert dyn.criterion(0.9) == 0.0


def test_igr_penalty_is_squared_input_gradient() -> None:
    w = torch.tensor([[1.0, -1.0, 0.0, 2.0], [0.0, 1.0, 1.0, 0.0]])
    model = Linear(w)
    x = torch.tensor([[[[0.1, 0.2], [0.3, 0.4]]]])
    y = torch.tensor([1])
    loss, st = create_objective("igr", ATTACK, lam=2.0)(model, Batch(x, y))
    p = F.softmax(model(x), dim=1).detach()
    grad = (p - F.one_hot(y, 2).float()) @ w  # ∇_x CE for a linear model
    assert st["grad_penalty"] == pytest.approx(grad.pow(2).sum().item(), rel=1e-5)
    assert loss.item() == pytest.approx(st["ce"] + 2.0 * st["grad_penalty"], rel=1e-6)
    loss.backward()
    assert model.w.grad is not None and model.w.grad.abs().sum() > 0


def test_distillation_soft_cross_entropy_by_hand() -> None:
    t = torch.tensor([[20.0, 0.0]])
    s = torch.tensor([[0.0, 10.0]])
    obj = DefensiveDistillation(ATTACK, temperature=10.0)
    loss, _ = obj(Linear(torch.eye(2)), Batch(torch.tensor([[[[0.0, 10.0]]]]), t_logits=t))
    q, p = _softmax([2.0, 0.0]), _softmax([0.0, 1.0])
    assert loss.item() == pytest.approx(-(q[0] * math.log(p[0]) + q[1] * math.log(p[1])), rel=1e-5)
    assert s.shape == t.shape
    with pytest.raises(ValueError, match="teacher logits"):
        obj(Linear(torch.eye(2)), Batch(torch.zeros(1, 1, 1, 2)))


def test_mmc_centres_and_loss() -> None:
    mu = max_mahalanobis_centers(10, 16, c_mm=10.0)
    gram = mu @ mu.t()
    assert torch.allclose(gram.diag(), torch.full((10,), 100.0), atol=1e-3)
    off = gram[~torch.eye(10, dtype=torch.bool)]
    assert torch.allclose(off, torch.full_like(off, -100.0 / 9), atol=1e-3)
    with pytest.raises(ValueError):
        max_mahalanobis_centers(10, 5)
    from shieldkit.models import create_model

    model = attach_mmc_head(create_model("mnist_cnn"))
    head = find_mmc_head(model)
    x = torch.rand(3, 1, 28, 28)
    y = torch.tensor([0, 1, 2])
    model.eval()
    loss, _ = create_objective("mmc", ATTACK)(model, Batch(x, y))
    z = head.embed(model.features(x))
    assert loss.item() == pytest.approx((0.5 * (z - head.centers[y]).pow(2).sum(1)).mean().item(), rel=1e-4)
    with pytest.raises(TypeError, match="MMCHead"):
        create_objective("mmc", ATTACK)(create_model("mnist_cnn"), Batch(x, y))


@pytest.mark.parametrize("name", ["pgd_at", "trades", "mart", "fgsm_at", "alp", "clp", "vat", "dynamic_at",
                                  "gaussian_aug"])
def test_each_objective_trains_one_update(name: str) -> None:
    from shieldkit.data import load_dataset
    from shieldkit.models import create_model
    from shieldkit.training.robust import RobustTrainConfig, train_robust

    torch.manual_seed(0)
    ds = load_dataset("mnist5k", "train").subset(32, seed=0)
    model = create_model("mnist_cnn")
    cfg = RobustTrainConfig(objective=name, eps=0.2, attack_steps=2, attack_alpha=0.1, epochs=1,
                            batch_size=16, attack_start="uniform")
    before = [p.detach().clone() for p in model.parameters()]
    _, hist = train_robust(model, ds.x, cfg, y=ds.y, progress=False)
    assert len(hist["loss"]) == 2 and all(math.isfinite(v) for v in hist["loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


class _TinyNet(nn.Module):
    """features = flatten(x), logits = head(features): the layout attach_mmc_head expects."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(4, 3)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@pytest.mark.parametrize("name", sorted(CLASSIC_NAMES))
def test_each_objective_at_zero_weights_is_log_k_and_trains_the_weights(name: str) -> None:
    """With all-zero weights every logit is 0 and every input gradient vanishes, so PGD/FGSM/VAT/noise
    cannot move the prediction: each objective's value is known in closed form — CE = log K and every
    KL / pairing / gradient penalty 0 (MART: its BCE; MMC: ½‖μ_y‖² = ½c_mm²) — whatever the perturbation.
    The loss must also be a scalar that back-propagates a finite, non-zero gradient into the weights."""
    k = 3
    x = torch.rand(4, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 0])
    if name == "mmc":
        model = attach_mmc_head(_TinyNet())
        head = find_mmc_head(model)
        with torch.no_grad():
            head.proj.weight.zero_()
            head.proj.bias.zero_()  # z = 0: ½‖0 − μ_y‖² = ½·c_mm² = 50 for every sample
        params = [head.proj.weight]
        expected = 0.5 * 10.0**2
    else:
        model = Linear(torch.zeros(k, 4))
        params = [model.w]
        expected = math.log(k)
        if name == "mart":  # BCE(uniform, y) = log K − log(1.0001 − 1/K + 1e-12); its KL term is 0
            expected = math.log(k) - math.log(1.0001 - 1.0 / k + 1e-12)
    t_logits = torch.randn(4, k, generator=torch.Generator().manual_seed(1)) * 5
    model.train()
    loss, stats = create_objective(name, ATTACK)(model, Batch(x, y, t_logits=t_logits),
                                                 torch.Generator().manual_seed(2))
    assert loss.dim() == 0 and loss.requires_grad
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert all(math.isfinite(v) for v in stats.values())
    loss.backward()
    for p in params:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
