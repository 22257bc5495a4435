"""Deployable artefacts of a shieldkit model — ONNX, PT2 (``torch.export``) or TorchScript — verified
against the model before they are kept (issue 15, item 2).

The exported graph is the whole :class:`~shieldkit.models.wrapper.NormalizedClassifier`: it takes
images in [0, 1] (``N×C×H×W`` float32, any batch size ``N``) and returns logits, normalisation
included, exactly like the model in Python.

:func:`export_model` writes the artefact to a temporary sibling of ``out``, **reloads it independently**
(onnxruntime for ONNX, ``torch.export.load(...).module()`` for PT2, ``torch.jit.load`` for TorchScript),
runs it on the verification points and at batch size 1, and compares with the model's own logits. Only
if the max abs difference is ≤ ``tol`` (1e-4) is the temporary file renamed to ``out`` (``os.replace``,
atomic); otherwise it is deleted and :class:`~shieldkit.errors.IntegrityError` is raised, so a failed
export never leaves a file behind (an older ``out`` is left untouched).

Exporter choices (torch 2.14):

* **ONNX** — ``torch.onnx.export(..., dynamo=False)``, the TorchScript-based exporter, with
  ``dynamic_axes`` for the batch. The default since PyTorch 2.9 is the ``torch.export``-based ("dynamo")
  exporter, but it needs the extra package ``onnxscript`` (without it it fails with
  ``ModuleNotFoundError: No module named 'onnxscript'``); the TorchScript-based one needs nothing but
  torch, works offline, and gives the same graph for shieldkit's conv nets (conv/BN/ReLU/pool/linear).
  torch 2.14 warns that it is deprecated ("will be removed"); the warning is recorded in the report. When
  it is removed, switch to ``dynamo=True`` and add ``onnxscript`` to requirements-extra.txt.
  Verification needs ``onnx`` (structural check) and ``onnxruntime`` (running it):
  ``pip install onnx onnxruntime`` (both in requirements-extra.txt), else
  :class:`~shieldkit.errors.DependencyError`.
* **PT2** — ``torch.export.export`` with a dynamic batch dimension (``Dim.DYNAMIC``, so batch 1 works
  too) and ``torch.export.save``; reloaded with ``torch.export.load(...).module()``.
* **TorchScript** — ``torch.jit.trace`` + ``torch.jit.save``, reloaded with ``torch.jit.load``. torch 2.14
  marks all three deprecated (``FutureWarning``: "switch to torch.compile or torch.export"); kept for
  runtimes that still only read TorchScript (e.g. older LibTorch/C++ deployments). Prefer PT2. A trace
  records one control-flow path; the batch-1 check catches graphs that baked the example batch size in.

Artefacts for ``pt2`` and ``torchscript`` are bound to the device they were exported on (``cpu`` by
default); the ONNX file is device-neutral and is verified on onnxruntime's CPU provider.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shieldkit.errors import DependencyError, InputError, IntegrityError

FORMATS = ("onnx", "pt2", "torchscript")
SUFFIX = {"onnx": ".onnx", "pt2": ".pt2", "torchscript": ".pt"}
TOLERANCE = 1e-4
ONNX_INSTALL = "pip install onnx onnxruntime  (or: pip install -r requirements-extra.txt)"


def _sha256(path: Path) -> str:
    from shieldkit.utils.fingerprint import sha256_file

    return sha256_file(path)


def check_onnx_dependencies() -> None:
    """``onnx`` and ``onnxruntime`` are importable, else :class:`DependencyError` with the pip command."""
    missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        raise DependencyError(f"--format onnx needs {' and '.join(missing)} to check the exported file "
                              "(not installed)", hint=ONNX_INSTALL)


# --------------------------------------------------------------------------------------------- points


def verification_points(model: nn.Module, data: str | None = None, data_root: str | Path | None = None,
                        n: int = 64, seed: int = 0) -> tuple[torch.Tensor, str, str | None]:
    """``n`` inputs to verify an export on: ``(x, source, warning)``.

    The test split of ``data`` (or, if not given, of the model card's dataset when it is embedded or
    ``data_root`` is given), a seeded stratified subset; else seeded uniform [0, 1] inputs of the card's
    shape, with a warning (random inputs exercise the graph but not the logits on real digits/images).
    """
    from shieldkit.data import DATASETS, load_dataset
    from shieldkit.utils.validate import check_model_fits_data

    card = getattr(model, "card", None)
    name = data or (card.dataset if card is not None else "")
    if name and name in DATASETS and (DATASETS[name]["embedded"] or data_root is not None):
        test = load_dataset(name, "test", root=data_root)
        check_model_fits_data(model, test, data_name=name)
        sub = test.subset(n, seed=seed)
        return sub.x, f"{name} test split ({len(sub)} points, seed {seed})", None
    if data:  # an explicit dataset that cannot be read: the CLI validates it before; say so here too
        raise InputError(f"--data {data}: cannot load its test split", hint="check --data and --data-root")
    if card is None:
        raise InputError("the model has no card (input shape unknown): pass the points yourself")
    why = (f"the card's dataset {card.dataset!r} reads a local folder and no --data-root was given" if card.dataset
           else "the model card names no dataset and no --data was given")
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, card.in_channels, card.image_size, card.image_size, generator=g)
    return x, f"random uniform [0, 1] ({n} points, seed {seed})", (
        f"verified on random inputs, not real test points: {why}")


# --------------------------------------------------------------------------------------------- reload


def load_artefact(fmt: str, path: str | Path,
                  device: str | torch.device = "cpu") -> Callable[[torch.Tensor], torch.Tensor]:
    """Load an exported file independently of the model and return ``run(x) -> logits`` (CPU tensor)."""
    path = str(path)
    if fmt == "onnx":
        check_onnx_dependencies()
        import onnx
        import onnxruntime as ort

        onnx.checker.check_model(onnx.load(path))
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name

        def run_onnx(x: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(sess.run(None, {name: x.detach().cpu().float().numpy()})[0])

        return run_onnx
    if fmt == "pt2":
        module = torch.export.load(path).module()

        def run_pt2(x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return module(x.to(device)).cpu()

        return run_pt2
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch 2.14: torch.jit.* is deprecated
            module = torch.jit.load(path, map_location=device)
        module.eval()

        def run_ts(x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return module(x.to(device)).cpu()

        return run_ts
    raise InputError(f"--format {fmt}: must be one of {', '.join(FORMATS)}")


# --------------------------------------------------------------------------------------------- write


def _write(model: nn.Module, fmt: str, tmp: Path, example: torch.Tensor, opset: int) -> str:
    """Write the artefact to ``tmp``; return a short description of the exporter used."""
    if fmt == "onnx":
        torch.onnx.export(model, (example,), str(tmp), dynamo=False, opset_version=opset, input_names=["x"],
                          output_names=["logits"], dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
                          do_constant_folding=True)
        return f"torch.onnx.export(dynamo=False, opset_version={opset}, dynamic_axes batch)"
    if fmt == "pt2":
        batch = torch.export.Dim.DYNAMIC
        ep = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
        torch.export.save(ep, str(tmp))
        return "torch.export.export(dynamic batch) + torch.export.save"
    with torch.no_grad():
        traced = torch.jit.trace(model, example)
    torch.jit.save(traced, str(tmp))
    return "torch.jit.trace + torch.jit.save (deprecated in torch 2.14)"


def export_model(model: nn.Module, fmt: str, out: str | Path, example: torch.Tensor, *, opset: int = 17,
                 tol: float = TOLERANCE, points_source: str = "given points", warning: str | None = None,
                 device: str | torch.device = "cpu", write_report: bool = True) -> dict:
    """Export ``model`` as ``fmt`` to ``out``, verified on ``example`` (``N×C×H×W`` in [0, 1]).

    Returns the report (also written to ``out`` + ``.json`` when ``write_report``): format, file, sha256,
    bytes, max_abs_diff (over the ``N`` points and a batch-1 run), n_points, passed, input_shape,
    dynamic_batch, exporter, warnings. Raises :class:`IntegrityError` (and keeps no file) when the
    reloaded artefact's logits differ from the model's by more than ``tol``.
    """
    if fmt not in FORMATS:
        from shieldkit.utils.validate import check_choice

        check_choice(fmt, FORMATS, "--format")
    if not isinstance(example, torch.Tensor) or example.ndim != 4 or example.shape[0] < 1:
        raise InputError("export: the verification points must be an N×C×H×W tensor with N ≥ 1")
    if fmt == "onnx":
        check_onnx_dependencies()
    out = Path(out)
    if out.is_dir():
        raise InputError(f"--out {out}: is an existing folder, a file path is expected",
                         hint=f"give a file path, e.g. {out / ('model' + SUFFIX[fmt])}")
    new_dirs = [d for d in (out.parent, *out.parent.parents) if not d.exists()]  # removed again on failure
    out.parent.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    model = model.to(device).eval()
    x = example.detach().to(device=device, dtype=torch.float32)
    # export with a batch of ≥ 2 so no exporter specialises the batch dimension to 1
    trace_x = x[:2] if x.shape[0] >= 2 else x.repeat(2, 1, 1, 1)
    with torch.no_grad():
        ref = model(x).detach().cpu()
    tmp = out.with_name(f".{out.name}.{secrets.token_hex(4)}.tmp{SUFFIX[fmt]}")
    caught: list[str] = []
    try:
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            exporter = _write(model, fmt, tmp, trace_x, opset)
        caught = sorted({f"{w.category.__name__}: {str(w.message).splitlines()[0][:200]}" for w in rec})
        diff = _verify_artefact(fmt, tmp, x, ref, tol, points_source, device)
        os.replace(tmp, out)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        for d in new_dirs:  # innermost first; only folders this call created and that are still empty
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()
        raise
    finally:
        if tmp.exists():
            tmp.unlink()
    report = _report(model, fmt, out, diff, tol, x, points_source, exporter, opset, device,
                     ([warning] if warning else []) + caught)
    if write_report:
        from shieldkit.utils.io import atomic_write_json

        atomic_write_json(out.with_name(out.name + ".json"), report)
    return report


def _verify_artefact(fmt: str, tmp: Path, x: torch.Tensor, ref: torch.Tensor, tol: float, points_source: str,
                     device: torch.device) -> float:
    """Reload the written artefact and compare its logits with the model's on ``x`` and on a batch of 1
    (the batch axis must be dynamic); returns the max abs difference or raises :class:`IntegrityError`."""
    run = load_artefact(fmt, tmp, device=device)
    try:
        got = run(x)
        got1 = run(x[:1])  # the batch axis must be dynamic (the graph was exported at batch 2)
    except Exception as exc:  # noqa: BLE001 - any failure of the reloaded file (e.g. onnxruntime InvalidArgument)
        raise IntegrityError(f"export {fmt}: the reloaded artefact fails on batches of {x.shape[0]} and 1: "
                             f"{str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__}"
                             "; nothing was written",
                             hint="report this architecture as not exportable in this format") from exc
    if tuple(got.shape) != tuple(ref.shape) or tuple(got1.shape) != tuple(ref[:1].shape):
        raise IntegrityError(f"export {fmt}: the reloaded artefact returns shape {tuple(got.shape)} / "
                             f"{tuple(got1.shape)} for batches {x.shape[0]} / 1, the model "
                             f"{tuple(ref.shape)}; nothing was written",
                             hint="report this architecture as not exportable in this format")
    diff = max(float((got.float() - ref).abs().max()), float((got1.float() - ref[:1]).abs().max()))
    if not diff <= tol:  # also catches NaN
        raise IntegrityError(f"export {fmt}: the reloaded artefact's logits differ from the model's by "
                             f"{diff:.3g} (max abs, tolerance {tol:g}) on {points_source}; nothing was written",
                             hint="try another --format (pt2 is the most faithful) or --device cpu")
    return diff


def _report(model: nn.Module, fmt: str, out: Path, diff: float, tol: float, x: torch.Tensor, points_source: str,
            exporter: str, opset: int, device: torch.device, warns: list[str]) -> dict[str, Any]:
    card = getattr(model, "card", None)
    report: dict[str, Any] = {
        "format": fmt,
        "file": str(out),
        "sha256": _sha256(out),
        "bytes": out.stat().st_size,
        "max_abs_diff": diff,
        "tolerance": tol,
        "passed": True,
        "n_points": int(x.shape[0]),
        "points": points_source,
        "input_shape": ["N", *[int(s) for s in x.shape[1:]]],
        "dynamic_batch": True,
        "batch_sizes_checked": sorted({int(x.shape[0]), 1}),
        "input": "float32 images in [0, 1], N×C×H×W (normalisation is inside the graph); output: logits N×K",
        "exporter": exporter,
        "opset": opset if fmt == "onnx" else None,
        "device": str(device),
        "torch": torch.__version__,
        "arch": getattr(card, "arch", None),
        "dataset": getattr(card, "dataset", None),
        "warnings": warns,
    }
    if fmt == "onnx":
        import onnxruntime

        report["onnxruntime"] = onnxruntime.__version__
    if fmt == "onnx":
        import onnxruntime

        report["onnxruntime"] = onnxruntime.__version__
    return report
