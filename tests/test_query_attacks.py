"""Score-based query attacks: oracle budget enforcement, breaking an undefended model, reproducibility."""

from __future__ import annotations

import pytest
import torch

from shieldkit.attacks.query import (
    QueryBudgetExceeded,
    QueryOracle,
    make_attack,
    margin,
    run_query_attack,
    run_query_suite,
)
from shieldkit.attacks.query.simba import block_order, dct_matrix
from shieldkit.attacks.query.square import p_selection
from shieldkit.data import load_dataset

ATTACK_CASES = [("square", "linf", 0.2), ("square", "l2", 2.5), ("simba_dct", "linf", 0.2),
                ("simba_pixel", "linf", 0.2), ("signhunter", "linf", 0.2), ("nes", "linf", 0.2),
                ("bandits", "linf", 0.2)]


@pytest.fixture(scope="module")
def model_and_points(mnist_teacher):
    """The shared session teacher (conftest) and its correctly classified points among 8 test digits."""
    m = mnist_teacher
    te = load_dataset("mnist5k", "test").subset(8, seed=3)
    with torch.no_grad():
        keep = m(te.x).argmax(1) == te.y
    return m.eval(), te.x[keep], te.y[keep]


def test_oracle_counts_and_refuses_over_budget(model_and_points):
    m, x, y = model_and_points
    o = QueryOracle(m, n=3, budget=2)
    lp = o(x[:3], torch.arange(3))
    assert lp.shape == (3, 10) and not lp.requires_grad
    assert torch.allclose(lp.exp().sum(1), torch.ones(3), atol=1e-5)  # log-probabilities
    o(x[:1].repeat(2, 1, 1, 1)[:1], torch.tensor([0]))
    assert o.counts.tolist() == [2, 1, 1]
    with pytest.raises(QueryBudgetExceeded, match="budget is 2"):
        o(x[:1], torch.tensor([0]))
    assert o.counts.tolist() == [2, 1, 1]  # nothing charged (nor evaluated) for the refused batch
    with pytest.raises(QueryBudgetExceeded):  # two rows for one sample in one batch
        o(x[:2], torch.tensor([1, 1]))
    with pytest.raises(ValueError, match="sample indices"):
        o(x[:2], torch.tensor([1]))
    with pytest.raises(IndexError):
        o(x[:1], torch.tensor([5]))
    with pytest.raises(ValueError, match="budget"):
        QueryOracle(m, 3, 0)


def test_margin_hand_computed():
    logp = torch.tensor([[0.0, -1.0, -3.0]]).log_softmax(1)
    s = logp[0]
    assert margin(logp, torch.tensor([0])).item() == pytest.approx((s[0] - s[1]).item())
    assert margin(logp, torch.tensor([2]), targeted=True).item() == pytest.approx((s[0] - s[2]).item())


def test_square_schedule_matches_authors():
    assert p_selection(0.8, 0, 10000) == 0.8
    assert p_selection(0.8, 30, 10000) == 0.4
    assert p_selection(0.8, 250, 2500) == p_selection(0.8, 1000, 10000) == 0.05


def test_dct_basis_orthonormal_and_low_frequency_first():
    d = dct_matrix(28)
    assert torch.allclose(d @ d.T, torch.eye(28), atol=1e-5)
    order = block_order(28, 1, 14, 7, torch.Generator().manual_seed(0))
    assert sorted(order.tolist()) == list(range(784))
    first = order[:196]
    rows, cols = first // 28, first % 28
    assert int(rows.max()) < 14 and int(cols.max()) < 14


@pytest.mark.parametrize("name,norm,eps", ATTACK_CASES)
def test_attack_breaks_vanilla_within_budget_and_is_reproducible(model_and_points, name, norm, eps):
    m, x, y = model_and_points
    budget = 300
    r1 = run_query_attack(m, x, y, name, budget=budget, eps=eps, norm=norm, seed=1)
    assert r1.clean_correct.all()
    assert int(r1.queries.max()) <= budget
    assert r1.robust_accuracy() < 0.5, f"{name} left {r1.robust_accuracy():.2f} of points robust"
    assert r1.robust_accuracy(1) == 1.0
    # the adversarial examples are valid (in the ball and box) and really misclassified
    broken = torch.isfinite(r1.success_at)
    d = (r1.x_adv - x).flatten(1)
    size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
    assert (size <= eps + 1e-4).all() and r1.x_adv.min() >= 0 and r1.x_adv.max() <= 1
    with torch.no_grad():
        assert (m(r1.x_adv[broken]).argmax(1) != y[broken]).all()
    r2 = run_query_attack(m, x, y, name, budget=budget, eps=eps, norm=norm, seed=1)
    assert torch.equal(r1.success_at, r2.success_at) and torch.equal(r1.x_adv, r2.x_adv)


@pytest.mark.parametrize("name", ["square", "nes"])
def test_targeted_attacks_reach_the_target(model_and_points, name):
    m, x, y = model_and_points
    target = (y + 1) % 10
    atk = make_attack(name, 0.3, "linf", targeted=True)
    r = run_query_attack(m, x, y, atk, budget=800, target=target, seed=0)
    broken = torch.isfinite(r.success_at)
    assert int(broken.sum()) >= 2  # targeted is harder (MNIST, 800 queries); the path must work
    with torch.no_grad():
        assert (m(r.x_adv[broken]).argmax(1) == target[broken]).all()


def test_an_overspending_attack_is_stopped(model_and_points):
    m, x, y = model_and_points

    class Greedy(type(make_attack("nes", 0.2))):
        def _attack(self, tr, g):  # ignores tr.active(): asks for more than the budget allows
            idx = torch.arange(tr.x.shape[0])
            for _ in range(10):
                tr.query(tr.x, idx, check=False)

    with pytest.raises(QueryBudgetExceeded):
        run_query_attack(m, x, y, Greedy(0.2), budget=5)


def test_square_agrees_with_torchattacks(model_and_points):
    """Our oracle-bound Square and torchattacks' (uncounted) Square break the same model comparably."""
    torchattacks = pytest.importorskip("torchattacks")
    m, x, y = model_and_points
    ours = run_query_attack(m, x, y, make_attack("square", 0.2, p_init=0.3), budget=200, seed=0)
    torch.manual_seed(0)
    lib = torchattacks.Square(m, norm="Linf", eps=0.2, n_queries=200, p_init=0.3, seed=0)
    with torch.no_grad():
        lib_acc = float((m(lib(x, y)).argmax(1) == y).float().mean())
    assert ours.robust_accuracy() <= lib_acc + 0.25


def test_query_suite_reports_each_budget(model_and_points):
    m, _, _ = model_and_points
    te = load_dataset("mnist5k", "test")
    out = run_query_suite(m, te, budgets=(10, 50), eps=0.2, n=6, seed=0, attacks=("square", "signhunter"))
    assert set(out["attacks"]) == {"square", "signhunter"}
    for res in out["attacks"].values():
        assert res["robust_accuracy"][10] >= res["robust_accuracy"][50]
    assert out["worst_case"][50] <= min(r["robust_accuracy"][50] for r in out["attacks"].values())


def test_bad_arguments_are_rejected():
    with pytest.raises(KeyError, match="unknown query attack"):
        make_attack("zoo", 0.1)
    with pytest.raises(ValueError, match="norm"):
        make_attack("square", 0.1, "l1")
    with pytest.raises(ValueError, match="eps"):
        make_attack("nes", 0.0)
