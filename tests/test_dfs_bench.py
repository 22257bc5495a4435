"""``benchmarks/dfs_claims.py``: the script loads and merging parts renders the claims table (the package
itself never runs ``benchmarks/``; the script is run directly)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "dfs_claims.py"


def _load():  # noqa: ANN202 - the benchmark script as a module
    spec = importlib.util.spec_from_file_location("dfs_claims", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def test_bench_dfs_help_and_merge(tmp_path):
    mod = _load()
    assert callable(mod.main) and "DataFreeShield" in (mod.__doc__ or "")
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
    assert mod.main(["--part", "main", "--merge-only", "--results", str(tmp_path)]) == 0
    md = (tmp_path / "dfs_claims.md").read_text()
    assert "| DataFreeShield | 90.0 | 50.0 | 40.0 |" in md
    assert "(not run)" in md  # missing rows are visible, not silently dropped
    assert (
        json.loads((tmp_path / "dfs_claims.json").read_text())["parts"]["main"]["rows"]["ours"]["aa"] == 0.4
    )
