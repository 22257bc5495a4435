"""`shieldkit export` (issue 15, item 2): ONNX / PT2 / TorchScript artefacts of a real saved model,
reloaded independently of shieldkit and compared with the model's logits on real mnist5k test digits."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from shieldkit.cli.main import app
from shieldkit.models import create_model, load_model, save_model
from shieldkit.utils.fingerprint import sha256_file

FORMATS = ("onnx", "pt2", "torchscript")
TOL = 1e-4


def _invoke(argv: list[str]):  # noqa: ANN202
    return CliRunner().invoke(app, [str(a) for a in argv])


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory, mnist_train):
    """A real BatchNorm CNN (mnist_cnn, seeded init) whose BN running statistics are those of 512 real
    training digits (cumulative average, train mode), then put in eval mode and saved as safetensors + card.
    Training for accuracy is not needed to test that an artefact reproduces the logits; real BN statistics
    are, since eval-mode BN folding is where exporters can go wrong."""
    torch.manual_seed(0)
    m = create_model("mnist_cnn", dataset="mnist5k", mean=[0.13], std=[0.31])
    bns = [mod for mod in m.modules() if isinstance(mod, torch.nn.BatchNorm2d)]
    assert bns
    for bn in bns:
        bn.momentum = None
    m.train()
    with torch.no_grad():
        for i in range(0, 512, 128):
            m(mnist_train.x[i:i + 128])
    m.eval()
    assert float(bns[0].running_var.sub(1).abs().max()) > 1e-3, "BN running stats must be real, not the init"
    path = tmp_path_factory.mktemp("export_model") / "mnist_cnn"
    save_model(m, path)
    return path


@pytest.fixture(scope="module")
def exported(saved_model, tmp_path_factory):
    """Each format exported once through the CLI: {fmt: (result, out path)}."""
    out_dir = tmp_path_factory.mktemp("exported")
    res = {}
    for fmt in FORMATS:
        out = out_dir / f"model.{fmt}"
        res[fmt] = (_invoke(["export", "--model", saved_model, "--format", fmt, "--out", out]), out)
    return res


def _reload(fmt: str, path: Path):  # noqa: ANN202 - independent of shieldkit.models.export
    if fmt == "onnx":
        import onnxruntime as ort

        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        return lambda x: torch.from_numpy(sess.run(None, {name: x.numpy()})[0])
    if fmt == "pt2":
        mod = torch.export.load(str(path)).module()
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch 2.14 deprecates torch.jit
            mod = torch.jit.load(str(path))
    return lambda x: mod(x).detach()


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_reproduces_logits_on_real_digits(fmt, exported, saved_model, mnist_test):
    res, out = exported[fmt]
    assert res.exit_code == 0, (res.output, res.exception)
    assert "max abs diff" in res.output and out.name in res.output
    model = load_model(saved_model)
    run = _reload(fmt, out)
    x = mnist_test.x[100:164]  # 64 real test digits other than the verification subset's order
    with torch.no_grad():
        ref = model(x)
    got = run(x)
    assert got.shape == ref.shape == (64, 10)
    assert float((got - ref).abs().max()) <= TOL
    assert float((ref - ref[0]).abs().max()) > 0.05, "logits must differ between digits (≫ the tolerance)"
    for b in (1, 7):  # dynamic batch axis
        xb = mnist_test.x[:b]
        with torch.no_grad():
            assert float((run(xb) - model(xb)).abs().max()) <= TOL
    rep = json.loads(Path(f"{out}.json").read_text())
    assert rep["format"] == fmt and rep["passed"] is True and rep["dynamic_batch"] is True
    assert rep["n_points"] == 64 and "mnist5k test split" in rep["points"]
    assert rep["sha256"] == sha256_file(out)
    assert rep["max_abs_diff"] <= TOL
    assert rep["input_shape"] == ["N", 1, 28, 28]
    assert sorted(p.name for p in out.parent.iterdir() if p.name.startswith(".")) == [], "temp files left"


def test_bad_format_suggests_the_closest(saved_model, tmp_path):
    res = _invoke(["export", "--model", saved_model, "--format", "onxx", "--out", tmp_path / "m.onnx"])
    assert res.exit_code == 2, res.output
    assert "--format onxx" in res.output and "did you mean 'onnx'" in res.output
    assert "Traceback" not in res.output
    assert list(tmp_path.iterdir()) == []


def test_out_existing_folder_is_refused(saved_model, tmp_path):
    folder = tmp_path / "already_here"
    folder.mkdir()
    res = _invoke(["export", "--model", saved_model, "--format", "pt2", "--out", folder])
    assert res.exit_code == 2, res.output
    assert "is an existing folder" in res.output
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_tampered_artefact_is_refused_and_nothing_is_left(fmt, saved_model, tmp_path, monkeypatch):
    import shieldkit.models.export as ex

    real = ex.load_artefact

    def tampered(*a, **k):  # noqa: ANN002, ANN003, ANN202
        run = real(*a, **k)
        return lambda x: run(x) + 1e-2

    monkeypatch.setattr(ex, "load_artefact", tampered)
    out_dir = tmp_path / "out"
    res = _invoke(["export", "--model", saved_model, "--format", fmt, "--out", out_dir / f"m.{fmt}"])
    assert res.exit_code == 2, (res.output, res.exception)
    assert "differ from the model's" in res.output and "nothing was written" in res.output
    assert not out_dir.exists(), "no artefact, temp file, report or folder created for them may be left"


def test_missing_onnxruntime_is_a_dependency_error(saved_model, tmp_path, monkeypatch):
    import importlib.util

    import shieldkit.models.export as ex

    find = importlib.util.find_spec
    monkeypatch.setattr(ex.importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime"
                        else find(name, *a))
    res = _invoke(["export", "--model", saved_model, "--format", "onnx", "--out", tmp_path / "m.onnx"])
    assert res.exit_code == 2, res.output
    assert "onnxruntime" in res.output and "pip install onnx onnxruntime" in res.output
    assert list(tmp_path.iterdir()) == []


def test_api_without_dataset_warns_about_random_points(saved_model, tmp_path):
    from shieldkit.models.export import export_model, verification_points

    model = load_model(saved_model)
    model.card.dataset = ""
    x, source, warning = verification_points(model, n=5)
    assert x.shape == (5, 1, 28, 28) and "random" in source and "not real test points" in warning
    rep = export_model(model, "pt2", tmp_path / "m.pt2", x, points_source=source, warning=warning)
    assert rep["passed"] and rep["n_points"] == 5 and rep["batch_sizes_checked"] == [1, 5]
    assert any("random" in w for w in rep["warnings"])
    assert json.loads((tmp_path / "m.pt2.json").read_text())["warnings"] == rep["warnings"]
