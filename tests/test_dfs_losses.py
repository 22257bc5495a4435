"""Hand-computed cases for the loss zoo (ARD, RSLAD, DFME ℓ1, DFARD KL) and the baselines' generator
losses (Table 2), plus behaviour of the inner maximisation on a tiny real model."""

from __future__ import annotations

import math

import pytest
import torch

from shieldkit.attacks.pgd import PGDConfig
from shieldkit.models import create_model
from shieldkit.synthesis.baselines import (
    GenStep,
    adaptive_temperature,
    ait_generator_loss,
    dast_generator_loss,
    dfard_generator_loss,
    dfme_generator_loss,
)
from shieldkit.training.distillation_losses import l1_logit_gap
from shieldkit.training.objectives import OBJECTIVES, Batch, create_objective

ATTACK = PGDConfig(eps=0.2, steps=2)


def kl(q: list[float], p: list[float]) -> float:
    """KL(q ‖ p) by hand."""
    return sum(a * math.log(a / b) for a, b in zip(q, p, strict=True) if a > 0)


def softmax(v: list[float], t: float = 1.0) -> list[float]:
    e = [math.exp(x / t) for x in v]
    return [x / sum(e) for x in e]


def test_zoo_registered_and_classic_reused():
    for name in ("ard", "rslad", "dfme_l1", "dfard_kl"):
        create_objective(name, ATTACK)
    # STD / TRADES / MART come from adversarial_losses, not copies here
    for name in ("std", "trades", "mart"):
        create_objective(name, ATTACK)
        assert OBJECTIVES[name].__module__ == "shieldkit.training.adversarial_losses"


def test_rslad_hand_computed():
    obj = create_objective("rslad", ATTACK)
    t = torch.tensor([[math.log(3.0), 0.0]])  # T(x) = (3/4, 1/4)
    s_clean = t.clone()  # KL(S(x), T(x)) = 0
    s_adv = torch.zeros(1, 2)  # uniform
    loss, stats = obj.loss_terms(s_clean, s_adv, t)
    expected = 5 / 6 * kl([0.75, 0.25], [0.5, 0.5])
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert stats["kl_clean"] == pytest.approx(0.0, abs=1e-7)


def test_ard_hand_computed():
    obj = create_objective("ard", ATTACK, alpha=0.5, temperature=2.0)
    t = torch.tensor([[2.0, 0.0]])
    s_adv = torch.zeros(1, 2)
    s_clean = torch.tensor([[0.0, 0.0]])
    y = torch.tensor([1])
    loss, _ = obj.loss_terms(s_clean, s_adv, t, y)
    expected = 0.5 * 4.0 * kl(softmax([2.0, 0.0], 2.0), [0.5, 0.5]) + 0.5 * math.log(2.0)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="alpha"):
        create_objective("ard", ATTACK, alpha=1.5)


def test_dfme_and_dfard_hand_computed():
    s = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    t = torch.tensor([[0.0, 0.0], [1.0, -1.0]])
    assert l1_logit_gap(s, t).tolist() == [3.0, 2.0]
    loss, _ = create_objective("dfme_l1", ATTACK).loss_terms(s, t)
    assert loss.item() == pytest.approx(2.5)
    dfard = create_objective("dfard_kl", ATTACK, temperature=2.0)
    loss, stats = dfard.loss_terms(torch.zeros(1, 2), torch.tensor([[2.0, 0.0]]))
    assert loss.item() == pytest.approx(4.0 * kl(softmax([2.0, 0.0], 2.0), [0.5, 0.5]), rel=1e-5)
    assert stats["temperature"] == 2.0
    dfard.temperature = 0.0
    with pytest.raises(ValueError, match="temperature"):
        dfard.loss_terms(torch.zeros(1, 2), torch.zeros(1, 2))


def test_generator_losses_table2_hand_computed():
    y_cond = torch.tensor([1])
    step = GenStep(
        x=torch.zeros(1, 1, 2, 2),
        y_cond=y_cond,
        t_logits=torch.tensor([[1.0, 0.0]]),
        s_logits=torch.tensor([[0.0, 0.0]]),
        bn_loss=torch.tensor(1.5),
        temperature=2.0,
    )
    assert dast_generator_loss(step).item() == pytest.approx(-math.log(2.0))  # −CE(S, argmax T = 0)
    assert dfme_generator_loss(step).item() == pytest.approx(-1.0)  # −Σ|T − S|
    assert ait_generator_loss(step).item() == pytest.approx(1.5 + (math.log(1 + math.e) - 0.0))
    assert dfard_generator_loss(step).item() == pytest.approx(
        -4.0 * kl(softmax([1.0, 0.0], 2.0), [0.5, 0.5]), rel=1e-5
    )


def test_adaptive_temperature_range():
    assert adaptive_temperature(1.0, 1.0, 10.0) == 1.0
    assert adaptive_temperature(0.0, 1.0, 10.0) == 10.0
    assert adaptive_temperature(0.5, 1.0, 10.0) == pytest.approx(5.5)
    assert adaptive_temperature(2.0, 1.0, 10.0) == 1.0  # clamped


def test_teacher_objectives_need_teacher_and_inner_max_increases_loss():
    torch.manual_seed(0)
    model = create_model("mnist_cnn").eval()
    x = torch.rand(8, 1, 28, 28)
    with torch.no_grad():
        t = model(x) + torch.randn(8, 10)
    batch = Batch(x, None, t)
    for name in ("ard", "rslad", "dfme_l1", "dfard_kl"):
        obj = create_objective(name, PGDConfig(eps=0.2, steps=3))
        with pytest.raises(ValueError, match="teacher"):
            obj(model, Batch(x, torch.zeros(8, dtype=torch.long)))
        g = torch.Generator().manual_seed(0)
        loss, _ = obj(model.train(), batch, g)
        loss.backward()
        assert torch.isfinite(loss)
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
        model.zero_grad()
    # RSLAD: the adversary maximises KL(S(x'), T(x)) → the adversarial term exceeds the clean one
    obj = create_objective("rslad", PGDConfig(eps=0.3, steps=5))
    model.eval()
    _, stats = obj(model, batch, torch.Generator().manual_seed(0))
    assert stats["kl_adv_teacher"] > stats["kl_clean"]
