"""The fast AutoAttack backend (``shieldkit.attacks.fast_autoattack``) against pyautoattack itself.

The model is a tiny conv-BN-ReLU-max-pool CNN trained for a few hundred Adam steps on real MNIST-5k
digits, so every accelerated path runs (channels-last/strided pooling, the input-only batch-norm
backward, incremental Square queries) and AutoAttack-standard finishes in seconds. The reference is
``pyautoattack.AutoAttack(...).run_standard_evaluation`` on the same points and seed; equality is
bitwise (robust flags and adversarial examples), not approximate.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from shieldkit.attacks import fast_autoattack as fa
from shieldkit.attacks import fast_kernels as fk
from shieldkit.attacks.library import run_autoattack, run_autoattack_detailed
from shieldkit.data import load_dataset

EPS = 0.08
SEED = 3


class _Norm(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - 0.13) / 0.31


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


@pytest.fixture(scope="module")
def cnn_and_points():
    torch.manual_seed(0)
    data = load_dataset("mnist5k", "train").subset(2000, seed=0)
    net = nn.Sequential(_Norm(), _block(1, 8), nn.MaxPool2d(2), _block(8, 16), nn.MaxPool2d(2), nn.Flatten(),
                        nn.Linear(16 * 49, 10))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        idx = torch.randint(0, len(data), (64,), generator=g)
        xb = data.x[idx]
        xb = (xb + 0.1 * torch.empty_like(xb).uniform_(-1, 1, generator=g).sign()).clamp(0, 1)  # some robustness
        loss = F.cross_entropy(net(xb), data.y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    test = load_dataset("mnist5k", "test").subset(24, seed=1)
    return net, test.x, test.y


@pytest.fixture(scope="module")
def reference(cnn_and_points):
    import pyautoattack

    net, x, y = cnn_and_points
    aa = pyautoattack.AutoAttack(net, norm="Linf", eps=EPS, version="standard", seed=SEED, device="cpu")
    x_ref, y_ref = aa.run_standard_evaluation(x, y, batch_size=250)
    for p in net.parameters():  # pyautoattack's FAB leaves parameter gradients behind
        p.grad = None
    return x_ref, y_ref == y


def test_fast_equals_pyautoattack_per_point(cnn_and_points, reference):
    net, x, y = cnn_and_points
    x_ref, robust_ref = reference
    assert 4 <= int(robust_ref.sum()) <= len(y) - 4, "choose EPS so that the comparison is not trivial"
    res = run_autoattack_detailed(net, x, y, norm="linf", eps=EPS, seed=SEED, per_attack=False, backend="fast")
    assert res.backend["backend"] == "fast" and res.backend["square"] == "incremental"
    assert res.backend["pooling_patched"] == 2 and res.backend["batchnorm_patched"] == 2
    assert torch.equal(res.robust, robust_ref)
    assert torch.equal(res.x_adv, x_ref)


def test_pyautoattack_backend_is_the_package(cnn_and_points, reference):
    net, x, y = cnn_and_points
    robust, _ = run_autoattack(net, x, y, norm="linf", eps=EPS, seed=SEED, attacks=["apgd-ce"],
                               backend="pyautoattack")
    assert bool((robust >= reference[1]).all())  # one sub-attack is at most as strong as all four
    with pytest.raises(ValueError, match="backend"):
        run_autoattack(net, x, y, norm="linf", eps=EPS, backend="torchattacks")


def test_model_left_as_found(cnn_and_points):
    """The fast backend leaves the model as it found it (no parameter grads, no patched forwards)."""
    net, x, y = cnn_and_points
    grads_before = [p.grad for p in net.parameters()]
    run_autoattack(net, x[:4], y[:4], norm="linf", eps=EPS, seed=SEED, attacks=["fab-t"], backend="fast")
    assert all(p.requires_grad for p in net.parameters())
    assert [p.grad for p in net.parameters()] == grads_before
    assert not any("forward" in vars(m) for m in net.modules())  # patches removed


def test_incremental_square_falls_back_on_a_mismatch(cnn_and_points, monkeypatch):
    """A (simulated) difference between incremental and full evaluation must not change the result:
    the run-time check catches it and Square re-runs plainly from the same random state."""
    net, x, y = cnn_and_points
    x, y = x[:10], y[:10]
    plain = run_autoattack_detailed(net, x, y, norm="linf", eps=EPS, seed=SEED, attacks=["square"],
                                    per_attack=False, backend="pyautoattack")
    calls = {"n": 0}
    query = fa.PatchEvaluator.query

    def wrong_query(self, slots, x_new):
        calls["n"] += 1
        logits = query(self, slots, x_new)
        return logits + 1e-4 if calls["n"] == 2 else logits

    monkeypatch.setattr(fa.PatchEvaluator, "query", wrong_query)
    fast = run_autoattack_detailed(net, x, y, norm="linf", eps=EPS, seed=SEED, attacks=["square"],
                                   per_attack=False, backend="fast")
    assert calls["n"] >= 2
    assert torch.equal(fast.robust, plain.robust) and torch.equal(fast.x_adv, plain.x_adv)


def test_square_trajectory_is_bitwise(cnn_and_points, reference):
    """Square's whole state after each run — the best image and query count of every point, fooled or not —
    is pyautoattack's (the final robust flags alone would not see a query evaluated slightly wrong)."""
    from pyautoattack.square import SquareAttack

    net, x, y = cnn_and_points
    keep = reference[1]
    xs, ys = x[keep], y[keep]
    sq = SquareAttack(net, p_init=0.8, n_queries=700, eps=EPS, norm="Linf", n_restarts=1, seed=SEED,
                      device="cpu", resc_schedule=False)
    sq.init_hyperparam(xs)
    fast = fa.make_fast_square(sq, net)
    assert fast is not sq
    torch.manual_seed(SEED)
    n_ref, best_ref = sq.attack_single_run(xs, ys)
    torch.manual_seed(SEED)
    with fa.channels_last_pooling(net):
        n_fast, best_fast = fast.attack_single_run(xs, ys)
    assert torch.equal(n_ref, n_fast) and torch.equal(best_ref, best_fast)


def test_gradient_attacks_trajectory_is_bitwise(cnn_and_points):
    """APGD-T's and FAB-T's internals (best losses and points of every image) are unchanged by the
    pooling / frozen-parameter / batch-norm patches."""
    from pyautoattack.autopgd_base import APGDAttack_targeted
    from pyautoattack.fab_pt import FABAttack_PT

    net, x, y = cnn_and_points

    def run() -> list[torch.Tensor]:
        apgd = APGDAttack_targeted(net, n_iter=30, eps=EPS, seed=SEED, device="cpu")
        apgd.init_hyperparam(x)
        apgd.y_target = net(x).sort(dim=1)[1][:, -2]
        torch.manual_seed(SEED)
        out = list(apgd.attack_single_run(x, y))
        fab = FABAttack_PT(net, n_iter=20, eps=EPS, seed=SEED, targeted=True, device="cpu")
        fab.target_class = 2
        with torch.no_grad():
            out.append(fab.attack_single_run(x, y, is_targeted=True))
        return out

    ref = run()
    with fa.channels_last_pooling(net), fa.frozen_parameters(net), fa.input_grad_batch_norm(net) as n_bn:
        fast = run()
    assert n_bn == 2
    for a, b in zip(ref, fast, strict=True):
        assert torch.equal(a, b)


def test_patch_evaluator_matches_full_forward(cnn_and_points):
    net, x, _ = cnn_and_points
    ev = fa.PatchEvaluator(net)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad(), fa.channels_last_pooling(net):
        base = (x + EPS * torch.randint(-1, 2, x.shape, generator=g)).clamp(0, 1)
        assert torch.equal(ev.prime(base), net(base))
        slots = torch.arange(len(x))
        for q in range(40):
            if q % 10 == 9:
                slots = slots[torch.randperm(len(slots), generator=g)[: len(slots) - 3].sort().values]
            s = int(torch.randint(1, 9, (1,), generator=g))
            r, c = (int(v) for v in torch.randint(0, 29 - s, (2,), generator=g))
            x_new = base[slots].clone()
            x_new[:, :, r:r + s, c:c + s] = torch.rand(1, 1, s, s, generator=g).round()
            assert torch.equal(ev.query(slots, x_new), net(x_new)), f"query {q}"
            keep = torch.rand(len(slots), generator=g) < 0.5
            ev.commit(keep)
            base[slots[keep]] = x_new[keep]


@pytest.mark.parametrize("k,s,p", [(2, 2, 0), (3, 2, 1), (2, 1, 0), (3, 3, 0)])
def test_fast_max_pool_is_bitwise(k, s, p):
    g = torch.Generator().manual_seed(k * 10 + s)
    x = (torch.randn(3, 4, 13, 14, generator=g) * 2).round().relu()  # many ties
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = F.max_pool2d(xa, k, s, p), fa.fast_max_pool(xb, k, s, p)
    dy = torch.randn(ya.shape, generator=g)
    dy[0, 0] = -0.0  # the reference adds into zeros: a -0.0 gradient lands as +0.0
    assert torch.equal(ya, yb)
    ga, gb = torch.autograd.grad(ya, xa, dy)[0], torch.autograd.grad(yb, xb, dy)[0]
    assert torch.equal(ga, gb) and torch.equal(ga.signbit(), gb.signbit())
    with torch.no_grad():
        assert torch.equal(fa.fast_max_pool(x, k, s, p), F.max_pool2d(x, k, s, p))


def test_fast_max_pool_gradient_with_nan_matches_the_reference():
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    x[0, 1, 2:4, 4:6] = float("nan")  # a whole window of NaN: PyTorch keeps the last one
    x[1, 2, 0, 1] = float("nan")
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = F.max_pool2d(xa, 2, 2), fa.fast_max_pool(xb, 2, 2)
    dy = torch.arange(ya.numel(), dtype=torch.float32).view_as(ya)
    assert torch.equal(torch.autograd.grad(ya, xa, dy)[0], torch.autograd.grad(yb, xb, dy)[0])


def test_eval_batch_norm_backward_is_bitwise():
    bn = nn.BatchNorm2d(5).eval()
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.1, 3)
        bn.weight.uniform_(-2, 2)
    assert fk._bn_backward_matches(bn)
