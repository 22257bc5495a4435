"""Issue 13: every bad input is refused before any computation, by the one top-level handler, in at most
three lines that name the flag/file and the fix, with exit code 2 and nothing half-written in --out."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from shieldkit.cli.main import app

CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Real (untrained, never-trained: instant) model files plus broken ones."""
    from shieldkit.models import create_model, save_model

    d = tmp_path_factory.mktemp("inputs")
    m = create_model("mnist_cnn", dataset="mnist5k", mean=[0.13], std=[0.31])
    save_model(m, d / "model")
    save_model(create_model("mnist_cnn", in_channels=3, dataset="mnist5k"), d / "rgb")  # 3-channel model
    data = (d / "model.safetensors").read_bytes()
    (d / "trunc.safetensors").write_bytes(data[: len(data) // 3])
    (d / "trunc.json").write_bytes((d / "model.json").read_bytes())
    (d / "random.pt").write_bytes(os.urandom(512))
    (d / "afile.txt").write_text("I am a file\n")
    (d / "syn").mkdir()
    (d / "bad_syntax.yaml").write_text("epochs: 3\nseed: [1, 2\n")
    (d / "bad_key.yaml").write_text("epoch: 3\n")
    (d / "bad_section.yaml").write_text("synthesiss:\n  n_samples: 10\n")
    (d / "bad_section_key.yaml").write_text("synthesis:\n  n_sample: 10\n")
    return {"model": d / "model", "rgb": d / "rgb", "trunc": d / "trunc.safetensors", "pt": d / "random.pt",
            "file": d / "afile.txt", "syn": d / "syn", "missing": d / "does-not-exist",
            "cfg_syntax": d / "bad_syntax.yaml", "cfg_key": d / "bad_key.yaml",
            "cfg_section": d / "bad_section.yaml", "cfg_section_key": d / "bad_section_key.yaml"}


M, T = "{model}", "{trunc}"
EVAL = ["evaluate", "--model", M, "--data", "mnist5k", "--out", "{out}"]
SQA = ["sqa", "--model", M, "--data", "mnist5k", "--out", "{out}/res.json"]
TEACHER = ["teacher", "--out", "{out}/t"]
SYN = ["synthesize", "--teacher", M, "--out", "{out}"]
TRS = ["train-synthetic", "--teacher", M, "--synthetic", "{syn}", "--out", "{out}"]
SHIELD = ["shield", "--teacher", M, "--out", "{out}"]
TRAIN = ["train", "--method", "pgd_at", "--out", "{out}"]
CERT = ["certify", "--model", M, "--sigma", "0.25", "--out", "{out}/c.json"]
IMP = ["import-model", "mnist_cnn", "--out", "{out}/imp", "--num-classes", "10", "--in-channels", "1",
       "--image-size", "28", "--check-n", "0"]
ATOP_PRE = ["atop", "pretrain", "--data", "mnist5k", "--out", "{out}"]
ATOP_FT = ["atop", "finetune", "--model", M, "--purifier", "{missing}", "--data", "mnist5k", "--out", "{out}"]
ATOP_EV = ["atop", "evaluate", "--model", M, "--purifier", "{file}", "--data", "mnist5k"]
DEV = ["dist-evaluate", "--model", M, "--data", "mnist5k", "--out", "{out}"]
DTR = ["dist-train", "--teacher", M, "--synthetic", "{syn}", "--out", "{out}"]

no_cuda = pytest.mark.skipif(CUDA, reason="CUDA is available here")

# (id, argv, exit code, key words that must all appear)
CASES = [
    ("eval-eps-abc", EVAL + ["--eps", "abc"], 2, ["--eps abc", "not a number"]),
    ("eval-eps-0", EVAL + ["--eps", "0"], 2, ["--eps 0", "> 0"]),
    ("eval-eps-neg", EVAL + ["--eps", "-1"], 2, ["--eps -1", "> 0"]),
    ("eval-eps-2-linf", EVAL + ["--eps", "2"], 2, ["--eps 2", "≤ 1"]),
    ("eval-eps-div0", EVAL + ["--eps", "1/0"], 2, ["--eps 1/0", "division by zero"]),
    ("eval-eps-nan", EVAL + ["--eps", "nan"], 2, ["--eps nan", "finite"]),
    ("eval-l2-eps-neg", EVAL + ["--norm", "l2", "--eps", "-0.5"], 2, ["--eps -0.5", "> 0"]),
    ("eval-n-0", EVAL + ["--n", "0"], 2, ["--n 0", "positive integer"]),
    ("eval-n-neg", EVAL + ["--n", "-5"], 2, ["--n -5", "positive integer"]),
    ("eval-n-abc", EVAL + ["--n", "abc"], 2, ["--n", "integer"]),
    ("eval-norm-l3", EVAL + ["--norm", "l3"], 2, ["--norm l3", "linf, l2"]),
    ("eval-suite-typo", EVAL + ["--suite", "fulll"], 2, ["--suite fulll", "did you mean 'full'"]),
    ("eval-budgets-abc", EVAL + ["--suite", "query", "--budgets", "abc"], 2, ["--budgets abc", "integers"]),
    ("eval-budgets-0", EVAL + ["--suite", "query", "--budgets", "0"], 2, ["--budgets 0", "positive"]),
    ("eval-batch-0", EVAL + ["--batch-size", "0"], 2, ["--batch-size 0", "positive"]),
    ("eval-eot-neg", EVAL + ["--eot-samples", "-1"], 2, ["--eot-samples -1", "≥ 0"]),
    pytest.param("eval-device-cuda", EVAL + ["--device", "cuda"], 2, ["--device cuda", "CUDA is not available",
                                                                      "--device cpu"], marks=no_cuda),
    ("eval-device-tpu", EVAL + ["--device", "tpu"], 2, ["--device tpu", "unknown device"]),
    ("eval-out-is-file", [*EVAL[:-1], "{file}"], 2, ["--out", "afile.txt", "existing file"]),
    ("eval-model-missing", ["evaluate", "--model", "{missing}", "--data", "mnist5k", "--out", "{out}"], 2,
     ["--model", "does-not-exist.safetensors", "missing"]),
    ("eval-model-truncated", ["evaluate", "--model", T, "--data", "mnist5k", "--out", "{out}"], 2,
     ["trunc.safetensors", "not a valid safetensors file", "re-create"]),
    ("eval-model-random-pt", ["evaluate", "--model", "{pt}", "--data", "mnist5k", "--out", "{out}"], 2,
     ["--model", "random.pt", ".safetensors"]),
    ("eval-data-unknown", ["evaluate", "--model", M, "--data", "mnist5", "--out", "{out}"], 2,
     ["--data mnist5", "unknown dataset", "did you mean 'mnist5k'"]),
    ("eval-data-root-missing", EVAL + ["--data-root", "{missing}"], 2, ["--data-root", "no such folder"]),
    ("eval-teacher-missing", EVAL + ["--teacher", "{missing}"], 2, ["--teacher", "missing"]),
    ("eval-preprocess-bad", EVAL + ["--preprocess", "blur:3"], 2, ["unknown preprocess"]),
    ("eval-wrong-channels", ["evaluate", "--model", "{rgb}", "--data", "mnist5k", "--out", "{out}"], 2,
     ["--model", "3 input channels", "--data mnist5k has 1"]),
    ("sqa-wrong-channels", ["sqa", "--model", "{rgb}", "--data", "mnist5k", "--defence", "none"], 2,
     ["3 input channels"]),
    ("certify-wrong-channels", ["certify", "--model", "{rgb}", "--sigma", "0.25"], 2, ["3 input channels"]),
    ("sqa-eps-abc", SQA + ["--eps", "abc"], 2, ["--eps abc"]),
    ("sqa-sigma-0", SQA + ["--defence", "rnd", "--sigma", "0"], 2, ["--sigma 0", "> 0"]),
    ("sqa-budgets-neg", SQA + ["--budgets", "-3,100"], 2, ["--budgets -3,100", "positive"]),
    ("sqa-attack-typo", SQA + ["--attacks", "squar"], 2, ["--attacks squar", "did you mean 'square'"]),
    ("sqa-defence-bad", SQA + ["--defence", "foo"], 2, ["--defence foo", "none, rnd, unig"]),
    ("sqa-out-is-dir", [*SQA[:-1], "{syn}"], 2, ["--out", "existing folder"]),
    ("sqa-references-missing", SQA + ["--references", "{missing}"], 2, ["--references", "no such file"]),
    ("teacher-data-unknown", TEACHER + ["--data", "cifar100000"], 2, ["--data cifar100000", "unknown dataset"]),
    ("teacher-epochs-0", TEACHER + ["--epochs", "0"], 2, ["--epochs 0", "positive"]),
    ("teacher-device-tpu", TEACHER + ["--device", "tpu"], 2, ["--device tpu", "unknown device"]),
    ("teacher-config-missing", TEACHER + ["--config", "{missing}"], 2, ["does-not-exist", "no such file or preset"]),
    ("teacher-config-syntax", TEACHER + ["--config", "{cfg_syntax}"], 2,
     ["bad_syntax.yaml", "not valid YAML", "at line 3"]),
    ("teacher-config-unknown-key", TEACHER + ["--config", "{cfg_key}"], 2,
     ["has no option for epoch", "did you mean 'epochs'"]),
    ("syn-config-unknown-section", SYN + ["--config", "{cfg_section}"], 2,
     ["unknown section 'synthesiss'", "did you mean 'synthesis'"]),
    ("syn-config-unknown-section-key", SYN + ["--config", "{cfg_section_key}"], 2,
     ["unknown synthesis setting 'n_sample'", "did you mean 'n_samples'"]),
    ("syn-teacher-missing", ["synthesize", "--teacher", "{missing}", "--out", "{out}"], 2, ["--teacher", "missing"]),
    ("syn-n-0", SYN + ["--n-samples", "0"], 2, ["--n-samples 0", "positive"]),
    ("syn-iterations-neg", SYN + ["--iterations", "-1"], 2, ["--iterations -1", "positive"]),
    ("syn-synthesis-typo", SYN + ["--synthesis", "fastt"], 2, ["--synthesis fastt", "fast"]),
    ("syn-out-is-file", [*SYN[:-1], "{file}"], 2, ["--out", "existing file"]),
    ("syn-out-under-file", [*SYN[:-1], "{file}/sub"], 2, ["--out", "is a file"]),
    ("trs-eps-2", TRS + ["--eps", "2"], 2, ["--eps 2", "≤ 1"]),
    ("trs-norm-l3", TRS + ["--norm", "l3"], 2, ["--norm l3"]),
    ("trs-synthetic-missing", ["train-synthetic", "--teacher", M, "--synthetic", "{missing}", "--out", "{out}"], 2,
     ["--synthetic", "no such folder"]),
    ("trs-tau-2", TRS + ["--tau", "2"], 2, ["--tau 2", "[0, 1]"]),
    ("trs-lr-0", TRS + ["--lr", "0"], 2, ["--lr 0", "> 0"]),
    ("shield-teacher-missing", ["shield", "--teacher", "{missing}", "--out", "{out}"], 2, ["--teacher", "missing"]),
    ("shield-eps-abc", SHIELD + ["--eps", "abc"], 2, ["--eps abc"]),
    ("shield-synthesis-typo", SHIELD + ["--synthesis", "generator"], 2, ["--synthesis generator", "dss"]),
    ("shield-config-syntax", SHIELD + ["--config", "{cfg_syntax}"], 2, ["bad_syntax.yaml", "at line 3"]),
    ("shield-config-section", SHIELD + ["--config", "{cfg_section}"], 2, ["did you mean 'synthesis'"]),
    ("shield-data-unknown", SHIELD + ["--data", "mnistt"], 2, ["--data mnistt", "unknown dataset"]),
    ("train-method-typo", ["train", "--method", "pgd", "--out", "{out}"], 2, ["--method pgd", "did you mean"]),
    ("train-eps-abc", TRAIN + ["--eps", "abc"], 2, ["--eps abc"]),
    ("train-epochs-0", TRAIN + ["--epochs", "0"], 2, ["--epochs 0"]),
    ("train-out-is-file", ["train", "--method", "pgd_at", "--out", "{file}"], 2, ["--out", "existing file"]),
    ("train-data-unknown", TRAIN + ["--data", "nope"], 2, ["--data nope", "unknown dataset"]),
    ("train-init-missing", TRAIN + ["--init", "{missing}"], 2, ["--init", "missing"]),
    ("certify-sigma-0", CERT[:3] + ["--sigma", "0"], 2, ["--sigma 0", "> 0"]),
    ("certify-sigma-neg", CERT[:3] + ["--sigma", "-0.1"], 2, ["--sigma -0.1", "> 0"]),
    ("certify-n-0", CERT + ["--n", "0"], 2, ["--n 0", "positive"]),
    ("certify-alpha-1.5", CERT + ["--alpha", "1.5"], 2, ["--alpha 1.5", "between 0 and 1"]),
    ("certify-radii-abc", CERT + ["--radii", "abc"], 2, ["--radii abc", "numbers"]),
    ("certify-radii-neg", CERT + ["--radii", "0.5,-1"], 2, ["--radii 0.5,-1", "positive"]),
    ("certify-model-random-pt", ["certify", "--model", "{pt}", "--sigma", "0.25"], 2, ["--model", "random.pt"]),
    ("import-weights-missing", IMP + ["--weights", "{missing}"], 2, ["--weights", "no such file"]),
    ("import-weights-random", IMP + ["--weights", "{pt}"], 2, ["random.pt", "weights_only"]),
    ("import-weights-truncated", IMP + ["--weights", T], 2, ["trunc.safetensors", "not a valid safetensors"]),
    ("import-one-class", IMP + ["--num-classes", "1"], 2, ["--num-classes 1", "at least two classes"]),
    ("import-data-unknown", IMP + ["--data", "nope"], 2, ["--data nope", "unknown dataset"]),
    ("import-out-is-dir", [*IMP[:3], "{syn}", *IMP[4:]], 2, ["--out", "existing folder"]),
    ("atop-pre-transform", ATOP_PRE + ["--transform", "rt9"], 2, ["--transform rt9", "rt1, rt2, rt3"]),
    ("atop-pre-epochs-0", ATOP_PRE + ["--epochs", "0"], 2, ["--epochs 0"]),
    ("atop-pre-out-file", ["atop", "pretrain", "--data", "mnist5k", "--out", "{file}"], 2, ["--out", "existing file"]),
    ("atop-ft-purifier-missing", ATOP_FT, 2, ["--purifier", "no such file"]),
    ("atop-ev-eps-abc", ATOP_EV + ["--eps", "abc"], 2, ["--eps abc"]),
    ("atop-ev-n-0", ATOP_EV + ["--n", "0"], 2, ["--n 0"]),
    ("atop-ev-purifier-random", ["atop", "evaluate", "--model", M, "--purifier", "{pt}", "--data", "mnist5k"], 2,
     ["random.pt", "refused to load"]),
    ("dist-eval-eps-2", DEV + ["--eps", "2"], 2, ["--eps 2", "≤ 1"]),
    ("dist-eval-points-0", DEV + ["--n-points", "0"], 2, ["--n-points 0"]),
    ("dist-train-synthetic-missing", ["dist-train", "--teacher", M, "--synthetic", "{missing}", "--out", "{out}"], 2,
     ["--synthetic", "no such folder"]),
    ("dist-train-eps-abc", DTR + ["--eps", "abc"], 2, ["--eps abc"]),
]


def _ids(case) -> str:  # noqa: ANN001
    return case.values[0] if hasattr(case, "values") else case[0]


def _snapshot(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in root.rglob("*")}


def _invoke(argv: list[str], env: dict | None = None):  # noqa: ANN202
    return CliRunner().invoke(app, argv, env=env)


@pytest.mark.parametrize(("name", "argv", "code", "words"), CASES, ids=[_ids(c) for c in CASES])
def test_bad_input_is_refused_cleanly(name, argv, code, words, files, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    subs = {**{k: str(v) for k, v in files.items()}, "out": str(out)}
    args = [a.format(**subs) for a in argv]
    before_inputs = _snapshot(files["model"].parent)
    res = _invoke(args)
    text = res.output
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert res.exit_code == code, (args, text, res.exception)
    assert 1 <= len(lines) <= 3, text
    assert "Traceback" not in text, text
    for w in words:
        assert w in text, (w, text)
    assert list(out.iterdir()) == [], "the --out folder must hold nothing after a refused run"
    assert _snapshot(files["model"].parent) == before_inputs, "inputs must not be modified"


def test_matrix_is_big_enough():
    assert len(CASES) >= 40
    assert {(a.values if hasattr(a, "values") else a)[1][0] for a in CASES} >= {
        "teacher", "synthesize", "train-synthetic", "shield", "evaluate", "sqa", "atop", "train", "certify",
        "import-model"}


def test_unexpected_error_is_one_line_plus_debug_hint(monkeypatch, files):
    import shieldkit.data.validate as v

    def boom(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise RuntimeError("something internal broke\nsecond line")

    monkeypatch.setattr(v, "check_dataset", boom)
    res = _invoke(["evaluate", "--model", str(files["model"]), "--data", "mnist5k"])
    assert res.exit_code == 1
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert lines == ["error: RuntimeError: something internal broke", "re-run with --debug for the traceback"]
    dbg = _invoke(["--debug", "evaluate", "--model", str(files["model"]), "--data", "mnist5k"])
    assert dbg.exit_code == 1 and "Traceback" in dbg.output and "something internal broke" in dbg.output
    env = _invoke(["evaluate", "--model", str(files["model"]), "--data", "mnist5k"], env={"SHIELDKIT_DEBUG": "1"})
    assert "Traceback" in env.output
    again = _invoke(["evaluate", "--model", str(files["model"]), "--data", "mnist5k"])
    assert "Traceback" not in again.output  # --debug does not stick to the next invocation


def test_debug_shows_traceback_of_user_error_too(files):
    res = _invoke(["--debug", "evaluate", "--model", str(files["model"]), "--data", "mnist5k", "--eps", "abc"])
    assert res.exit_code == 2 and "Traceback" in res.output and "InputError" in res.output


def test_file_errors_from_our_code_are_one_line(monkeypatch, files):
    import shieldkit.data.validate as v

    def missing(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise FileNotFoundError(2, "No such file or directory", "/nowhere/x.bin")

    monkeypatch.setattr(v, "check_dataset", missing)
    res = _invoke(["evaluate", "--model", str(files["model"]), "--data", "mnist5k"])
    assert res.exit_code == 2
    assert [ln for ln in res.output.splitlines() if ln.strip()] == ["error: /nowhere/x.bin: No such file or directory"]


def test_help_and_version():
    from importlib.metadata import version

    res = _invoke(["--help"])
    assert res.exit_code == 0 and "evaluate" in res.output and "--debug" in res.output
    for cmd in (["evaluate"], ["certify"], ["atop", "pretrain"], ["import-model"]):
        r = _invoke([*cmd, "--help"])
        assert r.exit_code == 0 and "Usage" in r.output, cmd
    res = _invoke(["--version"])
    assert res.exit_code == 0 and res.output.strip() == f"shieldkit {version('shieldkit')}"


def test_usage_errors_keep_clicks_short_form():
    res = _invoke(["evaluate", "--data", "mnist5k"])  # --model missing
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2 and len(lines) <= 3 and "Missing option '--model'" in res.output
