"""Scale-out and plug-in commands: ``import-model``, ``dist-train``, ``dist-evaluate``.

The ``dist-*`` commands are meant for ``torchrun`` (they also run in one process)::

    torchrun --nproc_per_node=4 -m shieldkit synthesize --config paper/cifar10-resnet20-linf4 \
        --teacher runs/t/model --out runs/syn
    torchrun --nproc_per_node=4 -m shieldkit dist-train --teacher runs/t/model --synthetic runs/syn --out runs/train
    torchrun --nproc_per_node=4 -m shieldkit dist-evaluate --model runs/train/model --data cifar10

Every command takes ``--config`` (a YAML file or a preset such as ``paper/cifar10-resnet20-linf4``);
flags typed on the command line override it. Models are loaded with
:func:`shieldkit.models.bundle.load_imported`, so registry models and imported ones both work.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from shieldkit.cli.common import EPS_HELP, EPS_HELP_DATA
from shieldkit.config import config_option

Device = Annotated[str, typer.Option(help="auto | cpu | cuda (under torchrun: this rank's GPU)")]


def _floats(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(t) for t in text.replace(",", " ").split()]
    except ValueError as exc:
        raise typer.BadParameter(f"expected numbers separated by commas, got {text!r}") from exc


def _rank0() -> bool:
    """Under torchrun only rank 0 announces (the ε line is printed before the process group exists)."""
    return os.environ.get("RANK", "0") == "0"


def register(app: typer.Typer) -> None:
    app.command("import-model")(import_model_cmd)
    app.command("dist-train")(dist_train)
    app.command("dist-evaluate")(dist_evaluate)


def _check_import_flags(*, out: Path, weights: Path | None, data: str | None, data_root: str | None,
                        num_classes: int | None, in_channels: int | None, image_size: int | None,
                        check_n: int) -> None:
    from shieldkit.data import validate as dv
    from shieldkit.utils import validate as v

    v.check_out_file(out)
    v.check_existing_file(weights, "--weights")
    dv.check_dataset(data, data_root)
    if num_classes is not None:
        v.check_num_classes(num_classes)
    for value, flag in ((in_channels, "--in-channels"), (image_size, "--image-size")):
        if value is not None:
            v.check_positive_int(value, flag)
    v.check_nonnegative_int(check_n, "--check-n")


def _print_import_summary(model) -> None:  # noqa: ANN001 - a NormalizedClassifier
    """One line: the discovered head, the features' width, the BatchNorm count, how it was imported."""
    import torch

    from shieldkit.cli.common import console
    from shieldkit.models import bn_layers

    info = model.card.extra["import"]
    if model.card.extra.get("features", True):
        with torch.no_grad():
            x = torch.rand(1, model.card.in_channels, model.card.image_size, model.card.image_size)
            features = f"{model.features(x).shape[1]}-d"
    else:
        features = "none (evaluation only)"
    console.print(f"head: {info['head_layer']}  features: {features}  BatchNorm layers: {len(bn_layers(model))}  "
                  f"channel repeat: {info['channel_repeat']}  ({info.get('how', info['source'])})")


def import_model_cmd(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(help="timm:NAME | torchvision:NAME | pytorchcv:NAME | registry name | "
                                          "TorchScript file | path/to/file.py:ClassName")],
    out: Annotated[Path, typer.Option(help="where to save (safetensors + JSON sidecar), without extension")],
    config: Annotated[Path | None, config_option()] = None,
    arch: Annotated[str | None, typer.Option(help="with a TorchScript file: load its weights into this eager "
                                             "architecture")] = None,
    weights: Annotated[Path | None, typer.Option(help="state_dict file (.safetensors / .pt, weights_only)")] = None,
    init_args: Annotated[str | None, typer.Option("--init-args", help="with FILE.py:ClassName: the constructor's "
                                                  "keyword arguments as a JSON object, e.g. '{\"width\": 8}'")
                         ] = None,
    data: Annotated[str | None, typer.Option(help="dataset: image shape, classes, and the normalisation check "
                                             "on its test split")] = None,
    data_root: Annotated[str | None, typer.Option(help="root folder for local datasets")] = None,
    num_classes: Annotated[int | None, typer.Option(help="default: the dataset's / the head's")] = None,
    in_channels: Annotated[int | None, typer.Option(help="default: the dataset's")] = None,
    image_size: Annotated[int | None, typer.Option(help="default: the dataset's")] = None,
    mean: Annotated[str | None, typer.Option(help="the model's input normalisation mean, e.g. 0.4914,0.4822,0.4465 "
                                             "(default 0: raw [0,1] inputs)")] = None,
    std: Annotated[str | None, typer.Option(help="normalisation std (default 1)")] = None,
    head_layer: Annotated[str | None, typer.Option("--head-layer", help="name of the final nn.Linear")] = None,
    features_layer: Annotated[str | None, typer.Option("--features-layer",
                                                       help="layer whose flattened output is the features")] = None,
    check_n: Annotated[int, typer.Option(help="test points for the normalisation check (0: skip)")] = 500,
) -> None:
    """Import a user's classifier: a Python class + state_dict, torchvision / timm / pytorchcv, TorchScript.

    Imported as a shieldkit model: [0,1] inputs with declared normalisation, head/features/BatchNorm discovery, sanity
    check. A TorchScript file or a Python class file is copied next to the saved weights (OUT.arch.ts /
    OUT.arch.py, sha256 in OUT.json): the saved model is self-contained and its folder can be moved."""
    import warnings

    from shieldkit.cli.common import console
    from shieldkit.config import resolved_config, save_run_metadata
    from shieldkit.data import load_dataset
    from shieldkit.errors import InputError
    from shieldkit.models import save_model
    from shieldkit.models.importers import import_model
    from shieldkit.models.normcheck import check_input_normalisation
    from shieldkit.models.pysource import parse_init_args, split_class_spec

    _check_import_flags(out=out, weights=weights, data=data, data_root=data_root, num_classes=num_classes,
                        in_channels=in_channels, image_size=image_size, check_n=check_n)
    kwargs = parse_init_args(init_args)
    test = load_dataset(data, "test", root=data_root) if data else None
    c, h = (test.image_shape[0], test.image_shape[1]) if test is not None else (None, None)
    if init_args is not None and split_class_spec(source) is None:
        raise InputError(f"--init-args is for a Python class source (FILE.py:ClassName), not {source!r}")
    with warnings.catch_warnings(record=True) as caught:  # shieldkit errors propagate: ≤ 3 lines, exit 2
        warnings.simplefilter("always")
        model = import_model(source, arch=arch, weights=weights,
                             num_classes=num_classes or (test.num_classes if test is not None else None),
                             in_channels=in_channels or c, image_size=image_size or h or 32, mean=_floats(mean),
                             std=_floats(std), head_layer=head_layer, features_layer=features_layer,
                             dataset=data or "", classes=test.classes if test is not None else None,
                             init_args=kwargs)
    for msg in dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, UserWarning)):
        typer.echo(f"warning: {msg}", err=True)
    _print_import_summary(model)
    if test is not None and check_n > 0:
        sub = test.subset(check_n, seed=0)
        rep = check_input_normalisation(model, sub.x, sub.y)  # NormalisationMismatch: ≤ 3 lines, exit 2
        model.card.extra["normalisation_check"] = {k: v for k, v in rep.items() if k != "candidates"}
        console.print(f"clean accuracy on {len(sub)} {data} test points: "
                      f"{rep['candidates']['declared']['accuracy']:.2%} (normalisation check passed)")
    path = save_model(model, out)
    save_run_metadata(Path(str(out) + "_run"), resolved_config(ctx), seed=None)
    console.print(f"saved {path} — use it anywhere a model path is accepted (loaded by load_imported)")


def dist_train(
    ctx: typer.Context,
    teacher_path: Annotated[Path, typer.Option("--teacher", help="teacher weights (the student starts from it)")],
    synthetic: Annotated[Path, typer.Option(help="synthetic set directory")],
    out: Annotated[Path, typer.Option(help="run directory (checkpoints; resumable)")],
    config: Annotated[Path | None, config_option()] = None,
    objective: str = "dfshield",
    eps: Annotated[str | None, typer.Option(help=EPS_HELP)] = None,
    epochs: int = 30,
    lr: float = 0.01,
    batch_size: int = 200,
    grad_refine: Annotated[int, typer.Option(help="GradRefine ℬ over all ranks (multiple of the world size)")] = 1,
    tau: float = 0.5,
    seed: int = 0,
    tensorboard: Annotated[bool, typer.Option(help="log losses to OUT/tensorboard")] = False,
    device: Device = "auto",
) -> None:
    """Data-parallel robust training over torchrun ranks (GradRefine's sign agreement over all ranks)."""
    from shieldkit.cli.common import console, resolve_threat_model
    from shieldkit.config import RobustTrainConfig, explicit_params, load_config, save_run_metadata, stage_config
    from shieldkit.distributed import dist
    from shieldkit.distributed.training import train_robust_distributed
    from shieldkit.models import save_model
    from shieldkit.models.bundle import load_imported
    from shieldkit.synthesis import load_synthetic
    from shieldkit.training.robust import init_student
    from shieldkit.utils import validate as v

    v.check_model_path(teacher_path, "--teacher")
    v.check_existing_dir(synthetic, "--synthetic")
    v.check_out_dir(out)
    if eps is not None:
        v.check_eps(eps, "l2")  # > 0 and finite (the norm comes from the config)
    for value, flag in ((epochs, "--epochs"), (batch_size, "--batch-size"), (grad_refine, "--grad-refine")):
        v.check_positive_int(value, flag)
    v.check_positive_float(lr, "--lr")
    v.resolve_device(device)
    file_training = load_config(config).get("training", {}) if config else {}
    tm = resolve_threat_model(eps, file_training.get("norm", "linf"), model=teacher_path, ctx=ctx, announce=_rank0())
    names = {"grad_refine": "grad_refine_batches"}
    keys = ("objective", "eps", "epochs", "lr", "batch_size", "grad_refine", "tau", "seed")
    defaults = {names.get(k, k): v for k, v in ctx.params.items() if k in keys}
    defaults["eps"] = tm.eps
    flags = {names.get(k, k): v for k, v in explicit_params(ctx).items() if k in keys}
    base = {**defaults, **file_training}
    cfg = stage_config(RobustTrainConfig, base, flags, "training")
    info = dist.init_distributed(device)
    try:
        teacher = load_imported(teacher_path, device=info.device)
        syn = load_synthetic(synthetic)
        student, hist = train_robust_distributed(init_student(teacher), syn.x, cfg, y=syn.y, t_logits=syn.t_logits,
                                                 out_dir=out, device=info.device, tensorboard=tensorboard)
        if info.is_main:
            save_model(student, Path(out) / "model", method=cfg.objective, training=cfg.to_dict(),
                       world_size=info.world_size, minibatches_per_update=hist["minibatches"])
            save_run_metadata(out, {"training": cfg, "world_size": info.world_size, "cli": _resolved(ctx)}, cfg.seed)
            console.print(f"robust model: {out}/model.safetensors ({info.world_size} process(es), "
                          f"{hist['minibatches']} minibatches per update)")
    finally:
        dist.cleanup()


def dist_evaluate(
    ctx: typer.Context,
    model_path: Annotated[Path, typer.Option("--model", help="model weights (registry or imported)")],
    data: Annotated[str, typer.Option(help="dataset name (its test split)")],
    config: Annotated[Path | None, config_option()] = None,
    data_root: str | None = None,
    eps: Annotated[str | None, typer.Option(help=EPS_HELP_DATA)] = None,
    norm: str = "linf",
    n_points: Annotated[int, typer.Option("--n", help="number of test points (stratified, seeded)")] = 1000,
    n_points_old: Annotated[int | None, typer.Option("--n-points", hidden=True, help="old spelling of --n")] = None,
    pgd_steps: int = 20,
    autoattack: bool = True,
    aa_version: str = "standard",
    chunk_size: Annotated[int, typer.Option(help="points per chunk (results depend on it, not on the ranks)")] = 250,
    seed: int = 0,
    out: Annotated[Path | None, typer.Option(help="write OUT/evaluation.json")] = None,
    device: Device = "auto",
) -> None:
    """Clean / PGD / AutoAttack evaluation with the test points sharded over torchrun ranks."""
    from shieldkit.cli.common import alias_value, console, resolve_threat_model
    from shieldkit.config import save_run_metadata
    from shieldkit.data import load_dataset
    from shieldkit.data import validate as dv
    from shieldkit.distributed import dist
    from shieldkit.distributed.evaluation import evaluate_distributed
    from shieldkit.models.bundle import load_imported
    from shieldkit.utils import validate as v
    from shieldkit.utils.io import atomic_write_json

    v.check_model_path(model_path, "--model")
    dv.check_dataset(data, data_root)
    v.check_norm(norm)
    if eps is not None:
        v.check_eps(eps, norm)
    n_points, n_flag = alias_value(ctx, "n_points", n_points, n_points_old, "--n", "--n-points")
    for value, flag in ((n_points, n_flag), (pgd_steps, "--pgd-steps"), (chunk_size, "--chunk-size")):
        v.check_positive_int(value, flag)
    v.check_out_dir(out)
    v.resolve_device(device)
    e = resolve_threat_model(eps, norm, model=model_path, data=data, ctx=ctx, announce=_rank0()).eps
    info = dist.init_distributed(device)
    try:
        from shieldkit.evaluation.basic import set_default_progress

        set_default_progress(info.is_main)  # one rank's per-chunk progress lines, not N interleaved copies
        model = load_imported(model_path, device=info.device)
        res = evaluate_distributed(model, load_dataset(data, "test", root=data_root), norm=norm, eps=e,
                                   n=n_points, seed=seed, pgd_steps=pgd_steps, autoattack=autoattack,
                                   aa_version=aa_version,
                                   chunk_size=chunk_size, device=info.device)
        if info.is_main:
            line = f"clean {res['clean_acc']:.2%}  PGD-{pgd_steps} {res['pgd_acc']:.2%}"
            if autoattack:
                line += f"  AutoAttack {res['autoattack_acc']:.2%}"
            console.print(f"{line}  (n = {res['n']}, {info.world_size} process(es))")
            if out is not None:
                atomic_write_json(Path(out) / "evaluation.json", res)
                save_run_metadata(out, _resolved(ctx), seed)
    finally:
        dist.cleanup()


def _resolved(ctx: typer.Context) -> dict:
    from shieldkit.config import resolved_config

    return resolved_config(ctx)
