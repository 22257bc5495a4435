"""Label-free mode (issue 15 item 4): `shield --no-eval`, and automatically when no dataset is known for the
model, shields the model and reports on *held-out* synthetic samples (another seed than the training set,
labelled by the teacher), labelled everywhere "synthetic — not a claim about real data"; the card's real-data
and RobustBench accuracies stay null and nothing says "trustworthy"."""

from __future__ import annotations

import copy
import functools
import json

import pytest
import torch
from typer.testing import CliRunner

import shieldkit.pipeline as pipeline
from shieldkit.cli.main import app
from shieldkit.errors import InputError
from shieldkit.evaluation.basic import evaluate_basic
from shieldkit.models import save_model
from shieldkit.pipeline import SYNTHETIC_LABEL, resolve_eval_data
from shieldkit.synthesis import load_synthetic

TINY = """\
synthesis: {n_samples: 40, batch_size: 20, iterations: 5, seed: 0}
training: {eps: 0.1, norm: linf, epochs: 1, batch_size: 20, attack_steps: 2, seed: 0}
evaluation: {n: 32, aa_n: 16, pgd_steps: 5, seed: 0}
"""
CHEAP_AA = functools.partial(evaluate_basic, aa_attacks=["apgd-ce"])  # as in test_shield_report.py


def _run(tmp, teacher, *extra: str):
    save_model(teacher, tmp / "teacher")
    (tmp / "tiny.yaml").write_text(TINY)
    out = tmp / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pipeline, "evaluate_basic", CHEAP_AA)
        r = CliRunner().invoke(app, ["shield", "--teacher", str(tmp / "teacher"), "--out", str(out), "--config",
                                     str(tmp / "tiny.yaml"), "--device", "cpu", *extra], terminal_width=250)
    assert r.exit_code == 0, r.output
    return out, r.output


@pytest.fixture(scope="module")
def no_eval_run(tmp_path_factory, mnist_teacher):
    """The mnist teacher knows its dataset: --no-eval asks for the label-free mode explicitly."""
    return _run(tmp_path_factory.mktemp("label_free"), mnist_teacher, "--no-eval")


@pytest.fixture(scope="module")
def private_teacher(mnist_teacher):
    """A teacher whose card names a dataset shieldkit has no loader for (a user's own data)."""
    t = copy.deepcopy(mnist_teacher)
    t.card.dataset = "acme-private-scans"
    return t


def _check_label_free(out, output: str) -> None:
    """Everything a label-free run leaves is labelled synthetic and claims nothing about real data."""
    results = json.loads((out / "results.json").read_text())
    card = json.loads((out / "model_card.json").read_text())
    page = (out / "report.html").read_text()

    # console: the mode, the label, the table title; never "Trustworthy"
    assert "label-free mode" in output and "not a claim about real data" in output
    assert "SYNTHETIC" in output and "real test images" not in output
    assert "Trustworthy" not in output
    assert str(out / "report.html") in output and str(out / "model_card.json") in output

    # results.json: no real-data row; the synthetic figures under their own key, labelled
    assert "teacher" not in results and "shielded" not in results
    syn = results["synthetic_eval"]
    assert syn["label"] == SYNTHETIC_LABEL == "synthetic — not a claim about real data"
    assert results["trustworthy"] is False and results["valid"] is False
    assert results["headline"] == syn["headline"] == syn["shielded"]["headline"]
    for row in ("teacher", "shielded"):
        r = syn[row]
        assert r["n"] == 32 and r["aa_n"] == 16 and r["eps"] == 0.1 and r["synthetic"] is True
        assert r["headline"].startswith("SYNTHETIC — not a claim about real data:")
        assert r["trustworthy"] is False and "audit_trustworthy" in r
        verdicts = {c["verdict"] for c in r["audit"]}
        assert (verdicts == {"pass"}) == (f"passes all {len(r['audit'])} audit checks" in r["headline"]), r["headline"]
        assert (r["audit_trustworthy"] is True) == (not verdicts & {"invalid", "fail"})
        assert {c["name"] for c in r["audit"]} >= {"finite_outputs", "clean_accuracy", "single_step_vs_iterative"}
    # ground truth = the teacher's predictions: the teacher is right on every held-out point
    assert syn["teacher"]["clean_acc"] == 1.0 and all(syn["teacher"]["per_point"]["clean_correct"])
    assert 0.0 <= syn["shielded"]["clean_acc"] <= 1.0
    assert "held-out synthesis" in results["seconds"]

    # held out: another seed than the training set, and no training image reused
    train, held = load_synthetic(out / "synthetic"), load_synthetic(out / syn["data"]["folder"])
    assert len(held) == 32 and syn["data"]["seed"] != syn["data"]["training_seed"] == 0
    assert held.manifest["config"]["seed"] == syn["data"]["seed"]
    dist = torch.cdist(held.x.flatten(1), train.x.flatten(1))
    assert float(dist.min()) > 1e-3, "a held-out sample equals a training sample"

    # model card: no real-data claim anywhere (RobustBench accuracies null), the synthetic figures labelled
    assert card["evaluation"] is None and card["audit"] is None
    assert card["trustworthy"] is False and card["valid"] is False and card["real_data_evaluated"] is False
    rb = card["robustbench"]
    assert rb["clean_acc"] is None and rb["autoattack_acc"] is None and rb["unreliable"] is True
    assert rb["threat_model"] == "Linf" and rb["eps"] == "0.1" and rb["additional_data"] is False
    assert "not evaluated on real data" in rb["footnote"]
    se = card["synthetic_evaluation"]
    assert se["label"] == SYNTHETIC_LABEL and se["n"] == 32
    assert se["shielded"]["clean"]["acc"] == syn["shielded"]["clean_acc"]
    assert se["teacher"]["autoattack"]["acc"] == syn["teacher"]["autoattack_acc"]
    assert card["headline"].startswith("SYNTHETIC — not a claim about real data")
    assert "NOT evaluated on real data" in card["limitations"][0]
    assert "Trustworthy" not in json.dumps(card) and "trustworthy" not in card["headline"].lower()

    # report.html: the label on the headline, the section, the chart; the audit tables; no trust claim
    assert "Not evaluated on real data" in page and page.count(SYNTHETIC_LABEL) >= 3
    assert "Held-out synthetic samples" in page and "held-out SYNTHETIC samples (not real data)" in page
    assert syn["shielded"]["headline"] in page and syn["teacher"]["headline"] in page
    assert "<td>single_step_vs_iterative</td>" in page
    assert "Trustworthy" not in page and "real test images" not in page
    assert page.count("<img ") >= 2  # accuracy chart + synthetic training samples


def test_no_eval_reports_on_heldout_synthetic_only(no_eval_run):
    _check_label_free(*no_eval_run)
    assert "label-free mode (--no-eval)" in no_eval_run[1]


def test_label_free_automatically_without_known_dataset(tmp_path, private_teacher):
    out, output = _run(tmp_path, private_teacher)  # no --data, no --no-eval
    assert "no --data and the teacher's card names dataset 'acme-private-scans'" in output
    _check_label_free(out, output)


def test_no_eval_with_data_is_refused(tmp_path, mnist_teacher):
    save_model(mnist_teacher, tmp_path / "teacher")
    r = CliRunner().invoke(app, ["shield", "--teacher", str(tmp_path / "teacher"), "--out", str(tmp_path / "run"),
                                 "--no-eval", "--data", "mnist5k", "--quick", "--device", "cpu"])
    assert r.exit_code == 2 and "--no-eval" in r.output, r.output
    assert not (tmp_path / "run").exists()


def test_resolve_eval_data(mnist_teacher, private_teacher):
    test, why = resolve_eval_data(mnist_teacher, None, None)
    assert why is None and test.name.startswith("mnist5k") and len(test) > 0
    assert resolve_eval_data(private_teacher, None, None) == (None, "no --data and the teacher's card names "
                                                                    "dataset 'acme-private-scans', which shieldkit "
                                                                    "has no loader for")
    nameless = copy.deepcopy(mnist_teacher)
    nameless.card.dataset = ""
    assert resolve_eval_data(nameless, None, None)[0] is None
    assert resolve_eval_data(private_teacher, "mnist5k", None)[1] is None  # --data wins over the card
    # a known dataset that cannot be read is an error, never a silent switch to synthetic figures
    local = copy.deepcopy(mnist_teacher)
    local.card.dataset = "cifar10"
    with pytest.raises(InputError, match="--data-root"):
        resolve_eval_data(local, None, None)
    with pytest.raises(InputError, match="--no-eval"):
        resolve_eval_data(mnist_teacher, "mnist5k", None, no_eval=True)
