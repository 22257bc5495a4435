"""Content-addressed runs (issue 13, items 1 and 4): every output folder pins its inputs by fingerprint;
a re-run with other inputs is refused, an identical one resumes without recomputing, nothing half-written
or non-finite is kept."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from typer.testing import CliRunner

from shieldkit.cli.main import app
from shieldkit.errors import IntegrityError
from shieldkit.models import save_model
from shieldkit.pipeline import EvalConfig, ShieldConfig, ensure_teacher, shield
from shieldkit.synthesis import SynthesisConfig, load_synthetic, synthesize
from shieldkit.synthesis.store import MANIFEST, shard_path
from shieldkit.utils.fingerprint import (
    FINGERPRINTS,
    RunManifest,
    fingerprint_model,
    sha256_file,
    sha256_tensors,
)

CFG = SynthesisConfig(n_samples=20, batch_size=10, iterations=2, seed=3)


def _other_teacher(teacher):
    """Same architecture and card, different weights."""
    t2 = copy.deepcopy(teacher)
    with torch.no_grad():
        next(t2.parameters()).add_(0.01)
    return t2


def _mtimes(folder):
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


def test_sha256_tensors_is_order_independent_and_dtype_shape_aware():
    a, b = torch.arange(6.0), torch.ones(2)
    assert sha256_tensors({"a": a, "b": b}) == sha256_tensors({"b": b, "a": a})
    assert sha256_tensors({"a": a}) != sha256_tensors({"a": a.double()})
    assert sha256_tensors({"a": a}) != sha256_tensors({"a": a.view(2, 3)})


def test_model_fingerprint_same_in_memory_and_on_disk(tmp_path, mnist_teacher):
    save_model(copy.deepcopy(mnist_teacher), tmp_path / "t", test_acc=0.9)  # card.extra is not identity
    assert fingerprint_model(tmp_path / "t") == fingerprint_model(mnist_teacher)
    assert fingerprint_model(_other_teacher(mnist_teacher)) != fingerprint_model(mnist_teacher)


def test_synthesize_resume_with_other_teacher_is_refused_identical_rerun_reuses(tmp_path, mnist_teacher):
    out = tmp_path / "syn"
    synthesize(mnist_teacher, out, CFG, progress=False)
    before = _mtimes(out)
    synthesize(mnist_teacher, out, CFG, progress=False)  # identical: nothing recomputed or rewritten
    assert _mtimes(out) == before
    with pytest.raises(IntegrityError, match="another teacher") as err:
        synthesize(_other_teacher(mnist_teacher), out, CFG, progress=False)
    assert "--overwrite" in err.value.hint
    assert _mtimes(out) == before  # the refused run touched nothing
    synthesize(_other_teacher(mnist_teacher), out, CFG, progress=False, overwrite=True)
    assert _mtimes(out) != before


def test_manifest_records_per_shard_sha256_and_a_corrupt_shard_is_refused(tmp_path, mnist_teacher):
    out = tmp_path / "syn"
    synthesize(mnist_teacher, out, CFG, progress=False)
    manifest = json.loads((out / MANIFEST).read_text())
    assert [s["sha256"] for s in manifest["shards"]] == [sha256_file(shard_path(out, i)) for i in range(2)]
    p = shard_path(out, 1)
    data = bytearray(p.read_bytes())
    data[-5] ^= 0xFF  # one byte of image/logit data: still a loadable safetensors file
    p.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="corrupt"):
        load_synthetic(out)
    with pytest.raises(IntegrityError, match="corrupt"):
        synthesize(mnist_teacher, out, CFG, progress=False)


def test_nan_teacher_is_refused_and_nothing_is_written(tmp_path, mnist_teacher):
    nan = copy.deepcopy(mnist_teacher)
    with torch.no_grad():
        next(nan.parameters())[0].fill_(float("nan"))
    with pytest.raises(IntegrityError, match="NaN"):
        synthesize(nan, tmp_path / "a", CFG, progress=False)
    assert not (tmp_path / "a").exists()
    # finite weights but non-finite computation (a negative BN running variance → NaN BN loss)
    bad = copy.deepcopy(mnist_teacher)
    bn = next(m for m in bad.modules() if isinstance(m, torch.nn.BatchNorm2d))
    bn.running_var.fill_(-1.0)
    with pytest.raises(IntegrityError, match="non-finite"):
        synthesize(bad, tmp_path / "b", CFG, progress=False)
    assert not (tmp_path / "b").exists() or not list((tmp_path / "b").glob("*"))


def test_cli_train_synthetic_refuses_other_synthetic_set_or_teacher(tmp_path, mnist_teacher):
    save_model(copy.deepcopy(mnist_teacher), tmp_path / "t1")
    save_model(_other_teacher(mnist_teacher), tmp_path / "t2")
    synthesize(mnist_teacher, tmp_path / "syn1", CFG, progress=False)
    synthesize(mnist_teacher, tmp_path / "syn2", SynthesisConfig(n_samples=20, batch_size=10, iterations=2, seed=4),
               progress=False)
    runner = CliRunner()

    def run(teacher, syn, *extra):
        return runner.invoke(app, ["train-synthetic", "--teacher", str(tmp_path / teacher), "--synthetic",
                                   str(tmp_path / syn), "--out", str(tmp_path / "run"), "--epochs", "1",
                                   "--batch-size", "10", "--eps", "0.1", "--device", "cpu", *extra])

    r = run("t1", "syn1")
    assert r.exit_code == 0, r.output
    ckpt = (tmp_path / "run" / "checkpoint.pt").stat().st_mtime_ns
    r = run("t1", "syn1")  # identical: resumes from the finished checkpoint, no update recomputed
    assert r.exit_code == 0, r.output
    assert (tmp_path / "run" / "checkpoint.pt").stat().st_mtime_ns == ckpt
    r = run("t1", "syn2")
    assert r.exit_code == 2 and "another synthetic set" in r.output, r.output
    r = run("t2", "syn1")
    assert r.exit_code == 2 and "another teacher" in r.output, r.output
    assert (tmp_path / "run" / "checkpoint.pt").stat().st_mtime_ns == ckpt
    r = run("t2", "syn1", "--overwrite")
    assert r.exit_code == 0, r.output
    fps = RunManifest.read(tmp_path / "run")
    assert fps["teacher"] == fingerprint_model(tmp_path / "t2")


def test_shield_rerun_with_other_eps_refused_overwrite_recomputes(tmp_path, mnist_teacher, mnist_test):
    def cfg(eps):
        return ShieldConfig(synthesis=SynthesisConfig(n_samples=20, batch_size=10, iterations=2),
                            training=RobustTrainConfig(eps=eps, epochs=1, batch_size=10, attack_steps=1),
                            evaluation=EvalConfig(n=20, aa_n=10, pgd_steps=1))

    from shieldkit.training.robust import RobustTrainConfig

    run = tmp_path / "run"
    res = shield(mnist_teacher, run, cfg(0.1), test_data=mnist_test, progress=False, evaluate_teacher=False)
    assert res["shielded"]["eps"] == 0.1
    model_mtime = (run / "shielded.safetensors").stat().st_mtime_ns
    shard_mtime = shard_path(run / "synthetic", 0).stat().st_mtime_ns
    shield(mnist_teacher, run, cfg(0.1), test_data=mnist_test, progress=False, evaluate_teacher=False)
    assert (run / "shielded.safetensors").stat().st_mtime_ns == model_mtime  # reused, not retrained
    assert shard_path(run / "synthetic", 0).stat().st_mtime_ns == shard_mtime
    with pytest.raises(IntegrityError, match=r"training\.eps 0\.1 ≠ 0\.2"):
        shield(mnist_teacher, run, cfg(0.2), test_data=mnist_test, progress=False, evaluate_teacher=False)
    assert (run / "shielded.safetensors").stat().st_mtime_ns == model_mtime
    res = shield(mnist_teacher, run, cfg(0.2), test_data=mnist_test, progress=False, evaluate_teacher=False,
                 overwrite=True)
    assert res["shielded"]["eps"] == 0.2 and res["training"]["eps"] == 0.2
    assert json.loads((run / "results.json").read_text())["shielded"]["eps"] == 0.2
    assert (run / "shielded.safetensors").stat().st_mtime_ns != model_mtime
    assert RunManifest.read(run)["training"]["eps"] == 0.2


def test_shield_refuses_bn_less_teacher_before_writing_anything(tmp_path, mnist_teacher):
    from torch import nn

    from shieldkit.models.wrapper import NormalizedClassifier

    no_bn = NormalizedClassifier(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), copy.deepcopy(mnist_teacher.card))
    with pytest.raises(ValueError, match="BatchNorm"):
        shield(no_bn, tmp_path / "run", ShieldConfig(), progress=False)
    assert not (tmp_path / "run").exists()


def test_cli_teacher_out_existing_with_other_data_is_refused(tmp_path, mnist_teacher):
    # a cached mnist5k teacher (written without fingerprints, as older versions did)
    save_model(copy.deepcopy(mnist_teacher), tmp_path / "t", epochs=3, seed=0)
    before = _mtimes(tmp_path)
    r = CliRunner().invoke(app, ["teacher", "--data", "digits", "--out", str(tmp_path / "t"), "--device", "cpu"])
    assert r.exit_code == 2, r.output
    assert "another dataset" in r.output and "mnist5k" in r.output and "digits" in r.output, r.output
    assert _mtimes(tmp_path) == before


def test_teacher_cache_records_fingerprints_and_reuses_identical(tmp_path):
    t = ensure_teacher(tmp_path / "d", data="digits", arch="mnist_cnn", epochs=1, progress=False)
    card = json.loads((tmp_path / "d.json").read_text())
    assert set(card["extra"]["fingerprints"]) == {"dataset", "data", "arch", "epochs", "seed", "version"}
    before = _mtimes(tmp_path)
    t2 = ensure_teacher(tmp_path / "d", data="digits", arch="mnist_cnn", epochs=1, progress=False)
    assert _mtimes(tmp_path) == before and fingerprint_model(t2) == fingerprint_model(t)
    with pytest.raises(IntegrityError, match="epochs 1 ≠ 2"):
        ensure_teacher(tmp_path / "d", data="digits", arch="mnist_cnn", epochs=2, progress=False)


def test_overwrite_never_deletes_a_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(IntegrityError, match="not a shieldkit run"):
        RunManifest.check_or_init(tmp_path / "mine", {"a": 1}, overwrite=True)
    with pytest.raises(IntegrityError, match=FINGERPRINTS):
        RunManifest.check_or_init(tmp_path / "mine", {"a": 1}, overwrite=False)
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"
