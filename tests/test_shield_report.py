"""`shieldkit shield` leaves report.html and model_card.json for a deployer (issue 15 item 3): the card pins
the shielded weights by sha256 and repeats results.json's numbers; the report shows the audit; an evaluation
on too few points is INVALID and never "Trustworthy"."""

from __future__ import annotations

import base64
import functools
import hashlib
import json
from html.parser import HTMLParser

import pytest
from typer.testing import CliRunner

import shieldkit.pipeline as pipeline
from shieldkit.cli.main import app
from shieldkit.evaluation.basic import evaluate_basic
from shieldkit.models import save_model
from shieldkit.pipeline import EvalConfig, ShieldConfig, shield
from shieldkit.synthesis import SynthesisConfig
from shieldkit.training.robust import RobustTrainConfig
from shieldkit.utils.fingerprint import fingerprint_model

TINY = """\
synthesis: {n_samples: 40, batch_size: 20, iterations: 5, seed: 0}
training: {eps: 0.1, norm: linf, epochs: 1, batch_size: 20, attack_steps: 2, seed: 0}
evaluation: {n: 32, aa_n: 16, pgd_steps: 5, seed: 0}
"""


# AutoAttack restricted to APGD-CE (labelled "AutoAttack-standard[apgd-ce]" in results and card): the full
# standard suite spends minutes in Square/FAB on the few surviving points, and the report does not depend on it
CHEAP_AA = functools.partial(evaluate_basic, aa_attacks=["apgd-ce"])


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.srcs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.srcs.append(dict(attrs).get("src") or "")


def _png_images(page: str) -> list[bytes]:
    p = _Images()
    p.feed(page)
    prefix = "data:image/png;base64,"
    assert p.srcs and all(s.startswith(prefix) for s in p.srcs), [s[:40] for s in p.srcs]
    return [base64.b64decode(s[len(prefix):], validate=True) for s in p.srcs]


def _trust_rule(row: dict) -> None:
    """'Trustworthy' only when no check is INVALID or FAIL; an INVALID check makes the headline INVALID."""
    verdicts = {c["verdict"] for c in row["audit"]}
    assert row["headline"].startswith("INVALID —") == ("invalid" in verdicts)
    assert ("Trustworthy" in row["headline"]) == (not verdicts & {"invalid", "fail"}) == row["trustworthy"]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, mnist_teacher):
    tmp = tmp_path_factory.mktemp("shield_cli")
    save_model(mnist_teacher, tmp / "teacher")
    (tmp / "tiny.yaml").write_text(TINY)
    out = tmp / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pipeline, "evaluate_basic", CHEAP_AA)
        r = CliRunner().invoke(app, ["shield", "--teacher", str(tmp / "teacher"), "--out", str(out),
                                     "--config", str(tmp / "tiny.yaml"), "--device", "cpu"], terminal_width=200)
    assert r.exit_code == 0, r.output
    return tmp, out, r.output


def test_shield_cli_writes_report_and_card(cli_run, mnist_teacher):
    tmp, out, output = cli_run
    report, card_path, results_path = out / "report.html", out / "model_card.json", out / "results.json"
    weights = out / "shielded.safetensors"
    for p in (report, card_path, results_path, weights):
        assert p.is_file(), p
        assert str(p) in output, f"{p} not printed"
    card = json.loads(card_path.read_text())
    saved = json.loads(results_path.read_text())

    # the card pins the weights actually written, and the teacher it was made from
    assert card["model"]["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert card["teacher"]["weights_sha256"] == hashlib.sha256((tmp / "teacher.safetensors").read_bytes()).hexdigest()
    assert card["teacher"]["fingerprint"] == fingerprint_model(mnist_teacher)
    assert card["model"]["fingerprint"] == fingerprint_model(out / "shielded")

    # what a deployer needs
    assert card["dataset"]["name"] == "mnist5k" and card["dataset"]["num_classes"] == 10
    assert card["dataset"]["input_shape"] == [1, 28, 28]
    assert card["dataset"]["normalisation"]["mean"] == mnist_teacher.card.mean
    assert card["threat_model"] == {"norm": "linf", "eps": 0.1, "name": "Linf"}
    assert card["shieldkit_version"] and card["created_utc"] and card["intended_use"] and card["limitations"]

    # the card's accuracies are results.json's
    ev = card["evaluation"]
    assert ev["n"] == saved["shielded"]["n"] == 32 and ev["aa_n"] == 16 and ev["seed"] == 0
    for row in ("teacher", "shielded"):
        r, c = saved[row], ev[row]
        assert c["clean"]["acc"] == r["clean_acc"] and c["clean"]["ci"] == r["clean"]["ci"]
        assert c["pgd"]["acc"] == r["pgd_acc"] and c["pgd"]["ci"] == r["pgd"]["ci"]
        assert c["pgd"]["attack"] == "PGD-5" and c["pgd"]["n"] == 32
        assert c["autoattack"]["acc"] == r["autoattack_acc"] and c["autoattack"]["n"] == 16
        assert c["autoattack"]["attack"] == r["autoattack"]["attack"] == "AutoAttack-standard[apgd-ce]"
        assert c["robust"]["acc"] == r["robust"]["acc"] <= min(r["pgd_acc"], r["autoattack_acc"]) + 1e-9
        _trust_rule(r)

    # audit in results.json and on the card; 32 / 16 points and a real teacher: a valid evaluation
    s = saved["shielded"]
    assert saved["headline"] == s["headline"] == card["headline"]
    assert card["valid"] is s["valid"] is True and card["trustworthy"] is s["trustworthy"]
    names = [c["name"] for c in s["audit"]]
    assert set(names) == {"finite_outputs", "class_count", "eps_range", "sample_size", "sample_size_autoattack",
                          "clean_accuracy", "eval_mode", "logits_not_softmax", "randomness", "input_gradients",
                          "single_step_vs_iterative", "eps_monotone"}
    assert [c["name"] for c in card["audit"]["checks"]] == names
    assert "audit" in saved["seconds"]

    # the report: headline, every check name, the tables, embedded PNGs only
    page = report.read_text()
    assert s["headline"] in page and saved["teacher"]["headline"] in page
    for name in names:
        assert f"<td>{name}</td>" in page, name
    assert card["model"]["weights_sha256"] in page
    assert "{'" not in page, "provenance rendered as a Python dict repr"
    pngs = _png_images(page)
    assert len(pngs) >= 3  # accuracy chart + accuracy-vs-ε curve + synthetic sample grid
    assert "Accuracy vs ε, teacher vs shielded" in page

    # the accuracy-vs-ε curve: clean at ε = 0 (the curve subset is all 32 points here), then ε·(0.5, 1, 1.5, 2)
    for row in ("teacher", "shielded"):
        pts = saved[row]["curves"]["eps"]
        assert [round(p["eps"], 6) for p in pts] == [0.0, 0.05, 0.1, 0.15, 0.2]
        assert pts[0]["acc"] == saved[row]["clean_acc"] and all(p["n"] == 32 for p in pts)
        assert saved[row]["curves"]["eps_attack"] == "PGD-10"
    assert all(b.startswith(b"\x89PNG\r\n\x1a\n") for b in pngs)
    assert "http://" not in page and "https://" not in page  # self-contained


def test_too_few_points_is_invalid_never_trustworthy(tmp_path, mnist_teacher, mnist_test, monkeypatch):
    monkeypatch.setattr(pipeline, "evaluate_basic", CHEAP_AA)
    cfg = ShieldConfig(synthesis=SynthesisConfig(n_samples=40, batch_size=20, iterations=5),
                       training=RobustTrainConfig(eps=0.1, epochs=1, batch_size=20, attack_steps=2),
                       evaluation=EvalConfig(n=10, aa_n=5, pgd_steps=2))
    run = tmp_path / "run"
    res = shield(mnist_teacher, run, cfg, test_data=mnist_test, progress=False, report=True)
    card = json.loads((run / "model_card.json").read_text())
    saved = json.loads((run / "results.json").read_text())
    for row in ("teacher", "shielded"):
        verdicts = {c["name"]: c["verdict"] for c in saved[row]["audit"]}
        assert verdicts["sample_size"] == "invalid" and verdicts["sample_size_autoattack"] == "invalid"
        assert saved[row]["headline"].startswith("INVALID —")
        _trust_rule(saved[row])
    assert res["headline"] == card["headline"] == card["audit"]["headline"] == saved["shielded"]["headline"]
    assert card["headline"].startswith("INVALID —")
    assert card["trustworthy"] is False and card["valid"] is False
    assert any("did NOT pass" in line for line in card["limitations"])
    page = (run / "report.html").read_text()
    assert card["headline"] in page and "INVALID" in page
    assert "Trustworthy" not in page
    assert card["model"]["weights_sha256"] == hashlib.sha256((run / "shielded.safetensors").read_bytes()).hexdigest()


def test_api_rerun_without_report_leaves_no_stale_card(cli_run, mnist_teacher, monkeypatch):
    """A later `shield()` call without report=True rewrites results.json: the card and report of the CLI run
    would then describe other numbers, so they are removed (run last: it changes the module's run folder)."""
    from shieldkit.data import load_dataset

    tmp, out, _ = cli_run
    monkeypatch.setattr(pipeline, "evaluate_basic", CHEAP_AA)
    cfg = ShieldConfig(SynthesisConfig(n_samples=40, batch_size=20, iterations=5, seed=0),
                       RobustTrainConfig(eps=0.1, norm="linf", epochs=1, batch_size=20, attack_steps=2, seed=0),
                       EvalConfig(n=32, aa_n=16, pgd_steps=5, seed=0))
    shield(mnist_teacher, out, cfg, test_data=load_dataset("mnist5k", "test"), device="cpu", progress=False)
    assert (out / "results.json").exists()
    assert not (out / "model_card.json").exists() and not (out / "report.html").exists()


def test_eps_curve_leaves_the_headline_attacks_alone(mnist_teacher, mnist_test):
    """The curve runs after the headline attacks with generators of its own: every per-point result and
    accuracy of clean / PGD is the same with and without it, and only the curve run has ``curves``."""
    kw = dict(eps=0.1, n=40, seed=1, pgd_steps=3, autoattack=False)
    plain = evaluate_basic(mnist_teacher, mnist_test, **kw)
    curved = evaluate_basic(mnist_teacher, mnist_test, **kw, eps_curve=(2.0, 0.5), curve_n=24, curve_steps=3)
    assert plain["curves"] == {}
    assert curved["per_point"] == plain["per_point"] and curved["pgd_acc"] == plain["pgd_acc"]
    pts = curved["curves"]["eps"]
    assert [p["eps"] for p in pts] == [0.0, 0.05, 0.2] and all(p["n"] == 24 for p in pts)
    assert pts[-1]["acc"] <= pts[0]["acc"]  # the ε = 0 point counts the clean-correct; attacks only remove points
