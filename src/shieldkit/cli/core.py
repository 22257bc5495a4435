"""Core commands: teacher, synthesize, train-synthetic, shield, demo."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer

from shieldkit.cli.common import EPS_HELP, apply_quick, console, resolve_threat_model
from shieldkit.config import config_option

Device = Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")]
Config = Annotated[Path | None, config_option()]
SYNTHESIS_HELP = ("dss: optimise every batch's images (DataFreeShield §4.2) | fast: a meta-learned generator, a few "
                  "steps per batch (FastDFKD-style, benchmarks/results/speed.json)")
Overwrite = Annotated[bool, typer.Option("--overwrite", help="delete this shieldkit output's previous contents and "
                                                            "start afresh (instead of resuming / refusing)")]


def register(app: typer.Typer) -> None:
    app.command("teacher")(teacher)
    app.command("synthesize")(synthesize_cmd)
    app.command("train-synthetic")(train_synthetic)
    app.command("shield")(shield_cmd)
    app.command("demo")(demo)


def teacher(
    config: Config = None,
    data: Annotated[str, typer.Option(help="dataset name (see shieldkit.data.list_datasets)")] = "mnist5k",
    arch: Annotated[str, typer.Option(help="registry architecture")] = "mnist_cnn",
    epochs: int = 15,
    out: Annotated[Path | None, typer.Option(help="weights path (without extension)")] = None,
    data_root: Annotated[str | None, typer.Option(help="root folder for local datasets")] = None,
    seed: int = 0,
    device: Device = "auto",
    overwrite: Overwrite = False,
) -> None:
    """Train (or reuse the cached) standard, non-robust teacher."""
    from shieldkit.data import validate as dv
    from shieldkit.pipeline import ensure_teacher
    from shieldkit.utils import validate as v

    dv.check_dataset(data, data_root)
    v.check_positive_int(epochs, "--epochs")
    v.check_out_file(out)
    dev = v.resolve_device(device)
    out = out or Path("runs/teachers") / f"{data}-{arch}"
    model = ensure_teacher(out, data=data, arch=arch, epochs=epochs, seed=seed, device=dev,
                           data_root=data_root, overwrite=overwrite)
    acc = 100 * model.card.extra.get("test_acc", float("nan"))
    console.print(f"teacher: {out}.safetensors  test accuracy {acc:.2f} %")


def synthesize_cmd(
    ctx: typer.Context,
    teacher_path: Annotated[Path, typer.Option("--teacher", help="teacher weights (.safetensors + .json)")],
    out: Annotated[Path, typer.Option(help="output directory (resumable)")],
    config: Config = None,
    n_samples: Annotated[int, typer.Option(help="number of samples (`--n-samples`: torchrun would take `--n` "
                                                "for one of its own options)")] = 2000,
    iterations: int = 200,
    batch_size: int = 200,
    coefficients: Annotated[str, typer.Option(help="dss | fixed")] = "dss",
    labels: Annotated[str, typer.Option(help="balanced | cycle | random")] = "balanced",
    synthesis: Annotated[str, typer.Option("--synthesis", help=SYNTHESIS_HELP)] = "dss",
    seed: int = 0,
    device: Device = "auto",
    overwrite: Overwrite = False,
) -> None:
    """Diversified sample synthesis (DataFreeShield §4.2) from a teacher's BatchNorm statistics.

    Under ``torchrun --nproc_per_node=N -m shieldkit synthesize ...`` the shards are split across the
    ranks (gloo on CPU, nccl on GPUs); the set is identical to a single-process run with the same seed.
    """
    from shieldkit.config import resolved_config, save_run_metadata
    from shieldkit.distributed import dist
    from shieldkit.distributed.synthesis import synthesize_distributed
    from shieldkit.models import load_model
    from shieldkit.synthesis import SynthesisConfig, load_synthetic
    from shieldkit.synthesis.config import METHODS
    from shieldkit.utils import validate as v

    v.check_model_path(teacher_path, "--teacher")
    v.check_out_dir(out)
    v.check_choice(synthesis, METHODS, "--synthesis")
    for value, flag in ((n_samples, "--n-samples"), (iterations, "--iterations"), (batch_size, "--batch-size")):
        v.check_positive_int(value, flag)
    v.resolve_device(device)
    info = dist.init_distributed(device)
    try:
        model = load_model(teacher_path, device=str(info.device))
        cfg = SynthesisConfig(n_samples=n_samples, batch_size=batch_size, iterations=iterations,
                              coefficients=coefficients, labels=labels, method=synthesis, seed=seed)
        if overwrite:  # rank 0 clears the folder (only a shieldkit one) before any rank resumes into it
            if info.rank == 0:
                from shieldkit.utils.fingerprint import clear_run

                clear_run(Path(out))
            dist.barrier()
        synthesize_distributed(model, out, cfg, device=info.device)
        if info.rank == 0:
            save_run_metadata(out, {"synthesis": cfg, "cli": resolved_config(ctx)}, seed)
            tp = load_synthetic(out).throughput()
            console.print(f"{cfg.n_samples} samples in {out}  ({tp['samples_per_s']:.2f} samples/s, "
                          f"{tp['sample_iters_per_s']:.0f} sample-iterations/s, {info.world_size} process(es))")
    finally:
        dist.cleanup()


def train_synthetic(
    ctx: typer.Context,
    teacher_path: Annotated[Path, typer.Option("--teacher", help="teacher weights")],
    synthetic: Annotated[Path, typer.Option(help="synthetic set directory (from `synthesize`)")],
    out: Annotated[Path, typer.Option(help="run directory (checkpoints; resumable)")],
    config: Config = None,
    objective: str = "dfshield",
    eps: Annotated[str | None, typer.Option(help=EPS_HELP)] = None,
    norm: str = "linf",
    epochs: int = 30,
    lr: float = 0.01,
    batch_size: int = 200,
    grad_refine: Annotated[int, typer.Option(help="GradRefine ℬ (1 = off)")] = 1,
    tau: float = 0.5,
    seed: int = 0,
    device: Device = "auto",
    overwrite: Overwrite = False,
) -> None:
    """Robust training of a copy of the teacher on a synthetic set (no real data)."""
    from shieldkit.models import load_model, save_model
    from shieldkit.synthesis import load_synthetic
    from shieldkit.training.robust import RobustTrainConfig, init_student, train_robust
    from shieldkit.utils import validate as v

    v.check_model_path(teacher_path, "--teacher")
    v.check_existing_dir(synthetic, "--synthetic")
    v.check_out_dir(out)
    v.check_norm(norm)
    if eps is not None:
        v.check_eps(eps, norm)
    for value, flag in ((epochs, "--epochs"), (batch_size, "--batch-size"), (grad_refine, "--grad-refine")):
        v.check_positive_int(value, flag)
    v.check_positive_float(lr, "--lr")
    v.check_fraction(tau, "--tau", closed=True)
    dev = v.resolve_device(device)
    e = resolve_threat_model(eps, norm, model=teacher_path, ctx=ctx).eps
    t = load_model(teacher_path, device=str(dev))
    syn = load_synthetic(synthetic)
    cfg = RobustTrainConfig(objective=objective, eps=e, norm=norm, epochs=epochs, lr=lr,
                            batch_size=batch_size, grad_refine_batches=grad_refine, tau=tau, seed=seed)
    from shieldkit.utils.fingerprint import fingerprint_model, fingerprint_synthetic

    student, _ = train_robust(init_student(t), syn.x, cfg, y=syn.y, t_logits=syn.t_logits, out_dir=out, device=dev,
                              inputs={"teacher": fingerprint_model(t), "synthetic": fingerprint_synthetic(syn)},
                              overwrite=overwrite)
    save_model(student, Path(out) / "model", method=objective, training=cfg.to_dict())
    from shieldkit.config import resolved_config, save_run_metadata

    save_run_metadata(out, {"training": cfg, "cli": resolved_config(ctx)}, seed)
    console.print(f"robust model: {out}/model.safetensors")


def shield_cmd(
    ctx: typer.Context,
    teacher_path: Annotated[Path, typer.Option("--teacher", help="teacher weights (.safetensors + .json)")],
    out: Annotated[Path, typer.Option(help="run directory (resumable)")] = Path("runs/shield"),
    config: Annotated[Path | None, typer.Option(help="YAML with synthesis/training/evaluation sections, or a "
                                                     "preset name such as paper/cifar10-resnet20-linf4")] = None,
    data: Annotated[str | None, typer.Option(help="real test set for evaluation only (default: teacher's)")] = None,
    data_root: str | None = None,
    quick: Annotated[bool, typer.Option(help="~2-minute smoke run; with --config: the config's method and ε at the "
                                             "quick run's sizes (see cli.common.apply_quick)")] = False,
    no_eval: Annotated[bool, typer.Option("--no-eval", help="label-free mode (automatic when no dataset is "
                                          "known): report on held-out synthetic samples labelled by the teacher — "
                                          "synthetic, not a claim about real data")] = False,
    eps: Annotated[str | None, typer.Option(help="ε, e.g. 0.1 or 8/255 (default: the --config file's, else the "
                                            "threat model of the teacher card's dataset / --data — ℓ∞ 0.1 for "
                                            "mnist5k/digits, 8/255 for CIFAR/SVHN/MedMNIST)")] = None,
    synthesis: Annotated[str | None, typer.Option("--synthesis", help=SYNTHESIS_HELP + " (default: the "
                                                                    "--config file's, else the demo's)")] = None,
    device: Device = "auto",
    overwrite: Overwrite = False,
) -> None:
    """The main job: shield your model — DataFreeShield synthesize → train → evaluate + audit, no training data
    needed. Writes the shielded model, results.json, model_card.json and report.html into --out and prints
    their paths."""
    from shieldkit.data import validate as dv
    from shieldkit.models import load_model
    from shieldkit.pipeline import demo_config, print_outputs, resolve_eval_data, shield, shield_outputs
    from shieldkit.reporting.demo_report import print_summary
    from shieldkit.synthesis.config import METHODS
    from shieldkit.utils import validate as v

    v.check_model_path(teacher_path, "--teacher")
    v.check_out_dir(out)
    if synthesis is not None:
        v.check_choice(synthesis, METHODS, "--synthesis")
    dv.check_dataset(data, data_root)
    if eps is not None:
        v.check_eps(eps, "l2")  # > 0 and finite; the bound for the config's norm is checked below
    dev = v.resolve_device(device)
    t = load_model(teacher_path, device=str(dev))
    from shieldkit.config import load_config, resolved_config, save_run_metadata, shield_config

    file_cfg = load_config(config) if config else {}
    cfg = shield_config(file_cfg) if config else demo_config(quick=quick)
    if config and quick:
        changes = apply_quick(cfg)
        console.print(f"--quick on --config {config}: " + (", ".join(changes) or "nothing to cap (the config is "
                                                                                "no larger than the quick run)"),
                      highlight=False, soft_wrap=True)
    if synthesis is not None:
        cfg.synthesis = dataclasses.replace(cfg.synthesis, method=synthesis)  # re-validated
    file_eps = (file_cfg.get("training") or {}).get("eps")
    cfg.training.eps = resolve_threat_model(eps if eps is not None else file_eps, cfg.training.norm, model=t,
                                            data=data, config=str(config) if eps is None and file_eps is not None
                                            else None).eps
    test, label_free = resolve_eval_data(t, data, data_root, no_eval=no_eval)
    if label_free:
        console.print(f"label-free mode ({label_free}): evaluating on held-out synthetic samples — synthetic, "
                      "not a claim about real data", highlight=False, soft_wrap=True)
    res = shield(t, out, cfg, test_data=test, device=dev, overwrite=overwrite, report=True, teacher_file=teacher_path,
                 synthetic_eval=test is None)
    save_run_metadata(out, {"shield": cfg, "cli": resolved_config(ctx)}, cfg.synthesis.seed)  # after the work
    print_summary(res, console)
    print_outputs(shield_outputs(out), console)


def demo(
    quick: Annotated[bool, typer.Option(help="~2-minute smoke run with tiny settings")] = False,
    out: Path = Path("runs/demo"),
    device: Device = "auto",
    overwrite: Overwrite = False,
) -> None:
    """Canned walkthrough on MNIST-5k: trains a teacher, then runs `shield` on it (report.html, model_card.json).

    `shield` is the main job on your own model; `demo` shows it end to end with nothing to bring."""
    from shieldkit.pipeline import run_demo
    from shieldkit.utils.device import resolve_device
    from shieldkit.utils.validate import check_out_dir

    check_out_dir(out)
    run_demo(out, quick=quick, device=resolve_device(device), overwrite=overwrite)
