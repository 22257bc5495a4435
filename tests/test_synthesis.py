import pytest
import torch
from torch import nn

from shieldkit.models import create_model
from shieldkit.synthesis import BNStatistics, SynthesisConfig, load_synthetic, synthesize, tv_prior
from shieldkit.synthesis.config import draw_alphas
from shieldkit.synthesis.store import shard_path
from shieldkit.utils.seed import make_generator


def _bn_net():
    net = nn.Sequential(nn.BatchNorm2d(2))
    net[0].running_mean.copy_(torch.tensor([1.0, -1.0]))
    net[0].running_var.copy_(torch.tensor([2.0, 0.5]))
    return net.eval()


def test_bn_feature_loss_hand_computed():
    net = _bn_net()
    x = torch.zeros(2, 2, 1, 2)
    x[0, 0] = torch.tensor([[0.0, 2.0]])  # channel 0 values: 0, 2, 4, 6 → mean 3, var 5
    x[1, 0] = torch.tensor([[4.0, 6.0]])
    x[:, 1] = -1.0  # channel 1: mean -1, var 0
    with BNStatistics(net) as bn:
        net(x)
        unsq = bn.loss()
    # ‖μ_T − μ‖₂ = ‖(1−3, −1+1)‖ = 2 ; ‖σ²_T − σ²‖₂ = ‖(2−5, 0.5−0)‖ = sqrt(9.25)
    assert unsq.item() == pytest.approx(2.0 + 9.25 ** 0.5, rel=1e-6)
    with BNStatistics(net, norm="squared") as bn:
        net(x)
        assert bn.loss().item() == pytest.approx(4.0 + 9.25, rel=1e-6)


def test_bn_feature_loss_batchnorm1d_head_hand_computed():
    """A BatchNorm1d on (N, C) features (a user's two-layer head, issue 16's second teacher) is compared per feature
    over the batch alone, and its term adds to the conv layers' ones."""
    net = nn.Sequential(nn.BatchNorm2d(2), nn.Flatten(), nn.BatchNorm1d(2)).eval()
    net[0].running_mean.copy_(torch.tensor([1.0, -1.0]))
    net[0].running_var.copy_(torch.tensor([2.0, 0.5]))
    # channel 0: 3, 1 (mean 2, var 1); channel 1: −1, −1 (mean −1, var 0); 1×1 images, so BN1d sees (2, 2)
    x = torch.tensor([[[[3.0]], [[-1.0]]], [[[1.0]], [[-1.0]]]])
    with BNStatistics(net) as bn:
        net(x)
        got = bn.loss().item()
    # BN2d: ‖(1−2, −1+1)‖ + ‖(2−1, 0.5−0)‖ = 1 + sqrt(1.25)
    # its output (x − μ_T)/sqrt(σ²_T + eps): ch 0 (3−1)/√2, (1−1)/√2 = √2, 0 → mean √2/2, var 0.5; ch 1: 0, 0
    # BN1d: ‖(0 − √2/2, 0)‖ + ‖(1 − 0.5, 1 − 0)‖ = √0.5 + sqrt(1.25)
    assert got == pytest.approx(1 + 1.25 ** 0.5 + 0.5 ** 0.5 + 1.25 ** 0.5, rel=1e-4)


def test_bn_hooks_removed_after_context():
    net = _bn_net()
    with BNStatistics(net):
        pass
    assert not net[0]._forward_hooks


def test_tv_prior_hand_computed():
    x = torch.tensor([[[[0.0, 1.0], [1.0, 3.0]]]])
    # dh: (1, 2), dv: (1, 2), diag d1: (3), anti-diag d2: x[0,1]-x[1,0] = 0
    assert tv_prior(x, "squared").item() == pytest.approx(1 + 4 + 1 + 4)
    assert tv_prior(x).item() == pytest.approx(5 ** 0.5 + 5 ** 0.5 + 3 + 0)


def test_dss_draws_new_alphas_per_batch_fixed_does_not():
    cfg = SynthesisConfig(n_samples=10, batch_size=5)
    a = [draw_alphas(cfg, make_generator(s)) for s in (1, 2, 3)]
    assert all(((x >= 0) & (x <= 1)).all() for x in a)
    assert not torch.equal(a[0], a[1]) and not torch.equal(a[1], a[2])
    assert a[0][2] == 1.0  # TV coefficient stays fixed by default (reference implementation)
    fixed = SynthesisConfig(n_samples=10, batch_size=5, coefficients="fixed")
    assert torch.equal(draw_alphas(fixed, make_generator(1)), torch.ones(3))


def test_synthesis_outputs_and_resume_equals_uninterrupted(tmp_path, mnist_teacher):
    cfg = SynthesisConfig(n_samples=30, batch_size=10, iterations=6, seed=7)
    before = {k: v.clone() for k, v in mnist_teacher.state_dict().items()}
    full = load_synthetic(synthesize(mnist_teacher, tmp_path / "full", cfg, progress=False))
    # interrupted run: only shard 0 and 2 exist (as if killed), then resume
    synthesize(mnist_teacher, tmp_path / "part", cfg, progress=False)
    shard_path(tmp_path / "part", 1).unlink()
    with pytest.raises(FileNotFoundError, match="incomplete"):
        load_synthetic(tmp_path / "part")
    resumed = load_synthetic(synthesize(mnist_teacher, tmp_path / "part", cfg, progress=False))
    assert torch.equal(full.x, resumed.x) and torch.equal(full.y, resumed.y)
    assert torch.equal(full.alphas, resumed.alphas)
    assert full.x.shape == (30, 1, 28, 28) and float(full.x.min()) >= 0 and float(full.x.max()) <= 1
    assert torch.equal(full.y.bincount(minlength=10), torch.full((10,), 3))  # balanced labels
    assert full.t_logits.shape == (30, 10)
    # distinct α per batch (DSS)
    assert len({tuple(r.tolist()) for r in full.alphas}) == 3
    # teacher untouched: weights, BN stats, mode, requires_grad
    assert all(torch.equal(before[k], v) for k, v in mnist_teacher.state_dict().items())
    assert not mnist_teacher.training and all(p.requires_grad for p in mnist_teacher.parameters())


def test_synthesis_changes_teacher_prediction_towards_labels(tmp_path, mnist_teacher):
    cfg = SynthesisConfig(n_samples=20, batch_size=20, iterations=60, seed=1, coefficients="fixed")
    syn = load_synthetic(synthesize(mnist_teacher, tmp_path / "s", cfg, progress=False))
    agree = (syn.t_logits.argmax(1) == syn.y).float().mean().item()
    assert agree > 0.6  # from pure noise, 60 Adam steps already make T predict most assigned labels


def test_config_mismatch_and_no_bn_errors(tmp_path, mnist_teacher):
    synthesize(mnist_teacher, tmp_path / "s", SynthesisConfig(n_samples=2, batch_size=2, iterations=1),
               progress=False)
    from shieldkit.errors import IntegrityError

    with pytest.raises(IntegrityError, match="synthesis configuration"):
        synthesize(mnist_teacher, tmp_path / "s", SynthesisConfig(n_samples=4, batch_size=2, iterations=1),
                   progress=False)
    no_bn = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    with pytest.raises(ValueError, match="BatchNorm"):
        synthesize(no_bn, tmp_path / "x", SynthesisConfig(n_samples=2, batch_size=2, iterations=1),
                   num_classes=10, image_shape=(1, 28, 28), progress=False)
    with pytest.raises(ValueError, match="coefficients"):
        SynthesisConfig(coefficients="random")
    create_model("mnist_cnn")  # registry still intact
