"""Issue 14: every registered attack through the one interface (create_attack → Attack → AttackResult) on a
tiny real model: the result's shape, the cost bookkeeping, the threat model verified, and each attack
really breaking an undefended MNIST CNN at its smoke budget."""

import pytest
import torch

from shieldkit.attacks.base import ATTACKS, Attack, AttackResult, create_attack, list_attacks, register
from shieldkit.data import load_dataset
from shieldkit.defenses.classic import bit_depth_defense
from shieldkit.errors import InputError, IntegrityError
from shieldkit.models import create_model
from shieldkit.training.standard import StandardTrainConfig, train_classifier

EPS = 0.2
# accuracy left on 16 undefended points at the smoke budget, measured + margin: white-box attacks reach 0,
# the query / decision / transfer attacks at a few hundred queries leave a few points
CEILING = {"fgsm": 0.35, "bandits": 0.35, "hopskipjump": 0.45, "latent": 0.45, "nes": 0.55, "simba": 0.55,
           "spsa": 0.35, "square": 0.25, "transfer": 0.45}
REQUIRED = {"fgsm", "pgd", "cw", "apgd-ce", "apgd-t", "autoattack", "square", "simba", "signhunter", "nes",
            "bandits", "spsa", "hopskipjump", "transfer", "latent", "stadv", "eot-pgd", "bpda-pgd"}


@pytest.fixture(scope="module")
def points():
    return load_dataset("mnist5k", "test").subset(16, seed=0)


@pytest.fixture(scope="module")
def substitute():
    torch.manual_seed(1)
    sub = create_model("mnist_cnn", dataset="mnist5k", mean=[0.13], std=[0.31])
    train_classifier(sub, load_dataset("mnist5k", "train").subset(1000, seed=1),
                     StandardTrainConfig(epochs=1, seed=1), progress=False)
    return sub.eval()


def test_registry_lists_every_required_attack():
    assert set(list_attacks()) >= REQUIRED
    assert all(ATTACKS[n].family in ("white-box", "black-box", "transfer", "adaptive") for n in ATTACKS)


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_every_attack_breaks_an_undefended_model_through_the_interface(name, mnist_teacher, points, substitute):
    model = bit_depth_defense(mnist_teacher, 3).eval() if name == "bpda-pgd" else mnist_teacher
    kw = {"substitute": substitute} if name == "transfer" else {}
    atk = create_attack(name, eps=EPS, norm="linf", budget="smoke", **kw)
    res = atk(model, points.x, points.y, generator=torch.Generator().manual_seed(0))
    assert isinstance(res, AttackResult) and res.x_adv.shape == points.x.shape
    assert res.robust.dtype == torch.bool and res.robust.shape == (16,)
    with torch.no_grad():  # robust is recomputed independently here, not read back from the attack
        again = (model(points.x).argmax(1) == points.y) & (model(res.x_adv).argmax(1) == points.y)
    assert torch.equal(res.robust, again)
    assert res.robust_accuracy <= CEILING.get(name, 0.0625), (name, res.robust_accuracy)
    m = res.meta
    assert m["attack"] == name and m["eps"] == EPS and m["seconds"] >= 0
    if atk.family == "black-box":
        assert m["backwards"] == 0 and m["queries"] == m["forwards"] > 0
    elif name != "transfer":
        assert m["backwards"] > 0 and m["forwards"] >= m["backwards"]
    else:
        assert m["forwards"] == 0  # the target is never queried while the examples are crafted
    if atk.bounded:
        assert float((res.x_adv - points.x).abs().max()) <= EPS + 1e-5


def test_pgd_restarts_are_honoured(mnist_teacher, points):
    """At a small ε most points survive, so each restart re-attacks them: ~3× the passes of one run."""
    one = create_attack("pgd", eps=0.02, budget="smoke", restarts=1)(mnist_teacher, points.x, points.y)
    three = create_attack("pgd", eps=0.02, budget="smoke", restarts=3)(mnist_teacher, points.x, points.y)
    assert three.meta["backwards"] >= 2.5 * one.meta["backwards"]
    assert three.robust_accuracy <= one.robust_accuracy


def test_same_generator_same_examples(mnist_teacher, points):
    a = create_attack("pgd", eps=EPS, budget="smoke")(mnist_teacher, points.x, points.y,
                                                      generator=torch.Generator().manual_seed(3))
    b = create_attack("pgd", eps=EPS, budget="smoke")(mnist_teacher, points.x, points.y,
                                                      generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.x_adv, b.x_adv)


def test_an_attack_leaving_the_ball_is_refused(mnist_teacher, points):
    class Cheat(Attack):
        name = "cheat-test-only"

        def perturb(self, model, x, y, generator):
            return (x + 2 * self.eps).clamp(0, 1)

    register(Cheat)
    try:
        with pytest.raises(IntegrityError, match="leave the linf ball"):
            create_attack("cheat-test-only", eps=0.1)(mnist_teacher, points.x, points.y)
    finally:
        ATTACKS.pop("cheat-test-only")


def test_bad_attack_requests_are_clear_errors():
    with pytest.raises(InputError, match="'squar': unknown") as e:
        create_attack("squar", eps=0.1)
    assert "did you mean 'square'" in e.value.hint
    with pytest.raises(InputError, match="unknown parameter"):
        create_attack("pgd", eps=0.1, stepz=3)
    with pytest.raises(InputError, match="≤ 1"):
        create_attack("pgd", eps=2.0)
    with pytest.raises(InputError, match="norm"):
        create_attack("spsa", eps=0.1, norm="l2")
    with pytest.raises(InputError, match="budget"):
        create_attack("pgd", eps=0.1, budget="huge")
