"""Issue 15 items 5-6: one threat-model default per dataset (flag > model card's dataset > --data > generic),
the same flag names everywhere (--n, --data-root, hidden old spellings), --quick composing with --config,
--version, --help in workflow order, `evaluate --model STEM`, and evaluate_basic's progress lines (on under
the CLI, so `shield`/`demo` print them through the pipeline; off in the Python API)."""

from __future__ import annotations

import copy
import functools
import json
import re
from importlib.metadata import version

import pytest
import typer
from typer.testing import CliRunner

import shieldkit.pipeline as pipeline
from shieldkit.cli.common import apply_quick, resolve_threat_model
from shieldkit.cli.main import app
from shieldkit.config import load_config, shield_config
from shieldkit.data.threat_models import GENERIC, default_threat_model
from shieldkit.evaluation.basic import evaluate_basic
from shieldkit.models import create_model, save_model

EPS_COMMANDS = (("evaluate",), ("sqa",), ("train-synthetic",), ("train",), ("shield",), ("dist-train",),
                ("dist-evaluate",), ("atop", "finetune"), ("atop", "evaluate"))
EPS_LINE = re.compile(r"^ε = .*$", re.M)


def _invoke(argv, **kw):  # noqa: ANN001, ANN202
    return CliRunner().invoke(app, [str(a) for a in argv], terminal_width=250, **kw)


def _eps_lines(output: str) -> list[str]:
    return EPS_LINE.findall(output)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Untrained (instant) saved models whose cards name different datasets: the resolver reads only the card."""
    d = tmp_path_factory.mktemp("cards")
    out = {}
    for key, dataset in (("mnist", "mnist5k"), ("cifar", "cifar10"), ("none", ""), ("acme", "acme-private-scans"),
                         ("med", "pathmnist")):
        save_model(create_model("mnist_cnn", dataset=dataset, mean=[0.13], std=[0.31]), d / key)
        out[key] = d / key
    return out


# ----------------------------------------------------------------------------- the registry and the resolver
def test_registry_values():
    assert default_threat_model("mnist5k").eps == pytest.approx(0.1)
    assert default_threat_model("digits").eps == pytest.approx(0.1)
    for name in ("cifar10", "cifar100", "svhn", "pathmnist", "bloodmnist"):
        tm = default_threat_model(name)
        assert (tm.norm, tm.eps) == ("linf", pytest.approx(8 / 255)), name
        assert "DataFreeShield" in tm.source or "RobustBench" in tm.source
    assert default_threat_model("cifar10", "l2").eps == pytest.approx(128 / 255)
    assert default_threat_model("mnist5k", "l2") is None
    assert default_threat_model("imagefolder") is None and default_threat_model("") is None


def test_resolver_order_flag_card_data_generic(models, capsys):
    # 1. an explicit flag beats the card and --data
    r = resolve_threat_model("0.3", model=models["cifar"], data="mnist5k")
    assert r.eps == pytest.approx(0.3) and r.source == "from --eps"
    # 2. the model card's dataset beats --data
    r = resolve_threat_model(None, model=models["cifar"], data="mnist5k")
    assert r.eps == pytest.approx(8 / 255) and r.dataset == "cifar10" and "model card" in r.source
    r = resolve_threat_model(None, model=models["med"])
    assert r.eps == pytest.approx(8 / 255) and r.dataset == "pathmnist"
    # 3. --data where the card names no dataset, or one without a default
    assert resolve_threat_model(None, model=models["none"], data="mnist5k").eps == pytest.approx(0.1)
    r = resolve_threat_model(None, model=models["acme"], data="svhn")
    assert r.eps == pytest.approx(8 / 255) and r.dataset == "svhn" and "'acme-private-scans' has none" in r.source
    assert resolve_threat_model(None, data="digits").eps == pytest.approx(0.1)  # no model at all
    # a loaded model works like a path (only .card is read)
    loaded = copy.deepcopy(create_model("mnist_cnn", dataset="cifar100"))
    assert resolve_threat_model(None, model=loaded, data="mnist5k").dataset == "cifar100"
    # 4. nothing known: the generic value, saying so and naming the flag
    r = resolve_threat_model(None, model=models["acme"])
    assert r.eps == GENERIC["linf"].eps and "no default for dataset 'acme-private-scans'" in r.source
    assert "pass --eps" in r.source
    assert resolve_threat_model(None, "l2", model=models["mnist"]).eps == GENERIC["l2"].eps
    assert resolve_threat_model(None, "l2", model=models["cifar"]).eps == pytest.approx(128 / 255)
    # a config file's ε is explicit too
    assert resolve_threat_model("4/255", config="paper/x").source == "from --config paper/x"
    # printed once per call, to stderr
    capsys.readouterr()
    resolve_threat_model(None, data="mnist5k")
    cap = capsys.readouterr()
    assert cap.out == "" and cap.err == "ε = 0.1 (ℓ∞, default for mnist5k)\n"


def test_resolver_validates_the_flag():
    from shieldkit.errors import InputError

    with pytest.raises(InputError, match="--eps 2"):
        resolve_threat_model("2", data="mnist5k", announce=False)
    with pytest.raises(InputError, match="--norm"):
        resolve_threat_model(None, "l3", data="mnist5k", announce=False)


@pytest.mark.parametrize("cmd", EPS_COMMANDS, ids=" ".join)
def test_eps_has_no_hard_coded_default(cmd):
    """No command hard-codes an ε that disagrees with the registry: the default is None (resolved at run time)
    and --help shows no [default: …] for --eps."""
    group = typer.main.get_command(app)
    command = group
    for part in cmd:
        command = command.commands[part]
    eps = next(p for p in command.params if p.name == "eps")
    assert eps.default is None, (cmd, eps.default)
    r = _invoke([*cmd, "--help"], env={"TERMINAL_WIDTH": "250"})
    assert r.exit_code == 0, r.output
    line = next(ln for ln in r.output.splitlines() if "--eps" in ln)
    assert "[default:" not in line and "0.2" not in line, line
    assert "threat model" in (eps.help or ""), eps.help  # the help names the rule (rendered wrapping varies)


# ----------------------------------------------------------------------------- defaults through the CLI
@pytest.fixture(scope="module")
def synthetic(tmp_path_factory, mnist_teacher):
    d = tmp_path_factory.mktemp("trs")
    save_model(mnist_teacher, d / "teacher")
    r = _invoke(["synthesize", "--teacher", d / "teacher", "--out", d / "syn", "--n-samples", "20", "--iterations",
                 "2", "--batch-size", "10", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    return d


@pytest.mark.parametrize("extra, config, expect_eps, expect_source", [
    ((), None, 0.1, "default for mnist5k"),  # was 0.2 (README: collapses training)
    ((), "training: {eps: 0.05}\n", 0.05, "from --config"),
    (("--eps", "0.07"), "training: {eps: 0.05}\n", 0.07, "from --eps"),
])
def test_train_synthetic_eps(synthetic, tmp_path, extra, config, expect_eps, expect_source):
    args = ["train-synthetic", "--teacher", synthetic / "teacher", "--synthetic", synthetic / "syn", "--out",
            tmp_path / "run", "--epochs", "1", "--batch-size", "10", "--device", "cpu", *extra]
    if config:
        (tmp_path / "c.yaml").write_text(config)
        args += ["--config", tmp_path / "c.yaml"]
    r = _invoke(args)
    assert r.exit_code == 0, r.output
    lines = _eps_lines(r.output)
    assert len(lines) == 1 and expect_source in lines[0], r.output
    card = json.loads((tmp_path / "run" / "model.json").read_text())
    assert card["extra"]["training"]["eps"] == pytest.approx(expect_eps)


def test_evaluate_accepts_the_stem_and_defaults_to_the_cards_dataset(tmp_path, mnist_teacher):
    save_model(mnist_teacher, tmp_path / "model")
    assert not (tmp_path / "model").exists()  # the stem is no file: only model.safetensors + model.json
    r = _invoke(["evaluate", "--model", tmp_path / "model", "--data", "mnist5k", "--suite", "quick", "--n", "16",
                 "--out", tmp_path / "ev", "--device", "cpu", "--batch-size", "16"])
    assert r.exit_code == 0, r.output
    assert _eps_lines(r.output) == ["ε = 0.1 (ℓ∞, default for mnist5k)"]  # was 8/255 for every dataset
    ev = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    assert ev["eps"] == pytest.approx(0.1) and ev["n"] == 16


# ----------------------------------------------------------------------------- flag names
@pytest.mark.parametrize("argv, expect", [
    (["certify", "--model", "{m}", "--sigma", "0.25", "--points", "5", "--n", "5"], "--n and --points"),
    (["certify", "--model", "{m}", "--sigma", "0.25", "--points", "0"], "--points 0"),
    (["dist-evaluate", "--model", "{m}", "--data", "mnist5k", "--n-points", "3", "--n", "3"], "--n and --n-points"),
    (["train", "--method", "std", "--out", "{o}", "--eval-n", "3", "--n", "3"], "--n and --eval-n"),
    (["train", "--method", "std", "--out", "{o}", "--eval-n", "-1"], "--eval-n -1"),
])
def test_old_spellings_are_hidden_aliases(models, tmp_path, argv, expect):
    argv = [a.format(m=models["mnist"], o=tmp_path / "o") for a in argv]
    r = _invoke(argv)
    assert r.exit_code == 2 and expect in r.output, r.output
    help_text = _invoke([argv[0], "--help"]).output
    assert "--points" not in help_text and "--n-points" not in help_text and "--eval-n" not in help_text


@pytest.mark.parametrize("cmd", [("evaluate",), ("sqa",), ("certify",), ("atop", "evaluate"), ("dist-evaluate",),
                                 ("export",)], ids=" ".join)
def test_points_are_n_everywhere(cmd):
    out = _invoke([*cmd, "--help"], env={"TERMINAL_WIDTH": "250"}).output
    line = next(ln for ln in out.splitlines() if re.search(r"--n\s", ln))
    assert "points" in line, line


@pytest.mark.parametrize("argv", [
    ["train", "--method", "std", "--data", "cifar10", "--out", "{o}", "--data-root", "{missing}"],
    ["certify", "--model", "{m}", "--sigma", "0.25", "--data", "cifar10", "--data-root", "{missing}"],
    ["atop", "pretrain", "--data", "cifar10", "--out", "{o}", "--data-root", "{missing}"],
    ["atop", "finetune", "--model", "{m}", "--purifier", "{m}.json", "--data", "cifar10", "--out", "{o}",
     "--data-root", "{missing}"],
    ["atop", "evaluate", "--model", "{m}", "--purifier", "{m}.json", "--data", "cifar10", "--data-root", "{missing}"],
], ids=lambda a: " ".join(a[:2]))
def test_data_root_on_every_data_reading_command(models, tmp_path, argv):
    argv = [a.format(m=models["mnist"], o=tmp_path / "o", missing=tmp_path / "nope") for a in argv]
    r = _invoke(argv)
    assert r.exit_code == 2 and "--data-root" in r.output and "No such option" not in r.output, r.output


# ----------------------------------------------------------------------------- --quick with --config
def test_apply_quick_caps_sizes_keeps_method_and_threat_model():
    cfg = shield_config(load_config("paper/cifar10-resnet20-linf4"))
    before = copy.deepcopy(cfg)
    changes = apply_quick(cfg)
    quick = pipeline.demo_config(quick=True)
    assert (cfg.synthesis.n_samples, cfg.synthesis.iterations) == (quick.synthesis.n_samples,
                                                                   quick.synthesis.iterations)
    assert cfg.training.epochs == quick.training.epochs
    assert (cfg.evaluation.n, cfg.evaluation.aa_n, cfg.evaluation.curve_n) == (
        quick.evaluation.n, quick.evaluation.aa_n, quick.evaluation.curve_n)
    assert cfg.training.grad_refine_batches == cfg.synthesis.n_samples // cfg.training.batch_size  # 20 → 2
    for key in ("eps", "norm", "objective", "lr", "attack_steps", "attack_alpha", "momentum", "batch_size"):
        assert getattr(cfg.training, key) == getattr(before.training, key), key
    assert cfg.synthesis.labels == before.synthesis.labels and cfg.synthesis.lr == before.synthesis.lr
    assert "synthesis.n_samples 60000 → 400" in changes and "evaluation.curve_n 200 → 50" in changes
    assert len(changes) == 7
    small = copy.deepcopy(quick)
    assert apply_quick(small) == [] and small == quick  # a config already quick-sized is untouched


TINY = """\
synthesis: {n_samples: 20, batch_size: 10, iterations: 41, seed: 0}
training: {eps: 0.05, norm: linf, epochs: 4, batch_size: 10, grad_refine_batches: 5, attack_steps: 2, seed: 0}
evaluation: {n: 16, aa_n: 8, pgd_steps: 2, seed: 0}
"""


def test_shield_quick_composes_with_config_and_prints_progress(tmp_path, mnist_teacher):
    """`shield --config tiny.yaml --quick`: the config's ε (0.05), the quick run's caps (iterations 41 → 40,
    epochs 4 → 3, ℬ 5 → 2), and evaluate_basic's per-attack lines reach the console through the pipeline."""
    save_model(mnist_teacher, tmp_path / "teacher")
    (tmp_path / "tiny.yaml").write_text(TINY)
    with pytest.MonkeyPatch.context() as mp:  # cheap AutoAttack, as in test_shield_report.py
        mp.setattr(pipeline, "evaluate_basic", functools.partial(evaluate_basic, aa_attacks=["apgd-ce"]))
        r = _invoke(["shield", "--teacher", tmp_path / "teacher", "--out", tmp_path / "run", "--config",
                     tmp_path / "tiny.yaml", "--quick", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert ("synthesis.iterations 41 → 40, training.epochs 4 → 3, training.grad_refine_batches 5 → 2"
            in r.output), r.output
    assert _eps_lines(r.output) == [f"ε = 0.05 (ℓ∞, from --config {tmp_path / 'tiny.yaml'})"]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["training"]["epochs"] == 3 and results["training"]["grad_refine_batches"] == 2
    assert results["training"]["eps"] == pytest.approx(0.05)
    assert results["synthesis"]["config"]["iterations"] == 40
    for what in ("clean: 16 points", "PGD-2: 16 points", "AutoAttack-standard[apgd-ce]: 8 points"):
        assert sum(what in ln for ln in r.output.splitlines()) >= 2, (what, r.output)  # teacher and shielded


# ----------------------------------------------------------------------------- progress, --version, --help
def test_evaluate_basic_progress_is_opt_in_in_the_api(mnist_teacher, mnist_test, capsys):
    evaluate_basic(mnist_teacher, mnist_test, eps=0.1, n=12, pgd_steps=1, autoattack=False, batch_size=8)
    assert capsys.readouterr().err == ""
    evaluate_basic(mnist_teacher, mnist_test, eps=0.1, n=12, pgd_steps=1, autoattack=False, batch_size=8,
                   progress=True)
    err = capsys.readouterr().err
    assert "evaluate[mnist_cnn] clean: 12 points" in err
    assert "PGD-1: 8/12 points (4 left)" in err and "PGD-1: 12 points" in err


def test_version():
    r = _invoke(["--version"])
    assert r.exit_code == 0 and r.output.strip() == f"shieldkit {version('shieldkit')}"


def test_help_lists_commands_in_workflow_order():
    out = _invoke(["--help"], env={"TERMINAL_WIDTH": "250"}).output
    names = [m.group(1) for m in re.finditer(r"^│ ([a-z][a-z-]+)\s{2,}", out, re.M)]
    assert names[:4] == ["import-model", "shield", "evaluate", "export"], names
    assert names.index("demo") > names.index("train-synthetic") and names.index("demo") >= len(names) - 2
    lines = {n: next(ln for ln in out.splitlines() if ln.startswith(f"│ {n} ")) for n in ("shield", "demo")}
    assert "main job" in lines["shield"] and "main job" not in lines["demo"].lower(), lines
