"""`shieldkit train` (classic adversarial training / early defences on real labelled data) and
`shieldkit certify` (randomised-smoothing certificates) — thin layers over the Python API."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from shieldkit.cli.common import EPS_HELP_DATA, alias_value, console, parse_eps, resolve_threat_model

TRAIN_METHODS = ("pgd_at", "std", "trades", "mart", "fgsm_at", "alp", "clp", "vat", "dynamic_at", "igr",
                 "mmc", "gaussian_aug", "distillation")


def _parse_kwargs(items: list[str]) -> dict:
    """``--kw beta=6 --kw lam=0.5`` → {"beta": 6.0, "lam": 0.5} (JSON values, else strings)."""
    out = {}
    for item in items:
        if "=" not in item:
            raise typer.BadParameter(f"--kw expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


_commands = typer.Typer()  # collects the commands; register() adds them to the main app



def _check_train_flags(ctx: typer.Context, *, method: str, data: str, data_root: str | None, out: Path,
                       init: Path | None, norm: str, eps: str | None, alpha: str | None, epochs: int, steps: int,
                       batch_size: int, lr: float, temperature: float, eval_n: int, eval_n_old: int | None,
                       start: str, kw: list[str]) -> int:
    """Every ``train`` flag checked before anything is loaded or written; returns the resolved ``--n``."""
    from shieldkit.data import validate as dv
    from shieldkit.utils import validate as v

    v.check_choice(method, TRAIN_METHODS, "--method")
    dv.check_dataset(data, data_root)
    v.check_out_dir(out)
    if init is not None:
        v.check_model_path(init, "--init")
    v.check_norm(norm)
    if eps is not None:
        v.check_eps(eps, norm)
    if alpha is not None:
        v.check_positive_float(parse_eps(alpha, "--alpha"), "--alpha")
    for value, flag in ((epochs, "--epochs"), (steps, "--steps"), (batch_size, "--batch-size")):
        v.check_positive_int(value, flag)
    v.check_positive_float(lr, "--lr")
    v.check_positive_float(temperature, "--temperature")
    eval_n, n_flag = alias_value(ctx, "eval_n", eval_n, eval_n_old, "--n", "--eval-n")
    v.check_nonnegative_int(eval_n, n_flag)
    v.check_choice(start, ("uniform", "normal"), "--start")
    _parse_kwargs(kw)
    return eval_n


@_commands.command("train")
def train(
    ctx: typer.Context,
    method: str = typer.Option(..., help=f"one of: {', '.join(TRAIN_METHODS)}"),
    data: str = typer.Option("mnist5k", help="registry dataset (real labels are used)"),
    data_root: str | None = typer.Option(None, "--data-root", help="root folder for local datasets"),
    out: Path = typer.Option(..., help="output directory (checkpoint, model, history); resumable"),
    arch: str = typer.Option("mnist_cnn", help="architecture when training from scratch"),
    init: Path | None = typer.Option(None, help="start from this pretrained model (fine-tuning)"),
    eps: str | None = typer.Option(None, help=EPS_HELP_DATA),
    norm: str = typer.Option("linf"),
    epochs: int = typer.Option(10),
    steps: int = typer.Option(10, help="inner PGD steps"),
    alpha: str | None = typer.Option(None, help="inner step size (default 2.5·eps/steps)"),
    start: str = typer.Option("uniform", help="PGD start: uniform (Madry) | normal (TRADES reference)"),
    batch_size: int = typer.Option(128),
    lr: float = typer.Option(0.05),
    kw: list[str] = typer.Option([], help="objective kwargs key=value (beta=6, lam=0.5, sigma=0.25, …)"),
    temperature: float = typer.Option(100.0, help="defensive distillation temperature T"),
    eval_n: int = typer.Option(200, "--n", help="test points for the final clean/PGD-20 check (0: skip)"),
    eval_n_old: int | None = typer.Option(None, "--eval-n", hidden=True, help="old spelling of --n"),
    seed: int = typer.Option(0),
    device: str = typer.Option("auto"),
) -> None:
    """Train a classic robust model on real labelled data (PGD-AT, TRADES, MART, FGSM-AT, ALP/CLP, VAT,
    Dynamic AT, IGR, MMC, Gaussian augmentation for smoothing, defensive distillation)."""
    from shieldkit.data import load_dataset
    from shieldkit.defenses.mmc import attach_mmc_head
    from shieldkit.evaluation.basic import evaluate_basic
    from shieldkit.models import create_model, load_model, save_model
    from shieldkit.training.defense_training import train_defensive_distillation
    from shieldkit.training.robust import RobustTrainConfig, init_student, train_robust
    from shieldkit.utils.device import resolve_device
    from shieldkit.utils.io import atomic_write_json

    eval_n = _check_train_flags(ctx, method=method, data=data, data_root=data_root, out=out, init=init, norm=norm,
                                eps=eps, alpha=alpha, epochs=epochs, steps=steps, batch_size=batch_size, lr=lr,
                                temperature=temperature, eval_n=eval_n, eval_n_old=eval_n_old, start=start, kw=kw)
    dev = resolve_device(device)
    e = resolve_threat_model(eps, norm, model=init, data=data).eps
    train_set, test_set = load_dataset(data, "train", root=data_root), load_dataset(data, "test", root=data_root)
    c, h = train_set.x.shape[1], train_set.x.shape[2]
    ncls = len(train_set.classes)

    def fresh():  # noqa: ANN202
        return create_model(arch, num_classes=ncls, in_channels=c, image_size=h, dataset=data,
                            classes=train_set.classes)

    out.mkdir(parents=True, exist_ok=True)
    if method == "distillation":
        model, _ = train_defensive_distillation(fresh, train_set, temperature=temperature, epochs=epochs,
                                                device=dev, seed=seed, progress=True)
    else:
        model = init_student(load_model(init, device=str(dev))) if init is not None else fresh()
        if method == "mmc":
            attach_mmc_head(model)
        kwargs = _parse_kwargs(kw)
        cfg = RobustTrainConfig(objective=method, objective_kwargs=kwargs, eps=e, norm=norm,
                                attack_steps=steps,
                                attack_alpha=parse_eps(alpha) if alpha else 2.5 * e / max(steps, 1),
                                attack_start=start, epochs=epochs, batch_size=batch_size, lr=lr,
                                seed=seed)
        if method == "dynamic_at" and "total_updates" not in kwargs:  # the FOSC schedule's horizon
            kwargs["total_updates"] = cfg.updates_per_epoch(len(train_set)) * epochs
        model, _ = train_robust(model, train_set.x, cfg, y=train_set.y, out_dir=out, device=dev)
    if method == "mmc":  # the registry cannot rebuild an MMC head: keep the state dict only
        from shieldkit.utils.io import save_tensors
        save_tensors(out / "model_mmc.safetensors", model.state_dict())
    else:
        save_model(model, out / "model", method=method, eps=e, norm=norm)
    console.print(f"saved model to {out}")
    if eval_n > 0:
        res = evaluate_basic(model, test_set, norm=norm, eps=e, n=eval_n, seed=seed, autoattack=False,
                             device=dev)
        res.pop("per_point", None)
        atomic_write_json(out / "eval_basic.json", res)
        console.print(f"clean {res['clean_acc']:.1%}  PGD-20 {res['pgd_acc']:.1%} "
                      f"(n={res['n']}, ε={e:g}); run `shieldkit evaluate` for the full audited suite")


@_commands.command("certify")
def certify(
    ctx: typer.Context,
    model_path: Path = typer.Option(..., "--model",
                                    help="base classifier (trained with --method gaussian_aug)"),
    sigma: float = typer.Option(..., help="Gaussian noise level σ the base classifier was trained with"),
    data: str = typer.Option("mnist5k"),
    data_root: str | None = typer.Option(None, "--data-root", help="root folder for local datasets"),
    split: str = typer.Option("test"),
    points: int = typer.Option(100, "--n", help="number of test points (fixed stratified subset)"),
    points_old: int | None = typer.Option(None, "--points", hidden=True, help="old spelling of --n"),
    n0: int = typer.Option(100, help="selection samples"),
    n: int = typer.Option(1000, "--n-samples", help="Monte-Carlo estimation samples per point (Cohen et al.'s "
                                                    "n; before issue 15 this flag was --n)"),
    alpha: float = typer.Option(0.001, help="failure probability"),
    radii: str = typer.Option("0.25,0.5,1.0"),
    out: Path | None = typer.Option(None, help="write per-point certificates and the curve as JSON"),
    seed: int = typer.Option(0),
    device: str = typer.Option("auto"),
) -> None:
    """Randomised-smoothing certificates (Cohen et al. 2019 CERTIFY) and certified accuracy at radii."""
    from shieldkit.data import load_dataset
    from shieldkit.data import validate as dv
    from shieldkit.defenses.smoothing import (
        Smooth,
        certified_accuracy,
        certified_accuracy_curve,
        certify_dataset,
        max_certifiable_radius,
    )
    from shieldkit.models import load_model
    from shieldkit.utils import validate as v
    from shieldkit.utils.device import resolve_device
    from shieldkit.utils.io import atomic_write_json

    v.check_positive_float(sigma, "--sigma")
    points, points_flag = alias_value(ctx, "points", points, points_old, "--n", "--points")
    for value, flag in ((points, points_flag), (n0, "--n0"), (n, "--n-samples")):
        v.check_positive_int(value, flag)
    v.check_fraction(alpha, "--alpha")
    rs = v.parse_float_list(radii, "--radii")
    v.check_choice(split, ("train", "test"), "--split")
    dv.check_dataset(data, data_root)
    v.check_model_path(model_path, "--model")
    v.check_out_file(out)
    dev = resolve_device(device)
    model = load_model(model_path, device=str(dev))
    ds = load_dataset(data, split, root=data_root).subset(points, seed=seed)
    v.check_model_fits_data(model, ds, data_name=data)
    smooth = Smooth(model, len(ds.classes), sigma, device=dev)
    recs = certify_dataset(smooth, ds.x, ds.y, n0=n0, n=n, alpha=alpha, seed=seed)
    acc = certified_accuracy(recs, rs)
    for r, a in acc.items():
        console.print(f"certified accuracy at ℓ2 radius {r:g}: {a:.1%}")
    rmax = max_certifiable_radius(sigma, n, alpha)
    console.print(f"({len(recs)} points, n0={n0}, n-samples={n}, α={alpha}; "
                  f"largest certifiable radius {rmax:.2f})")
    if out is not None:
        atomic_write_json(out, {"sigma": sigma, "n0": n0, "n": n, "alpha": alpha, "points": len(recs),
                                "certified_accuracy": {str(k): v for k, v in acc.items()},
                                "curve": certified_accuracy_curve(recs), "max_certifiable_radius": rmax,
                                "records": recs})


def register(app: typer.Typer) -> None:
    for cmd in _commands.registered_commands:
        app.registered_commands.append(cmd)
