"""`shieldkit atop pretrain|finetune|evaluate` — AToP purification defence (thin layer over
:mod:`shieldkit.defenses.atop`).

    shieldkit atop pretrain --data mnist5k --transform rt2 --out runs/atop/pre
    shieldkit atop pretrain --synthetic runs/demo/synthetic --transform rt2 --out runs/atop/pre_df
    shieldkit atop finetune --model teacher.safetensors --purifier runs/atop/pre/purifier.pt --data mnist5k \
        --out runs/atop/ft
    shieldkit atop evaluate --model teacher.safetensors --purifier runs/atop/ft/purifier.pt --data mnist5k --n 100
"""

from __future__ import annotations

from pathlib import Path

import typer

from shieldkit.cli.common import EPS_HELP_DATA

DATA_ROOT_HELP = "root folder for local datasets (cifar10, svhn, MedMNIST, imagefolder)"


def _training_images(data: str | None, synthetic: Path | None, data_root: str | None = None):  # noqa: ANN202
    """(x, y) from a dataset's training split, or a synthetic set labelled by the teacher's arg-max."""
    if (data is None) == (synthetic is None):
        raise typer.BadParameter("give exactly one of --data or --synthetic")
    if synthetic is not None:
        from shieldkit.synthesis import load_synthetic

        s = load_synthetic(synthetic)
        return s.x, s.t_logits.argmax(1)
    from shieldkit.data import load_dataset

    ds = load_dataset(data, "train", root=data_root)
    return ds.x, ds.y


atop = typer.Typer(help="AToP: adversarial training on purification (random transform → purifier → "
                        "frozen classifier).", no_args_is_help=True)


@atop.command("pretrain")
def pretrain_cmd(
    out: Path = typer.Option(..., "--out", "-o", help="output directory (purifier.pt, checkpoints)"),
    data: str | None = typer.Option(None, "--data", "-d", help="real training images (dataset name)"),
    data_root: str | None = typer.Option(None, "--data-root", help=DATA_ROOT_HELP),
    synthetic: Path | None = typer.Option(None, "--synthetic", help="DataFreeShield synthetic set directory"),
    transform: str = typer.Option("rt2", "--transform", help="rt1 | rt2 | rt3"),
    purifier: str = typer.Option("gated", "--purifier", help="gated (GAN, L_df) | ae (L_mae)"),
    width: int = typer.Option(8, "--width"),
    refine: bool = typer.Option(False, "--refine/--no-refine", help="DeepFill's second stage"),
    epochs: int = typer.Option(3, "--epochs"),
    n: int | None = typer.Option(None, "--n", help="use the first n training images"),
    adv_weight: float = typer.Option(0.01, "--adv-weight", help="weight of −E[D(g)] in L_df"),
    lr: float = typer.Option(1e-3, "--lr"),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device"),
) -> None:
    """Pre-train a purifier with L_org on clean (real or synthetic) images."""
    from shieldkit.cli.common import console
    from shieldkit.data import validate as dv
    from shieldkit.defenses.atop import PretrainConfig, PurifierConfig, TransformConfig, pretrain_purifier
    from shieldkit.utils import validate as v
    from shieldkit.utils.device import resolve_device

    v.check_out_dir(out)
    v.check_choice(transform, ("rt1", "rt2", "rt3"), "--transform")
    v.check_choice(purifier, ("gated", "ae"), "--purifier")
    for value, flag in ((width, "--width"), (epochs, "--epochs")) + (((n, "--n"),) if n is not None else ()):
        v.check_positive_int(value, flag)
    v.check_positive_float(lr, "--lr")
    v.check_nonnegative_float(adv_weight, "--adv-weight")
    dv.check_dataset(data, data_root)
    v.check_existing_dir(synthetic, "--synthetic")
    v.resolve_device(device)
    x, _ = _training_images(data, synthetic, data_root)
    x = x[:n] if n else x
    pcfg = PurifierConfig(kind=purifier, channels=int(x.shape[1]), width=width, refine=refine)
    _, _, hist = pretrain_purifier(x, TransformConfig(kind=transform), pcfg,
                                   PretrainConfig(epochs=epochs, lr=lr, adv_weight=adv_weight, seed=seed),
                                   out_dir=out, device=resolve_device(device))
    console.print(f"pretrained purifier → {out / 'purifier.pt'}; last epoch {hist[-1]}")


@atop.command("finetune")
def finetune_cmd(
    model: Path = typer.Option(..., "--model", "-m", help="frozen classifier (.safetensors + sidecar)"),
    purifier: Path = typer.Option(..., "--purifier", "-p", help="pre-trained purifier.pt"),
    out: Path = typer.Option(..., "--out", "-o"),
    data: str | None = typer.Option(None, "--data", "-d"),
    data_root: str | None = typer.Option(None, "--data-root", help=DATA_ROOT_HELP),
    synthetic: Path | None = typer.Option(None, "--synthetic", help="synthetic set (teacher pseudo-labels)"),
    eps: str | None = typer.Option(None, "--eps", help=f"ℓ∞ {EPS_HELP_DATA}"),
    epochs: int = typer.Option(1, "--epochs"),
    lam: float = typer.Option(0.1, "--lam", help="λ of Eq 5"),
    attack_steps: int = typer.Option(1, "--attack-steps", help="1 = FGSM (§4.1), >1 = PGD"),
    eot: int = typer.Option(2, "--eot", help="EOT samples of the pipeline in the training attack"),
    n: int | None = typer.Option(None, "--n"),
    lr: float = typer.Option(2e-4, "--lr"),
    adv_weight: float = typer.Option(0.01, "--adv-weight"),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device"),
) -> None:
    """AToP fine-tuning (Eq 5, 9; Algorithm 1) against the full pipeline, classifier frozen."""
    from shieldkit.cli.common import console, resolve_threat_model
    from shieldkit.data import validate as dv
    from shieldkit.defenses.atop import FinetuneConfig, finetune_purifier, load_purifier
    from shieldkit.models import load_model
    from shieldkit.utils import validate as v
    from shieldkit.utils.device import resolve_device

    v.check_model_path(model, "--model")
    v.check_existing_file(purifier, "--purifier")
    v.check_out_dir(out)
    if eps is not None:
        v.check_eps(eps, "linf")
    for value, flag in ((epochs, "--epochs"), (attack_steps, "--attack-steps"), (eot, "--eot")) + (
            ((n, "--n"),) if n is not None else ()):
        v.check_positive_int(value, flag)
    v.check_positive_float(lr, "--lr")
    v.check_nonnegative_float(lam, "--lam")
    v.check_nonnegative_float(adv_weight, "--adv-weight")
    dv.check_dataset(data, data_root)
    v.check_existing_dir(synthetic, "--synthetic")
    dev = resolve_device(device)
    e = resolve_threat_model(eps, "linf", model=model, data=data).eps
    x, y = _training_images(data, synthetic, data_root)
    x, y = (x[:n], y[:n]) if n else (x, y)
    net, pcfg, tcfg, ck = load_purifier(purifier, dev)
    disc = None
    if "discriminator" in ck:
        from shieldkit.defenses.atop import PatchDiscriminator

        disc = PatchDiscriminator(pcfg.channels)
        disc.load_state_dict(ck["discriminator"])
    cfg = FinetuneConfig(epochs=epochs, lam=lam, eps=e, attack_steps=attack_steps,
                         eot_samples=eot, lr=lr, adv_weight=adv_weight, seed=seed)
    _, hist = finetune_purifier(load_model(model), net, pcfg, tcfg, x, y, cfg, discriminator=disc,
                                out_dir=out, device=dev)
    console.print(f"fine-tuned ({cfg.describe_attack()}) → {out / 'purifier.pt'}; last epoch {hist[-1]}")


@atop.command("evaluate")
def evaluate_cmd(
    model: Path = typer.Option(..., "--model", "-m"),
    purifier: Path = typer.Option(..., "--purifier", "-p"),
    data: str = typer.Option(..., "--data", "-d"),
    data_root: str | None = typer.Option(None, "--data-root", help=DATA_ROOT_HELP),
    n: int = typer.Option(100, "--n", help="number of test points (stratified seeded subset)"),
    eps: str | None = typer.Option(None, "--eps", help=f"ℓ∞ {EPS_HELP_DATA}"),
    eot: int = typer.Option(4, "--eot"),
    pgd_steps: int = typer.Option(10, "--pgd-steps"),
    attacks: str = typer.Option("clean,fgsm,pgd_eot,bpda_eot,cw,autoattack_rand", "--attacks",
                                help="comma list; also pgd_l2_eot, stadv"),
    full_autoattack: bool = typer.Option(False, "--full-autoattack",
                                         help="official AutoAttack-rand budgets (100 iterations × 20 EOT)"),
    out: Path | None = typer.Option(None, "--out", "-o", help="write the results JSON here"),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device"),
) -> None:
    """Evaluate the defended pipeline with EOT / BPDA+EOT / AutoAttack-rand (and unseen attacks)."""
    from shieldkit.cli.common import console, resolve_threat_model
    from shieldkit.data import load_dataset
    from shieldkit.data import validate as dv
    from shieldkit.defenses.atop import load_pipeline
    from shieldkit.evaluation.atop import AToPEvalConfig, evaluate_pipeline
    from shieldkit.models import load_model
    from shieldkit.utils import validate as v
    from shieldkit.utils.device import resolve_device
    from shieldkit.utils.io import atomic_write_json

    v.check_model_path(model, "--model")
    v.check_existing_file(purifier, "--purifier")
    dv.check_dataset(data, data_root)
    if eps is not None:
        v.check_eps(eps, "linf")
    for value, flag in ((n, "--n"), (eot, "--eot"), (pgd_steps, "--pgd-steps")):
        v.check_positive_int(value, flag)
    v.check_out_file(out)
    dev = resolve_device(device)
    e = resolve_threat_model(eps, "linf", model=model, data=data).eps
    pipe = load_pipeline(purifier, load_model(model), dev)
    test = load_dataset(data, "test", root=data_root).subset(n, seed=seed)
    extra = {"aa_iters": None, "aa_eot": None} if full_autoattack else {}
    cfg = AToPEvalConfig(eps=e, eot=eot, pgd_steps=pgd_steps,
                         attacks=tuple(a.strip() for a in attacks.split(",") if a.strip()), seed=seed, **extra)
    res = evaluate_pipeline(pipe, test.x, test.y, cfg, device=dev, log=True)
    console.print(f"worst case over ℓ∞ attacks: {res['worst_case_linf']['acc']:.3f} (n={res['n']})")
    if out is not None:
        atomic_write_json(out, res)


def register(app: typer.Typer) -> None:
    app.add_typer(atop, name="atop")
