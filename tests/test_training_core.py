import pytest
import torch
import torch.nn.functional as F

from shieldkit.attacks.pgd import PGDConfig, pgd, project
from shieldkit.training.gradrefine import GradRefine, refine
from shieldkit.training.objectives import DFShieldObjective, kl_div_batchmean
from shieldkit.training.robust import RobustTrainConfig, init_student, train_robust


def _kl(p, q):  # KL(p ‖ q) for probability rows, by hand
    return (p * (p / q).log()).sum(1).mean()


def test_dfshield_loss_terms_hand_computed():
    s_clean = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    s_adv = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    t = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    obj = DFShieldObjective(PGDConfig(eps=0.1), lambda1=2.0, lambda2=0.5, clean_temperature=1.0)
    loss, stats = obj.loss_terms(s_clean, s_adv, t)
    P = lambda z: F.softmax(z, 1)  # noqa: E731
    a, b, c = _kl(P(t), P(s_clean)), _kl(P(t), P(s_adv)), _kl(P(s_clean), P(s_adv))
    assert loss.item() == pytest.approx((a + 2.0 * b + 0.5 * c).item(), rel=1e-5)
    assert stats["kl_adv_teacher"] == pytest.approx(b.item(), rel=1e-5)
    # temperature-scaled clean term: T² · KL at temperature T
    T = 4.0
    a_T = kl_div_batchmean(s_clean, t, T) * T * T
    assert a_T.item() == pytest.approx((_kl(P(t / T), P(s_clean / T)) * T * T).item(), rel=1e-5)


def test_kl_with_attached_saturated_target_has_finite_gradients():
    """Term (c) keeps S(x) attached; a confident student (logit gap 120 → softmax exactly 0 in float32)
    must not send NaN into the weights (regression: an imported ResNet-18 hit this at update 0)."""
    s_adv = torch.tensor([[0.0, 1.0, -1.0]], requires_grad=True)
    s_clean = torch.tensor([[120.0, 0.0, -5.0]], requires_grad=True)
    assert F.softmax(s_clean, 1)[0, 1] == 0.0  # the underflow that broke the naive form
    kl = kl_div_batchmean(s_adv, s_clean)
    kl.backward()
    assert torch.isfinite(s_clean.grad).all() and torch.isfinite(s_adv.grad).all()
    # value: KL(q‖p) with q one-hot in float64
    p = F.log_softmax(s_adv.detach().double(), 1)
    q = F.softmax(s_clean.detach().double(), 1)
    expected = (q * (q.clamp_min(1e-300).log() - p)).sum()
    assert kl.item() == pytest.approx(expected.item(), rel=1e-5)


def test_gradrefine_toy_mask_and_sum():
    g = torch.tensor([[1.0, -1.0, 2.0, 0.5], [2.0, 1.0, -1.0, 0.5], [3.0, -2.0, -3.0, -0.5], [0.5, -1.0, 1.0, 0.5]])
    # element 0: all +  → A=1   → sum 6.5
    # element 1: 1 +, 3 − → A=-.5 → keep (τ=.5) → sum of negatives −4
    # element 2: 2 +, 2 − → A=0   → masked → 0
    # element 3: 3 +, 1 − → A=.5  → sum of positives 1.5
    expected = torch.tensor([6.5, -4.0, 0.0, 1.5])
    assert torch.equal(refine(g, tau=0.5), expected)
    assert torch.equal(refine(g, tau=0.75), torch.tensor([6.5, 0.0, 0.0, 0.0]))
    p = torch.nn.Parameter(torch.zeros(4))
    gr = GradRefine([p], num_batches=4, tau=0.5)
    for row in g:
        p.grad = row.clone()
        gr.accumulate()
    assert gr.ready
    kept = gr.apply()
    assert torch.equal(p.grad, expected) and kept == 0.75


def test_pgd_breaks_undefended_teacher_and_respects_ball(mnist_teacher, mnist_test):
    sub = mnist_test.subset(100, seed=0)
    cfg = PGDConfig(eps=0.2, steps=20, alpha=0.025)
    adv = pgd(mnist_teacher, sub.x, sub.y, cfg, generator=torch.Generator().manual_seed(0), track_best=True)
    assert (adv - sub.x).abs().max() <= 0.2 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    with torch.no_grad():
        clean = (mnist_teacher(sub.x).argmax(1) == sub.y).float().mean().item()
        robust = (mnist_teacher(adv).argmax(1) == sub.y).float().mean().item()
    assert clean > 0.9 and robust < 0.05


def test_pgd_matches_torchattacks(mnist_teacher, mnist_test):
    torchattacks = pytest.importorskip("torchattacks")
    x, y = mnist_test.x[:32], mnist_test.y[:32]
    ours = pgd(mnist_teacher, x, y, PGDConfig(eps=0.1, steps=5, alpha=0.02, random_start=False))
    ref = torchattacks.PGD(mnist_teacher, eps=0.1, alpha=0.02, steps=5, random_start=False)(x, y)
    assert torch.allclose(ours, ref, atol=1e-6)


def test_l2_projection():
    x = torch.zeros(2, 1, 2, 2) + 0.5
    far = x + torch.tensor([3.0, 0, 0, 0]).view(1, 1, 2, 2)
    p = project(far, x, eps=0.25, norm="l2")
    assert (p - x).flatten(1).norm(dim=1).max().item() == pytest.approx(0.25, rel=1e-5)


def test_training_resume_equals_uninterrupted(tmp_path, mnist_teacher, mnist_train):
    data = mnist_train.subset(120, seed=1)
    with torch.no_grad():
        t_logits = mnist_teacher(data.x)
    cfg = RobustTrainConfig(eps=0.2, attack_steps=2, epochs=2, batch_size=20, lr=0.01, grad_refine_batches=2,
                            checkpoint_every=1, seed=3)
    full, _ = train_robust(init_student(mnist_teacher), data.x, cfg, y=data.y, t_logits=t_logits,
                           out_dir=tmp_path / "a", progress=False)
    # "killed" after 2 of 6 updates, then resumed from the checkpoint by a fresh process-equivalent
    train_robust(init_student(mnist_teacher), data.x, cfg, y=data.y, t_logits=t_logits, out_dir=tmp_path / "b",
                 progress=False, stop_after_updates=2)
    resumed, hist = train_robust(init_student(mnist_teacher), data.x, cfg, y=data.y, t_logits=t_logits,
                                 out_dir=tmp_path / "b", progress=False)
    assert len(hist["loss"]) == 6
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    # something was learned: weights moved away from the teacher
    moved = any(not torch.equal(a, b) for a, b in zip(full.state_dict().values(),
                                                      mnist_teacher.state_dict().values(), strict=True))
    assert moved


def test_training_rejects_bad_inputs(mnist_teacher):
    x = torch.rand(10, 1, 28, 28)
    with pytest.raises(ValueError, match="labels"):
        train_robust(init_student(mnist_teacher), x, RobustTrainConfig(epochs=1), progress=False)
    with pytest.raises(ValueError, match="rows"):
        train_robust(init_student(mnist_teacher), x, RobustTrainConfig(epochs=1), y=torch.zeros(3, dtype=torch.long),
                     progress=False)


def test_attack_step_ratio_follows_eps_and_explicit_alpha_wins():
    """The demo's inner PGD step is ε/2 *of whatever ε is chosen* (shield --eps 0.2 → 0.1), not a fixed number;
    an explicit attack_alpha overrides the ratio; without either, App. A.3's ε/4."""
    from shieldkit.errors import InputError
    from shieldkit.training.robust import RobustTrainConfig

    assert RobustTrainConfig(eps=0.2, attack_steps=3, attack_alpha_ratio=0.5).attack().step_size() == 0.1
    assert RobustTrainConfig(eps=0.1, attack_alpha_ratio=0.5, attack_alpha=0.01).attack().step_size() == 0.01
    assert RobustTrainConfig(eps=0.2).attack().step_size() == 0.05
    with pytest.raises((InputError, ValueError), match="attack_alpha_ratio"):
        RobustTrainConfig(attack_alpha_ratio=-1.0)
