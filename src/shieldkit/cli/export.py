"""`shieldkit export` — a deployable ONNX / PT2 / TorchScript file of a saved model, verified.

A thin layer over :func:`shieldkit.models.export.export_model`: loads the model (safetensors + sidecar),
picks the verification points (the card's dataset test split, or ``--data``; random [0, 1] inputs with a
warning only when there is no readable dataset), writes ``--out`` only after the reloaded artefact
reproduced the model's logits to 1e-4, and writes the figures to ``OUT.json`` next to it.
"""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    app.command("export")(export_cmd)


def export_cmd(
    model: Path = typer.Option(..., "--model", "-m", help="model weights (.safetensors with JSON sidecar)"),
    fmt: str = typer.Option(..., "--format", "-f", help="onnx | pt2 | torchscript"),
    out: Path = typer.Option(..., "--out", "-o", help="artefact file to write (e.g. model.onnx); "
                                                      "the report goes to OUT.json"),
    data: str | None = typer.Option(None, "--data", "-d", help="dataset whose test split verifies the export "
                                                               "(default: the model card's dataset)"),
    data_root: Path | None = typer.Option(None, "--data-root", help="local dataset directory"),
    n: int = typer.Option(64, "--n", help="number of test points to verify on (stratified seeded subset)"),
    seed: int = typer.Option(0, "--seed"),
    opset: int = typer.Option(17, "--opset", help="ONNX opset version"),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda | cuda:N | auto (pt2/torchscript files are "
                                                       "bound to this device; ONNX is verified on CPU)"),
) -> None:
    """Export a model as ONNX, PT2 (torch.export) or TorchScript, verified to reproduce its logits."""
    from shieldkit.cli.common import console
    from shieldkit.data.validate import check_dataset
    from shieldkit.models import load_model
    from shieldkit.models.export import FORMATS, check_onnx_dependencies, export_model, verification_points
    from shieldkit.utils import validate as v

    v.check_choice(fmt, FORMATS, "--format")
    v.check_model_path(model, "--model")
    v.check_out_file(out, "--out")
    v.check_positive_int(n, "--n")
    v.check_positive_int(opset, "--opset")
    check_dataset(data, data_root)
    if data is None and data_root is not None:
        v.check_existing_dir(data_root, "--data-root")
    dev = v.resolve_device(device)
    if fmt == "onnx":
        check_onnx_dependencies()
    m = load_model(model, device=str(dev))
    x, source, warning = verification_points(m, data, data_root, n=n, seed=seed)
    if warning:
        console.print(f"[yellow]warning: {warning}[/]")
    rep = export_model(m, fmt, out, x, opset=opset, points_source=source, warning=warning, device=dev)
    console.print(f"wrote {rep['file']}  ({fmt}, {rep['bytes']:,} bytes, sha256 {rep['sha256'][:12]}…)")
    console.print(f"max abs diff {rep['max_abs_diff']:.3g} ≤ {rep['tolerance']:g} on {rep['points']}; "
                  f"report {rep['file']}.json")
