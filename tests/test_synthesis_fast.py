"""The fast (meta-generator) synthesis path, ``method="fast"`` (issue 17 item 1)."""

import pytest
import torch
from torch import nn

from shieldkit.errors import InputError
from shieldkit.synthesis import FastConfig, SynthesisConfig, load_synthetic, synthesize
from shieldkit.synthesis import fast as fast_mod
from shieldkit.synthesis.fast import STATE_FILE, MomentumBNStatistics
from shieldkit.synthesis.store import shard_path


def _cfg(**kw):
    return SynthesisConfig(n_samples=24, method="fast", seed=3,
                           fast=FastConfig(nz=16, ngf=4, steps=2, warmup_batches=3, batch_size=8, **kw))


def test_momentum_bn_blends_history_hand_computed():
    net = nn.Sequential(nn.BatchNorm2d(1)).eval()  # running mean 0, var 1
    bn = MomentumBNStatistics(net, momentum=0.75)
    a = torch.full((2, 1, 1, 2), 4.0)  # batch mean 4, var 0
    b = torch.tensor([0.0, 2.0, 0.0, 2.0]).view(2, 1, 1, 2)  # mean 1, var 1
    with bn:
        net(a)
        assert bn.loss().item() == pytest.approx(4.0 + 1.0)  # no history yet: |0−4| + |1−0|
        bn.update_history()  # history = (4, 0)
        net(b)
        # compared: mean 0.25·1 + 0.75·4 = 3.25, var 0.25·1 + 0.75·0 = 0.25 → |0−3.25| + |1−0.25|
        assert bn.loss().item() == pytest.approx(3.25 + 0.75)
        bn.update_history()  # history = 0.75·(4, 0) + 0.25·(1, 1) = (3.25, 0.25)
    hist = bn.state_dict()["0"]
    assert torch.allclose(hist, torch.tensor([[3.25], [0.25]]))


def test_fast_set_is_valid_and_resume_is_bit_identical(tmp_path, mnist_teacher, monkeypatch):
    cfg = _cfg()
    full = load_synthetic(synthesize(mnist_teacher, tmp_path / "full", cfg, progress=False))
    assert full.x.shape == (24, 1, 28, 28) and float(full.x.min()) >= 0 and float(full.x.max()) <= 1
    assert len({tuple(r.tolist()) for r in full.alphas}) == 3  # DSS coefficients: one draw per shard
    assert full.manifest["fast"]["warmup_batches"] == 3 and full.manifest["fast"]["warmup_seconds"] > 0
    tp = full.throughput()  # the warm-up is part of the time a user waits
    assert tp["seconds"] > sum(s["seconds"] for s in full.shard_info)
    assert tp["sample_iters_per_s"] == pytest.approx(24 * 2 / tp["seconds"])

    # killed twice: once inside the warm-up, once between a shard's write and its state save
    real_batch, calls = fast_mod.FastMethod._batch, {"n": 0}

    def dies_at(k):
        def batch(self, *a):
            calls["n"] += 1
            if calls["n"] == k:
                raise KeyboardInterrupt
            return real_batch(self, *a)
        return batch

    monkeypatch.setattr(fast_mod.FastMethod, "_batch", dies_at(2))
    with pytest.raises(KeyboardInterrupt):
        synthesize(mnist_teacher, tmp_path / "part", cfg, progress=False)
    assert torch.load(tmp_path / "part" / STATE_FILE)["done"] == 1  # one warm-up batch survived
    calls["n"] = 0
    real_committed = fast_mod.FastMethod.committed

    def committed(self, i):
        if i == 1:
            raise KeyboardInterrupt  # shard 1 is on disk, the state still says "after shard 0"
        real_committed(self, i)

    monkeypatch.setattr(fast_mod.FastMethod, "_batch", real_batch)
    monkeypatch.setattr(fast_mod.FastMethod, "committed", committed)
    with pytest.raises(KeyboardInterrupt):
        synthesize(mnist_teacher, tmp_path / "part", cfg, progress=False)
    assert shard_path(tmp_path / "part", 1).exists() and not shard_path(tmp_path / "part", 2).exists()
    monkeypatch.setattr(fast_mod.FastMethod, "committed", real_committed)
    monkeypatch.setattr(fast_mod.FastMethod, "_batch", dies_at(0))  # counts, never dies
    calls["n"] = 0
    resumed = load_synthetic(synthesize(mnist_teacher, tmp_path / "part", cfg, progress=False))
    assert calls["n"] == 2  # resumed from the saved state: only shards 1 (re-made) and 2, no warm-up again
    assert torch.equal(full.x, resumed.x) and torch.equal(full.y, resumed.y)
    assert torch.equal(full.t_logits, resumed.t_logits)


def test_meta_step_is_steps_times_the_inner_lr(mnist_teacher):
    """FastDFKD's meta Adam runs at lr_generator × k: Adam's first step moves every parameter with a
    non-negligible gradient by that lr exactly (|Δθ| = lr·|g|/(|g|+ε))."""
    from shieldkit.synthesis.base import SynthesisContext
    from shieldkit.utils.seed import make_generator

    for steps in (1, 3):
        cfg = SynthesisConfig(n_samples=8, method="fast", jitter=0,
                              fast=FastConfig(nz=16, ngf=4, steps=steps, lr_generator=1e-3, warmup_batches=0,
                                              batch_size=8))
        teacher = mnist_teacher.eval()
        ctx = SynthesisContext(teacher, None, cfg, 10, (1, 28, 28), teacher.mean, teacher.std, torch.device("cpu"))
        m = fast_mod.FastMethod(ctx)
        before = [p.detach().clone() for p in m.generator.parameters()]
        labels = torch.arange(8) % 10
        m._batch(labels, torch.ones(3), make_generator(0))
        grads = [p.grad for p in m.generator.parameters()]
        for p0, p, g in zip(before, m.generator.parameters(), grads, strict=True):
            big = g.abs() > 1e-4
            assert torch.allclose((p - p0).abs()[big], torch.full_like(p0[big], 1e-3 * steps), rtol=1e-3)


def test_fast_refuses_several_processes_and_bad_settings(tmp_path, mnist_teacher):
    with pytest.raises(InputError, match="one process") as e:
        synthesize(mnist_teacher, tmp_path / "s", _cfg(), rank=0, world_size=2, progress=False)
    assert "--synthesis dss" in e.value.hint
    assert not (tmp_path / "s").exists()  # nothing half-written
    with pytest.raises(InputError, match="unknown setting"):
        SynthesisConfig(method="fast", fast={"warmup": 3})
    with pytest.raises(InputError, match="--synthesis"):
        SynthesisConfig(method="generator")
    # the fast block cannot change a DSS set, so it is not part of a DSS run's fingerprint
    assert "fast" not in SynthesisConfig().to_dict() and SynthesisConfig(**_cfg().to_dict()) == _cfg()


FAST_YAML = """\
synthesis: {n_samples: 16, seed: 0, fast: {nz: 16, ngf: 4, steps: 2, warmup_batches: 2, batch_size: 8}}
training: {eps: 0.05, norm: linf, epochs: 1, batch_size: 8, attack_steps: 1, seed: 0}
evaluation: {n: 8, aa_n: 4, pgd_steps: 1, seed: 0}
"""


def test_cli_shield_synthesis_fast_uses_the_config_fast_block(tmp_path, mnist_teacher):
    """``shield --synthesis fast --config``: the flag picks the method, the file's ``synthesis.fast`` block its
    settings; the run's results record both and the generator state sits beside the shards."""
    import functools
    import json

    from typer.testing import CliRunner

    import shieldkit.pipeline as pipeline
    from shieldkit.cli.main import app
    from shieldkit.evaluation.basic import evaluate_basic
    from shieldkit.models import save_model

    save_model(mnist_teacher, tmp_path / "teacher")
    (tmp_path / "fast.yaml").write_text(FAST_YAML)
    with pytest.MonkeyPatch.context() as mp:  # cheap AutoAttack, as in test_cli_defaults.py
        mp.setattr(pipeline, "evaluate_basic", functools.partial(evaluate_basic, aa_attacks=["apgd-ce"]))
        r = CliRunner().invoke(app, ["shield", "--teacher", str(tmp_path / "teacher"), "--out", str(tmp_path / "run"),
                                     "--config", str(tmp_path / "fast.yaml"), "--synthesis", "fast", "--device",
                                     "cpu"], terminal_width=250)
    assert r.exit_code == 0, r.output
    syn = json.loads((tmp_path / "run" / "results.json").read_text())["synthesis"]
    assert syn["config"]["method"] == "fast" and syn["config"]["fast"]["warmup_batches"] == 2
    assert syn["n_samples"] == 16 and (tmp_path / "run" / "synthetic" / STATE_FILE).exists()


def test_quick_caps_the_generator_warmup_only_for_the_fast_path():
    from shieldkit.cli.common import apply_quick
    from shieldkit.pipeline import demo_config

    fast = demo_config()
    fast.synthesis.method = "fast"
    assert "synthesis.fast.warmup_batches 20 → 10" in apply_quick(fast) and fast.synthesis.fast.warmup_batches == 10
    dss = demo_config()
    dss.synthesis.method = "dss"
    assert not any("warmup" in c for c in apply_quick(dss)) and dss.synthesis.fast.warmup_batches == 20
