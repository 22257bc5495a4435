"""UniG (Eq. 4, Algorithm 1, §4.6) and the RND baseline."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from shieldkit.attacks.query import run_query_attack
from shieldkit.data import load_dataset
from shieldkit.defenses.rnd import RandomNoiseDefense
from shieldkit.defenses.unig import UniG, UniGConfig, feature_gradients, unification_loss


@pytest.fixture(scope="module")
def teacher(mnist_teacher):
    """The shared session teacher (conftest: mnist_cnn, 3 epochs on MNIST-5k train)."""
    return mnist_teacher


def _identity_head() -> nn.Linear:
    head = nn.Linear(2, 2)
    with torch.no_grad():
        head.weight.copy_(torch.eye(2))
        head.bias.zero_()
    return head


def test_unification_loss_hand_computed():
    """f₁ = (1, 0), f₂ = (0, 1), W = I, b = 0, A = 1: ĝ₁ = (−u, u), ĝ₂ = (u, −u) with u = 1/(1+e);
    min-max → (0, 1) and (1, 0); loss = ‖(−1, 1)‖ = √2."""
    head = _identity_head()
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    labels = head(f).argmax(1)
    assert labels.tolist() == [0, 1]
    u = 1 / (1 + math.e)
    g = feature_gradients(torch.ones(2, 2), f, head, labels)
    assert torch.allclose(g, torch.tensor([[-u, u], [u, -u]]), atol=1e-6)
    loss, (lo, hi) = unification_loss(g)
    assert loss.item() == pytest.approx(math.sqrt(2), rel=1e-6)
    assert lo.item() == pytest.approx(-u) and hi.item() == pytest.approx(u)

    # A₁ = (2, 1): z₁ = (2, 0), ĝ₁ = A₁ ⊙ (−t, t) with t = 1/(1+e²); normalised with the frozen (−u, u)
    t = 1 / (1 + math.e ** 2)
    A = torch.tensor([[2.0, 1.0], [1.0, 1.0]])
    g = feature_gradients(A, f, head, labels)
    assert torch.allclose(g[0], torch.tensor([-2 * t, t]), atol=1e-6)
    loss, _ = unification_loss(g, (lo, hi))
    n0, n1 = (-2 * t + u) / (2 * u), (t + u) / (2 * u)
    assert loss.item() == pytest.approx(math.sqrt((n0 - 1) ** 2 + n1 ** 2), rel=1e-5)


def test_one_step_is_sgd_then_clip():
    head = _identity_head()
    unig = UniG(nn.Identity(), UniGConfig(delta=0.3, lr=0.5, steps=1, weight_decay=5e-4),
                features_fn=lambda x: x, head=head)
    f = torch.tensor([[1.0, 0.2], [0.1, 1.0], [0.7, 0.6]])
    A0 = torch.tensor([[1.1, 0.9], [1.0, 1.2], [0.8, 1.0]])
    A = A0.clone().requires_grad_(True)
    loss, _ = unification_loss(feature_gradients(A, f, head, head(f).argmax(1)))
    (grad,) = torch.autograd.grad(loss, A)
    expected = (A0 - 0.5 * (grad + 5e-4 * A0)).clamp(0.7, 1.3)
    got = unig.optimise_modulation(f, A0)
    assert torch.allclose(got, expected, atol=1e-6)
    assert unig.last_loss[-1] < unig.last_loss[0]  # the step lowers the unification loss


def test_clipping_bounds_modulation():
    head = _identity_head()
    unig = UniG(nn.Identity(), UniGConfig(delta=0.1, lr=1e4, steps=3), features_fn=lambda x: x, head=head)
    f = torch.rand(16, 2, generator=torch.Generator().manual_seed(0))
    A = unig.optimise_modulation(f)
    assert A.min() >= 0.9 - 1e-6 and A.max() <= 1.1 + 1e-6
    assert ((A - 1).abs() > 0.0999).any()  # the clip is active
    # p = 0: A is the clipped N(1, 0.5) draw
    A0 = UniG(nn.Identity(), UniGConfig(delta=0.2, steps=0), features_fn=lambda x: x, head=head
              ).optimise_modulation(f)
    assert A0.min() >= 0.8 - 1e-6 and A0.max() <= 1.2 + 1e-6


def test_works_under_no_grad_and_keeps_clean_accuracy(teacher):
    te = load_dataset("mnist5k", "test").subset(300, seed=0)
    teacher.zero_grad(set_to_none=True)
    unig = UniG(teacher)
    with torch.no_grad():
        out = unig(te.x)
        base = teacher(te.x)
    assert out.shape == (300, 10) and not out.requires_grad
    assert all(p.grad is None for p in teacher.parameters())
    acc_u = (out.argmax(1) == te.y).float().mean().item()
    acc_v = (base.argmax(1) == te.y).float().mean().item()
    assert abs(acc_u - acc_v) <= 0.02
    assert 0 < (out - base).norm(dim=1).mean().item() < base.norm(dim=1).mean().item() * 0.3
    with torch.inference_mode():
        out = unig(te.x[:4])
    assert out.shape == (4, 10) and not out.requires_grad


def test_reseed_reproduces_outputs(teacher):
    x = load_dataset("mnist5k", "test").x[:32]
    u = UniG(teacher, seed=3)
    with torch.no_grad():
        a, b = u(x), u(x)
        u.reseed(3)
        c = u(x)
    assert not torch.equal(a, b)  # fresh A per call
    assert torch.equal(a, c)


def test_single_sample_mode_uses_references(teacher):
    refs = load_dataset("mnist5k", "train").subset(5, seed=7).x
    x = load_dataset("mnist5k", "test").x[:1]
    u = UniG(teacher, references=refs)
    with torch.no_grad():
        out = u(x)
    assert out.shape == (1, 10)
    assert u.last_loss and u.last_loss[0] > 0  # the joint batch (1 + 5) has pairs to unify
    bare = UniG(teacher)
    with pytest.warns(UserWarning, match="references"), torch.no_grad():
        bare(x)
    assert bare.last_loss[0] == 0.0
    # a query attack on one image at a time runs through the references
    r = run_query_attack(u, x, load_dataset("mnist5k", "test").y[:1], "square", budget=20, eps=0.1)
    assert int(r.queries.max()) <= 20


def test_unig_requires_locatable_features():
    seq = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    with pytest.raises(TypeError, match="features_fn"):
        UniG(seq)
    with pytest.raises(TypeError, match="both"):
        UniG(seq, head=seq[1])
    u = UniG(seq, features_fn=lambda x: x.flatten(1), head=seq[1])
    with torch.no_grad():
        assert u(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    with pytest.raises(ValueError, match="delta"):
        UniGConfig(delta=-1)


def test_rnd_noise_is_fresh_and_reproducible(teacher):
    x = load_dataset("mnist5k", "test").x[:16]
    r = RandomNoiseDefense(teacher, 0.02, seed=1)
    with torch.no_grad(), warnings.catch_warnings():
        a, b = r(x), r(x)
        r.reseed(1)
        c = r(x)
        base = teacher(x)
    assert not torch.equal(a, b) and torch.equal(a, c)
    assert (a.argmax(1) == base.argmax(1)).float().mean() >= 0.9
    with pytest.raises(ValueError, match="sigma"):
        RandomNoiseDefense(teacher, -0.1)
