"""Issue 13: an evaluation whose inputs are not valid is refused before it computes, or its audit says
"invalid" and never "Trustworthy". Each case is one of the wrong-but-plausible results the issue found."""

import json
import math

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from shieldkit.cli.main import app
from shieldkit.data import load_dataset
from shieldkit.data.base import ImageDataset
from shieldkit.errors import IncompatibleError, InputError, IntegrityError
from shieldkit.evaluation import audit as A
from shieldkit.evaluation.result import write_outputs
from shieldkit.evaluation.suite import SUITE_SPECS, evaluate
from shieldkit.models import create_model, load_model, save_model

# the quick suite cut to one APGD-CE run and a two-point iteration curve: seconds per evaluation
TINY = SUITE_SPECS["quick"].__class__(**{**SUITE_SPECS["quick"].__dict__, "aa_attacks": ("apgd-ce",),
                                         "iter_curve": (1, 5), "eps_factors": (1.0,), "pgd_steps": 5,
                                         "cw_steps": 5, "unbounded_steps": 5, "aa_rand": "never"})


@pytest.fixture(scope="module")
def test_set():
    return load_dataset("mnist5k", "test")


@pytest.fixture(scope="module")
def model(mnist_teacher):
    return mnist_teacher


class _Bare(nn.Module):
    """The teacher without its card: the pre-computation check cannot see its classes, the audit can."""

    def __init__(self, m: nn.Module):
        super().__init__()
        self.m = m

    def forward(self, x):
        return self.m(x)


def _nan_copy(m: nn.Module) -> nn.Module:
    bad = create_model("mnist_cnn", dataset="mnist5k", mean=[0.13], std=[0.31])
    bad.load_state_dict(m.state_dict())
    with torch.no_grad():
        next(bad.parameters()).view(-1)[0] = float("nan")
    return bad.eval()


# ---------------------------------------------------------------------------------- refused up front
def test_nan_weights_refused_at_load_and_by_evaluate(model, test_set, tmp_path):
    bad = _nan_copy(model)
    path = tmp_path / "nan.safetensors"
    save_model(bad, path)
    with pytest.raises(IntegrityError, match="NaN/Inf"):
        load_model(path)
    with pytest.raises(IntegrityError, match="NaN/Inf"):
        evaluate(bad, test_set, eps=0.1, n=20, suite="quick", spec=TINY, out=tmp_path / "ev")
    assert not (tmp_path / "ev").exists()  # nothing written


def test_cli_nan_model_is_one_line_and_writes_nothing(model, tmp_path):
    path = tmp_path / "nan.safetensors"
    save_model(_nan_copy(model), path)
    out = tmp_path / "ev"
    r = CliRunner().invoke(app, ["evaluate", "--model", str(path), "--data", "mnist5k", "--eps", "0.1",
                                 "--n", "20", "--out", str(out), "--device", "cpu"])
    assert r.exit_code == 2, r.output
    assert "NaN" in r.output and str(path.name) in r.output and "Traceback" not in r.output
    assert "Trustworthy" not in r.output and not out.exists()


def test_ten_class_model_on_two_class_data_is_refused(model, test_set):
    keep = test_set.y < 2
    two = ImageDataset(test_set.x[keep], test_set.y[keep], ["0", "1"], "mnist-0-vs-1")
    with pytest.raises(IncompatibleError, match="10 classes vs 2"):
        evaluate(model, two, eps=0.1, n=20, suite="quick", spec=TINY)


def test_single_class_imagefolder_is_refused(tmp_path):
    from PIL import Image

    for split in ("train", "test"):
        d = tmp_path / split / "cat"
        d.mkdir(parents=True)
        for i in range(3):
            Image.fromarray((torch.rand(8, 8, 3) * 255).byte().numpy()).save(d / f"{i}.png")
    with pytest.raises(IncompatibleError, match="at least two classes"):
        load_dataset("imagefolder", "train", root=tmp_path)


@pytest.mark.parametrize(("eps", "norm", "msg"), [(2.0, "linf", "≤ 1"), (0.0, "linf", "> 0"),
                                                 (-0.1, "l2", "> 0"), (29.0, "l2", "√d = 28")])
def test_eps_outside_the_threat_model_is_refused(model, test_set, eps, norm, msg):
    with pytest.raises(InputError, match=msg):
        evaluate(model, test_set, eps=eps, norm=norm, n=20, suite="quick", spec=TINY)


def test_evaluate_into_a_file_is_refused_before_any_attack(model, test_set, tmp_path):
    f = tmp_path / "results.txt"
    f.write_text("keep me")
    with pytest.raises(InputError, match="file"):
        evaluate(model, test_set, eps=0.1, n=20, suite="quick", spec=TINY, out=f)
    assert f.read_text() == "keep me"


# ------------------------------------------------------------------------ the audit says "invalid"
def test_too_few_points_is_invalid_never_trustworthy(model, test_set):
    res = evaluate(model, test_set, eps=0.2, n=8, suite="quick", spec=TINY, seed=0)
    v = {c["name"]: c["verdict"] for c in res["audit"]}
    assert v["sample_size"] == "invalid"
    assert res["valid"] is False and res["trustworthy"] is False
    assert res["headline"].startswith("INVALID") and "Trustworthy" not in res["headline"]


def test_chance_accuracy_and_class_count_mismatch_are_invalid(model, test_set):
    """A model with no card passes the pre-check; the audit still sees that its 10 outputs do not fit a
    2-class dataset and that it sits at chance there (labels it was not trained for)."""
    keep = test_set.y >= 8  # digits 8/9 relabelled 0/1: the 10-class teacher predicts 8/9, never 0/1
    two = ImageDataset(test_set.x[keep], test_set.y[keep] - 8, ["8", "9"], "mnist-8-vs-9")
    res = evaluate(_Bare(model).eval(), two, eps=0.2, n=24, suite="quick", spec=TINY, seed=0)
    v = {c["name"]: c["verdict"] for c in res["audit"]}
    assert v["class_count"] == "invalid" and v["clean_accuracy"] == "invalid"
    names = [c["name"] for c in res["audit"][:5]]  # validity checks come first
    assert names == ["finite_outputs", "class_count", "eps_range", "sample_size", "clean_accuracy"]
    assert not res["trustworthy"] and res["headline"].startswith("INVALID")


@pytest.fixture(scope="module")
def valid_res(model, test_set):
    return evaluate(model, test_set, eps=0.2, n=24, suite="quick", spec=TINY, seed=0)


def test_valid_evaluation_passes_every_validity_check(valid_res):
    res = valid_res
    v = {c["name"]: c["verdict"] for c in res["audit"]}
    for name in ("finite_outputs", "class_count", "eps_range", "sample_size", "clean_accuracy"):
        assert v[name] == "pass", (name, res["audit"])
    assert res["valid"] is True and not res["headline"].startswith("INVALID")


def test_validity_checks_on_hand_computed_cases():
    # clean accuracy: C = 10, n = 100 → chance 0.10 + tolerance max(0.02, 2/100) = 0.12
    assert A.check_clean_accuracy(0.12, 10, 100)["verdict"] == "invalid"
    assert A.check_clean_accuracy(0.13, 10, 100)["verdict"] == "pass"
    # n = 20 → tolerance 2/20 = 0.10; 2 classes → bar 0.60
    assert A.check_clean_accuracy(0.60, 2, 20)["verdict"] == "invalid"
    assert A.check_clean_accuracy(0.65, 2, 20)["verdict"] == "pass"
    assert A.check_sample_size(15)["verdict"] == "invalid" and A.check_sample_size(16)["verdict"] == "pass"
    assert A.check_eps_range(1.0, "linf", 784)["verdict"] == "pass"
    assert A.check_eps_range(1.01, "linf", 784)["verdict"] == "invalid"
    assert A.check_eps_range(28.0, "l2", 784)["verdict"] == "pass"  # √784 = 28
    assert A.check_eps_range(28.1, "l2", 784)["verdict"] == "invalid"
    assert A.check_eps_range(math.nan, "linf", 784)["verdict"] == "invalid"
    assert A.check_class_count(10, 2)["verdict"] == "invalid" and A.check_class_count(2, 2)["verdict"] == "pass"


def test_non_finite_logits_and_gradients_are_invalid():
    class NaNNet(nn.Module):
        def forward(self, x):
            return x.flatten(1)[:, :3] * float("nan")

    x = torch.rand(4, 1, 4, 4)
    assert A.check_finite_outputs(NaNNet(), x)["verdict"] == "invalid"
    assert A.check_softmax(NaNNet(), x)["verdict"] == "invalid"  # not "pass (min nan, max nan)"
    stats = A.input_gradient_stats(NaNNet(), x, torch.zeros(4, dtype=torch.long))
    assert A.check_gradients(stats)["verdict"] == "invalid"


def test_one_invalid_check_overrides_every_pass():
    audit = [A.check("a", A.PASS, "ok"), A.check_sample_size(4), A.check("b", A.PASS, "ok")]
    trusted, head = A.headline(audit, 0.9, [0.8, 0.95])
    assert not trusted and head.startswith("INVALID") and "sample_size" in head
    trusted, head = A.headline([A.check("a", A.PASS, "ok")], 0.9, [0.8, 0.95])
    assert trusted and not head.startswith("INVALID")


# ------------------------------------------------------------------------------ nothing stale left
def test_new_evaluation_removes_stale_artefacts_and_keeps_other_files(valid_res, tmp_path):
    out = tmp_path / "ev"
    res = valid_res
    write_outputs(res, {"eps_curve": b"\x89PNG-old", "iteration_curve": b"\x89PNG-old"}, out)
    assert (out / "eps_curve.png").exists()
    (out / "notes.txt").write_text("mine")
    write_outputs(res, {"iteration_curve": b"\x89PNG-new"}, out)
    assert not (out / "eps_curve.png").exists()  # stale plot from the first evaluation: gone
    assert (out / "iteration_curve.png").read_bytes() == b"\x89PNG-new"
    assert (out / "notes.txt").read_text() == "mine"
    assert json.loads((out / "evaluation.json").read_text())["artefacts"] == ["iteration_curve.png",
                                                                             "evaluation.json", "report.html"]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no temporary sibling left


def test_evaluation_records_fingerprints_and_says_what_it_replaced(valid_res, tmp_path):
    out = tmp_path / "ev"
    write_outputs(valid_res, {}, out)
    first = json.loads((out / "evaluation.json").read_text())
    fp = first["fingerprints"]
    assert set(fp) == {"model", "data", "evaluation", "version"} and len(fp["model"]) == 64
    assert fp["data"]["n"] == 24 and fp["evaluation"]["eps"] == 0.2 and first["replaces"] is None
    write_outputs(valid_res, {}, out)
    assert json.loads((out / "evaluation.json").read_text())["replaces"] == "an evaluation of the same inputs"
    other = {**valid_res, "fingerprints": {**fp, "model": "0" * 64}}
    write_outputs(other, {}, out)
    assert "other inputs (model changed)" in json.loads((out / "evaluation.json").read_text())["replaces"]
