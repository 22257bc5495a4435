"""Attack building blocks of the evaluation suite, each checked against a reference or a hand case.

Models here are tiny (an MLP trained for a few hundred Adam steps on real MNIST-5k digits) so the
library attacks run in seconds."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from shieldkit.attacks.counting import CountingModel
from shieldkit.attacks.latent import choose_guides, latent_attack
from shieldkit.attacks.library import (
    preserved_rng,
    run_autoattack,
    run_autoattack_detailed,
    run_decision_attack,
    run_torchattack,
)
from shieldkit.attacks.losses import dfs_modified_loss, margin_loss
from shieldkit.attacks.pgd import PGDConfig, pgd
from shieldkit.data import load_dataset


@pytest.fixture(scope="module")
def mlp_and_points():
    torch.manual_seed(0)
    data = load_dataset("mnist5k", "train").subset(1500, seed=0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        idx = torch.randint(0, len(data), (64,), generator=g)
        loss = F.cross_entropy(net(data.x[idx]), data.y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    test = load_dataset("mnist5k", "test").subset(8, seed=1)
    return net, test.x, test.y


def test_autoattack_identical_to_pyautoattack(mlp_and_points):
    import pyautoattack

    net, x, y = mlp_and_points
    eps = 0.06
    robust, x_adv = run_autoattack(net, x, y, norm="linf", eps=eps, seed=7, batch_size=250, device="cpu")
    aa = pyautoattack.AutoAttack(net, norm="Linf", eps=eps, version="standard", seed=7, device="cpu")
    x_ref, y_ref = aa.run_standard_evaluation(x, y, batch_size=250)
    assert torch.equal(robust, y_ref == y)
    assert torch.equal(x_adv, x_ref)
    assert 0 < int(robust.sum()) < len(y), "choose eps so the comparison is non-trivial"
    # the per-attack variant (one sub-attack at a time on the remaining points) gives the same points
    # the per-attack variant (one sub-attack at a time on the remaining points, used by the suite)
    # gives the same points as one run_standard_evaluation call (cheap subset: APGD-CE + APGD-T)
    sub = ["apgd-ce", "apgd-t"]
    one, _ = run_autoattack(net, x, y, norm="linf", eps=eps, seed=7, attacks=sub)
    det = run_autoattack_detailed(net, x, y, norm="linf", eps=eps, seed=7, attacks=sub)
    assert torch.equal(det.robust, one)
    assert list(det.per_attack) == ["clean", *sub] and det.per_attack["apgd-t"] == int(one.sum())
    assert bool((robust <= one).all())  # the full ensemble is at least as strong as its subset


def test_attacks_restore_global_rng(mlp_and_points):
    net, x, y = mlp_and_points
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    run_autoattack(net, x[:4], y[:4], norm="linf", eps=0.05, seed=1, attacks=["apgd-ce"])
    run_torchattack("FGSM", net, x[:4], y[:4], eps=0.05)
    assert torch.equal(torch.rand(3), expected)
    with preserved_rng():
        torch.rand(10)
    assert not torch.equal(torch.rand(3), expected)  # state advanced normally outside the context


def test_fgsm_matches_torchattacks(mlp_and_points):
    net, x, y = mlp_and_points
    ours = pgd(net, x, y, PGDConfig(eps=0.1, steps=1, alpha=0.1, random_start=False))
    _, ref = run_torchattack("FGSM", net, x, y, eps=0.1)
    assert torch.allclose(ours, ref, atol=1e-6)


def test_counting_model_counts_images_through_forward_and_backward(mlp_and_points):
    net, x, y = mlp_and_points
    cm = CountingModel(net)
    with torch.no_grad():
        cm(x)
    assert cm.counts() == {"forwards": 8, "backwards": 0}
    pgd(cm, x[:4], y[:4], PGDConfig(eps=0.1, steps=3))
    assert cm.counts() == {"forwards": 8 + 12, "backwards": 12}
    assert torch.equal(cm(x), net(x))


def test_margin_loss_hand_case():
    z = torch.tensor([[2.0, 5.0, 1.0], [0.0, -1.0, 3.0]])
    y = torch.tensor([1, 0])
    assert torch.allclose(margin_loss(z, y), torch.tensor([2.0 - 5.0, 3.0 - 0.0]))


def test_dfs_modified_losses_hand_case():
    logits = torch.tensor([[0.0, 0.0]])
    p_s, p_t = torch.tensor([[0.9, 0.1]]), torch.tensor([[0.5, 0.5]])
    target = torch.cat([p_s, p_t], 1)
    kl_s = 0.9 * torch.log(torch.tensor(0.9 / 0.5)) + 0.1 * torch.log(torch.tensor(0.1 / 0.5))
    assert torch.allclose(dfs_modified_loss("a", 2)(logits, target), kl_s.view(1), atol=1e-6)
    assert torch.allclose(dfs_modified_loss("b", 2)(logits, target), torch.zeros(1), atol=1e-6)
    assert torch.allclose(dfs_modified_loss("c", 2)(logits, target), kl_s.view(1), atol=1e-6)
    with pytest.raises(ValueError, match="'a', 'b' or 'c'"):
        dfs_modified_loss("d", 2)


def test_latent_attack_pulls_features_to_guides():
    from shieldkit.models import create_model

    torch.manual_seed(0)
    m = create_model("mnist_cnn").eval()
    d = load_dataset("mnist5k", "test").subset(8, seed=0)
    guides = choose_guides(d.y, seed=0)
    assert bool((d.y[guides] != d.y).all())
    cfg = PGDConfig(eps=0.3, steps=20, alpha=0.03)
    xa = latent_attack(m, d.x, d.y, cfg, seed=0)
    assert (xa - d.x).abs().max() <= 0.3 + 1e-6
    with torch.no_grad():
        tgt = m.features(d.x[guides])
        before = (m.features(d.x) - tgt).pow(2).sum(1)
        after = (m.features(xa) - tgt).pow(2).sum(1)
    assert bool((after < before).all())
    with pytest.raises(TypeError, match="features"):
        latent_attack(nn.Linear(2, 2), d.x, d.y, cfg)


def test_decision_attack_respects_threat_model(mlp_and_points):
    net, x, y = mlp_and_points
    robust, xa = run_decision_attack(net, x[:4], y[:4], norm="linf", eps=0.1, max_iter=2, max_eval=50, init_eval=10)
    assert robust.dtype == torch.bool and robust.shape == (4,)
    assert (xa - x[:4]).abs().max() <= 0.1 + 1e-4


def test_square_and_cw_l2_stay_in_ball(mlp_and_points):
    from shieldkit.attacks.cw import cw_l2

    net, x, y = mlp_and_points
    robust, xa = run_torchattack("Square", net, x, y, norm="Linf", eps=0.1, n_queries=50)
    assert (xa - x).abs().max() <= 0.1 + 1e-6 and robust.shape == (8,)
    robust2, xb = cw_l2(net, x, y, eps=1.0, steps=20)
    assert ((xb - x).flatten(1).norm(dim=1) <= 1.0 + 1e-4).all()
    assert int(robust2.sum()) <= int((net(x).argmax(1) == y).sum())


def test_bad_norm_and_version_raise(mlp_and_points):
    net, x, y = mlp_and_points
    with pytest.raises(ValueError, match="norm"):
        run_autoattack(net, x, y, norm="l7", eps=0.1)
    with pytest.raises(ValueError, match="version"):
        run_autoattack(net, x, y, norm="linf", eps=0.1, version="fast")


def test_eval_pgd_matches_training_engine_and_keeps_first_break(mlp_and_points):
    from shieldkit.attacks.eval_pgd import pgd_eval

    net, x, y = mlp_and_points
    cfg = PGDConfig(eps=1e-3, steps=5, alpha=2e-4)  # too small to break anything: identical iterates
    a = pgd(net, x, y, cfg, generator=torch.Generator().manual_seed(3))
    b = pgd_eval(net, x, y, cfg, generator=torch.Generator().manual_seed(3), early_stop=False)
    assert torch.allclose(a, b, atol=1e-7)
    cfg = PGDConfig(eps=0.1, steps=10)
    xa = pgd_eval(net, x, y, cfg, generator=torch.Generator().manual_seed(0))
    ref = pgd(net, x, y, cfg, generator=torch.Generator().manual_seed(0))
    broken_eval = net(xa).argmax(1) != y
    assert int(broken_eval.sum()) >= int((net(ref).argmax(1) != y).sum())
    assert (xa - x).abs().max() <= 0.1 + 1e-6
