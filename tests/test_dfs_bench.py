"""`shieldkit bench dfs`: the CLI finds the benchmark script; merging parts renders the claims table."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from shieldkit.cli.bench import _load
from shieldkit.cli.main import app


def test_bench_dfs_help_and_merge(tmp_path):
    r = CliRunner().invoke(app, ["bench", "dfs", "--help"])
    assert r.exit_code == 0 and "DataFreeShield" in r.output
    assert callable(_load("dfs_claims.py").main)
    row = {"table": "1", "label": "DataFreeShield", "clean": 0.9, "pgd": 0.5, "aa": 0.4, "train_seconds": 3}
    part = {
        "settings": {
            "dataset": "mnist5k",
            "arch": "mnist_cnn",
            "eps": 0.2,
            "eval_n": 500,
            "aa_n": 100,
            "aa_table1": "standard",
            "aa_other": "apgd",
            "n_synth": 10,
            "synth_iterations": 1,
            "train_epochs": 1,
            "batch_size": 5,
            "train_attack_steps": 1,
            "lr": 0.01,
            "grad_refine_B": 2,
            "seed": 0,
        },
        "rows": {"ours": row},
    }
    (tmp_path / "dfs_claims.main.json").write_text(json.dumps(part))
    r = CliRunner().invoke(app, ["bench", "dfs", "--merge-only", "--results", str(tmp_path)])
    assert r.exit_code == 0, r.output
    md = (tmp_path / "dfs_claims.md").read_text()
    assert "| DataFreeShield | 90.0 | 50.0 | 40.0 |" in md
    assert "(not run)" in md  # missing rows are visible, not silently dropped
    assert (
        json.loads((tmp_path / "dfs_claims.json").read_text())["parts"]["main"]["rows"]["ours"]["aa"] == 0.4
    )
