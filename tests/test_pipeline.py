"""End-to-end: CLI commands and the shield pipeline on tiny settings with the real embedded data."""

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from shieldkit.cli.main import app
from shieldkit.models import load_model, save_model
from shieldkit.pipeline import EvalConfig, ShieldConfig, shield
from shieldkit.reporting.demo_report import write_report
from shieldkit.synthesis import SynthesisConfig
from shieldkit.training.robust import RobustTrainConfig, eps_schedule


def test_eps_warmup_schedule():
    assert eps_schedule(0, 10, 0.0) == 1.0
    assert [round(eps_schedule(s, 10, 0.5), 2) for s in range(6)] == [0.2, 0.4, 0.6, 0.8, 1.0, 1.0]


def _snapshot(run: Path) -> dict[str, tuple[bytes, int]]:
    """Bytes and mtime of every artefact a run folder holds (``results.json`` is rewritten on purpose)."""
    return {str(p.relative_to(run)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(run.rglob("*")) if p.is_file() and p.name != "results.json"}


def test_shield_pipeline_writes_results_and_report(tmp_path, mnist_teacher, mnist_test, monkeypatch):
    import shieldkit.pipeline as pipeline
    import shieldkit.synthesis.dss as dss

    cfg = ShieldConfig(synthesis=SynthesisConfig(n_samples=40, batch_size=20, iterations=5),
                       training=RobustTrainConfig(eps=0.1, epochs=1, batch_size=20, attack_steps=2),
                       evaluation=EvalConfig(n=30, aa_n=10, pgd_steps=5))
    res = shield(mnist_teacher, tmp_path / "run", cfg, test_data=mnist_test, progress=False)
    for row in ("teacher", "shielded"):
        r = res[row]
        assert {"clean_acc", "pgd_acc", "autoattack_acc", "n", "norm", "eps"} <= set(r)
        assert r["n"] == 30 and r["aa_n"] == 10 and r["eps"] == 0.1 and r["norm"] == "linf"
        lo, hi = r["clean"]["ci"]
        assert lo <= r["clean_acc"] <= hi
    # the undefended teacher falls to PGD-5 at ε = 0.1 (measured: 96.7 % clean → 3.3 %)
    assert res["teacher"]["clean_acc"] > 0.8
    assert res["teacher"]["pgd_acc"] < res["teacher"]["clean_acc"] - 0.5
    # each row is the model it names, on the same 30 seeded points: an independent forward pass of the
    # teacher and of the saved shielded model reproduces the recorded per-point clean correctness
    sub = mnist_test.subset(30, seed=0)
    shielded = load_model(tmp_path / "run" / "shielded").eval()
    with torch.no_grad():
        for row, model in (("teacher", mnist_teacher), ("shielded", shielded)):
            ok = (model(sub.x).argmax(1) == sub.y).int().tolist()
            assert res[row]["per_point"]["clean_correct"] == ok, row
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["synthesis"]["n_samples"] == 40 and saved["synthesis"]["samples_per_s"] > 0
    page = write_report(res, tmp_path / "report.html")
    html = page.read_text()
    assert "DataFreeShield" in html and "<table>" in html
    # second call resumes: nothing is recomputed (synthesis and training would raise), no artefact is
    # rewritten (same bytes, same mtime), and the same shielded model is evaluated
    before = _snapshot(tmp_path / "run")

    def recomputed(*args, **kwargs):
        raise AssertionError("resumed run recomputed a completed stage")

    monkeypatch.setattr(dss, "synthesize_batch", recomputed)
    monkeypatch.setattr(pipeline, "train_robust", recomputed)
    res2 = shield(mnist_teacher, tmp_path / "run", cfg, test_data=mnist_test, progress=False, evaluate_teacher=False)
    assert _snapshot(tmp_path / "run") == before
    assert "teacher" not in res2
    assert res2["shielded"]["per_point"] == res["shielded"]["per_point"]


def test_cli_synthesize_and_train_synthetic(tmp_path, mnist_teacher):
    save_model(mnist_teacher, tmp_path / "teacher")
    runner = CliRunner()
    r = runner.invoke(app, ["synthesize", "--teacher", str(tmp_path / "teacher"), "--out", str(tmp_path / "syn"),
                            "--n-samples", "20", "--iterations", "3", "--batch-size", "10", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "20 samples" in r.output
    args = ["train-synthetic", "--teacher", str(tmp_path / "teacher"), "--synthetic", str(tmp_path / "syn"),
            "--out", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "10", "--eps", "8/255", "--device", "cpu"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert (tmp_path / "run" / "model.safetensors").exists()


def test_cli_missing_teacher_is_a_clear_error(tmp_path):
    r = CliRunner().invoke(app, ["synthesize", "--teacher", str(tmp_path / "none"), "--out", str(tmp_path / "s")])
    assert r.exit_code == 2, r.output
    assert "--teacher" in r.output and "sidecar" in r.output and "Traceback" not in r.output


@pytest.mark.parametrize("eps", ["8/255", "0.25"])
def test_parse_eps(eps):
    from shieldkit.cli.common import parse_eps

    assert parse_eps(eps) == pytest.approx(eval(eps))


def test_autoattack_subset_is_class_stratified(mnist_teacher, mnist_test):
    """mnist5k is stored sorted by class: the AutoAttack subset must not be 'the first aa_n' points."""
    from shieldkit.evaluation.basic import evaluate_basic, stratified_positions

    idx = stratified_positions(mnist_test.y, 50, seed=0)
    assert torch.equal(mnist_test.y[idx].bincount(), torch.full((10,), 5))
    r = evaluate_basic(mnist_teacher, mnist_test, eps=0.1, n=100, aa_n=20, pgd_steps=2, seed=0)
    assert len(set(mnist_test.subset(100, seed=0).y[r["per_point"]["autoattack_index"]].tolist())) == 10
