"""The evaluation runner (issue 14, item 2) on a hand-made model whose verdicts are computed by hand:
per-point worst case, attack-only-still-robust ordering, the ε-ball refusal, seeding per step and batch."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from shieldkit.errors import IntegrityError
from shieldkit.evaluation.runner import Runner, Step


class Threshold(nn.Module):
    """Class 1 iff the image's pixel sum exceeds 2 (logits [2 - s, s - 2]): verdicts by hand."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.flatten(1).sum(1)
        return torch.stack([2 - s, s - 2], 1)


def _points() -> tuple[torch.Tensor, torch.Tensor]:
    # pixel sums 0.4, 1.6, 2.4, 3.6 → classes 0, 0, 1, 1: all four clean-correct
    x = torch.tensor([0.1, 0.4, 0.6, 0.9]).view(4, 1, 1, 1).expand(4, 1, 2, 2).contiguous()
    return x, torch.tensor([0, 0, 1, 1])


def _runner(batch_size: int = 250) -> Runner:
    x, y = _points()
    return Runner(Threshold(), x, y, seed=0, batch_size=batch_size)


def test_worst_case_is_per_point_over_runs_marked_for_it() -> None:
    r = _runner()
    x = r.x
    r.run("clean", "clean", lambda: x)
    # +0.125 per pixel (+0.5 to the sum) flips point 1 (1.6 → 2.1); −0.125 flips point 2 (2.4 → 1.9)
    up, down = (x + 0.125).clamp(0, 1), (x - 0.125).clamp(0, 1)
    a = r.run("up", "white-box", lambda: up, eps=0.125)
    b = r.run("down", "white-box", lambda: down, eps=0.125)
    c = r.run("far", "white-box", lambda: torch.ones_like(x), in_worst_case=False)  # a curve point at another ε
    assert a.robust.tolist() == [True, False, True, True]
    assert b.robust.tolist() == [True, True, False, True]
    assert c.robust.tolist() == [False, False, True, True]
    assert r.worst_case().tolist() == [True, False, False, True]  # "far" is not part of it
    assert r.records()[1]["k"] == 3 and r.records()[1]["n"] == 4


def test_survivor_steps_attack_only_points_still_robust_and_the_others_stay_broken() -> None:
    r = _runner()
    x = r.x
    r.run("clean", "clean", lambda: x)
    r.run("up", "white-box", lambda: (x + 0.125).clamp(0, 1), eps=0.125)  # breaks point 1
    seen: list[int] = []

    def black_box(xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        seen.append(len(xs))
        return xs  # changes nothing: every point it sees stays robust

    run = r.execute(Step("square", "black-box", black_box, on="survivors", eps=0.125))
    assert seen == [3]  # points 0, 2, 3 only
    assert run.robust.tolist() == [True, False, True, True]  # point 1 stays broken without being attacked
    assert r.survivors().tolist() == [True, False, True, True]  # black-box runs do not narrow the white-box set


def test_examples_outside_the_ball_are_refused_not_scored() -> None:
    r = _runner()
    with pytest.raises(IntegrityError, match=r"'cheat'.*linf ball"):
        r.run("cheat", "white-box", lambda: (r.x + 0.3).clamp(0, 1), eps=0.125)
    with pytest.raises(IntegrityError, match=r"\[0, 1\] image box"):
        r.run("box", "white-box", lambda: r.x + 0.125, eps=0.125)  # within ε, but 0.9 → 1.025
    assert r.runs == []  # nothing recorded from a refused attack


def test_batches_are_seeded_by_step_and_index_not_by_what_ran_before() -> None:
    def noise(xb: torch.Tensor, yb: torch.Tensor, g: torch.Generator, idx: torch.Tensor) -> torch.Tensor:
        return (xb + 0.1 * (torch.rand(xb.shape, generator=g) - 0.5)).clamp(0, 1)

    alone = _runner(batch_size=2)
    a = alone.batched(noise, "step-b")
    after = _runner(batch_size=2)
    after.batched(noise, "step-a")  # another random step first
    b = after.batched(noise, "step-b")
    assert torch.equal(a, b)
    assert not torch.equal(a, _runner(batch_size=2).batched(noise, "step-c"))  # the tag matters
    robust, x_adv = _runner(batch_size=2).batched(noise, "step-b", judge_each=True)
    assert torch.equal(x_adv, a) and robust.dtype == torch.bool and robust.shape == (4,)


def test_basic_evaluation_has_the_shared_schema_and_is_never_trustworthy(mnist_teacher, mnist_test):
    """evaluate_basic returns the EvaluationResult schema (issue 14): attacks as run records with their passes
    (hand-counted: PGD-k with track_best is k forward+backward passes plus two forwards per point), the
    worst case over the AutoAttack subset, and — since it runs no audit — "NOT AUDITED", never trustworthy."""
    from shieldkit.evaluation.basic import evaluate_basic

    r = evaluate_basic(mnist_teacher, mnist_test, eps=0.1, n=40, aa_n=16, seed=2, pgd_steps=3,
                       aa_attacks=["apgd-ce"])
    assert r["suite"] == "basic" and r["audited"] is False and r["trustworthy"] is False
    assert r["headline"].startswith("NOT AUDITED") and r["audit"] == []
    assert [a["name"] for a in r["attacks"]] == ["clean", "PGD-3", "AutoAttack-standard[apgd-ce]"]
    clean, pgd_run, aa = r["attacks"]
    assert (clean["forwards"], clean["backwards"], clean["n"]) == (40, 0, 40)
    assert (pgd_run["forwards"], pgd_run["backwards"], pgd_run["n"]) == (40 * 5, 40 * 3, 40)
    assert aa["n"] == 16 and aa["forwards"] > 0
    pp = r["per_point"]
    worst = [pp["pgd_robust"][i] & a for a, i in zip(pp["autoattack_robust"], pp["autoattack_index"], strict=True)]
    assert r["per_point_robust"] == worst and r["robust_n"] == 16 and r["n"] == 40
    assert r["robust_acc"] == sum(worst) / 16
    assert r["model"]["arch"] == "mnist_cnn"
