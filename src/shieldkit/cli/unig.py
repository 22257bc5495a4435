"""``shieldkit sqa``: score-based query attacks against a saved model, optionally behind UniG or RND.

A thin layer over :func:`shieldkit.attacks.query.run_query_suite` (the same function the evaluation
engine's ``--suite query`` calls), so the CLI and the Python API report identical numbers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from shieldkit.cli.common import EPS_HELP_DATA, console, parse_budgets, resolve_threat_model
from shieldkit.errors import InputError


def register(app: typer.Typer) -> None:
    app.command("sqa")(sqa)


def _defended(base, defence: str, *, sigma: float, seed: int, delta: float | None, lr: float | None,  # noqa: ANN001
              steps: int | None, references: Path | None):  # noqa: ANN202 - a Defense or the model itself
    """The system the attacks query: the model itself, RND (input noise σ) or UniG (UniGConfig overrides)."""
    import dataclasses

    from shieldkit.defenses.rnd import RandomNoiseDefense
    from shieldkit.defenses.unig import UniG, UniGConfig
    from shieldkit.utils.io import load_tensors

    if defence == "rnd":
        return RandomNoiseDefense(base, sigma, seed=seed)
    if defence != "unig":
        return base
    overrides = {k: v for k, v in {"delta": delta, "lr": lr, "steps": steps}.items() if v is not None}
    refs = None
    if references is not None:
        tensors = load_tensors(references)
        refs = tensors.get("x", next(iter(tensors.values())))
    return UniG(base, dataclasses.replace(UniGConfig(), **overrides), references=refs, seed=seed)


def _print_sqa(res: dict, defence: str, dataset_name: str, budget_list: list[int]) -> None:
    console.print(f"[bold]{defence}[/] on {dataset_name}: clean {100 * res['clean_accuracy']:.1f} % "
                  f"(n = {res['n']})")
    for name, r in res["attacks"].items():
        accs = " / ".join(f"{100 * r['robust_accuracy'][b]:.1f}" for b in budget_list)
        console.print(f"  {name:12s} robust @ {budget_list}: {accs}")
    console.print(f"  worst case: {' / '.join(f'{100 * v:.1f}' for v in res['worst_case'].values())}")


def sqa(
    model_path: Annotated[Path, typer.Option("--model", help="weights (.safetensors + .json sidecar)")],
    defence: Annotated[str, typer.Option(help="none | rnd | unig")] = "unig",
    data: Annotated[str | None, typer.Option(help="test dataset (default: the model card's)")] = None,
    data_root: Annotated[str | None, typer.Option(help="root folder for local datasets")] = None,
    eps: Annotated[str | None, typer.Option(help=EPS_HELP_DATA)] = None,
    norm: Annotated[str, typer.Option(help="linf | l2")] = "linf",
    budgets: Annotated[str, typer.Option(help="comma-separated query budgets")] = "100,2500",
    attacks: Annotated[str, typer.Option(help="comma-separated: square, simba_dct, simba_pixel, signhunter, "
                                               "nes, bandits")] = "square,simba_dct,signhunter,nes,bandits",
    n: Annotated[int, typer.Option(help="number of test points (fixed seeded subset)")] = 100,
    targeted: Annotated[bool, typer.Option(help="random-target attacks")] = False,
    delta: Annotated[float | None, typer.Option(help="UniG δ (default UniGConfig)")] = None,
    lr: Annotated[float | None, typer.Option(help="UniG α")] = None,
    steps: Annotated[int | None, typer.Option(help="UniG p")] = None,
    references: Annotated[Path | None, typer.Option(help="safetensors file whose 'x' (or only) tensor holds "
                                                          "reference images for single-sample UniG, e.g. "
                                                          "DataFreeShield synthetic samples")] = None,
    sigma: Annotated[float, typer.Option(help="RND noise σ")] = 0.02,
    seed: int = 0,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")] = "auto",
    out: Annotated[Path | None, typer.Option(help="write the results JSON here")] = None,
) -> None:
    """Robust accuracy under score-based query attacks (UniG Table 1 protocol) at each query budget."""

    from shieldkit.attacks.query import ATTACKS, run_query_suite
    from shieldkit.data import load_dataset
    from shieldkit.data import validate as dv
    from shieldkit.models import load_model
    from shieldkit.utils import validate as v
    from shieldkit.utils.device import resolve_device
    from shieldkit.utils.io import atomic_write_json

    names = [a.strip() for a in attacks.split(",") if a.strip()]
    if not names:
        raise InputError(f"--attacks {attacks!r}: no attack given", hint=f"choose from {', '.join(ATTACKS)}")
    for a in names:
        v.check_choice(a, ATTACKS, "--attacks")
    v.check_choice(defence, ("none", "rnd", "unig"), "--defence")
    v.check_norm(norm)
    if eps is not None:
        v.check_eps(eps, norm)
    budget_list = parse_budgets(budgets)
    v.check_positive_int(n, "--n")
    v.check_positive_float(sigma, "--sigma")
    for value, flag in ((delta, "--delta"), (lr, "--lr")):
        if value is not None:
            v.check_positive_float(value, flag)
    if steps is not None:
        v.check_positive_int(steps, "--steps")
    v.check_model_path(model_path, "--model")
    v.check_existing_file(references, "--references")
    dv.check_dataset(data, data_root)
    v.check_out_file(out)
    dev = resolve_device(device)
    e = resolve_threat_model(eps, norm, model=model_path, data=data).eps
    base = load_model(model_path, device=str(dev)).eval()
    dataset = load_dataset(data or base.card.dataset, split="test", root=data_root)
    v.check_model_fits_data(base, dataset, data_name=data or base.card.dataset)
    model = _defended(base, defence, sigma=sigma, seed=seed, delta=delta, lr=lr, steps=steps, references=references)
    res = run_query_suite(model, dataset, budgets=budget_list, eps=e, norm=norm, n=n, seed=seed,
                          attacks=names, targeted=targeted, device=dev)
    res["defence"] = defence
    _print_sqa(res, defence, dataset.name, budget_list)
    if out is not None:
        atomic_write_json(out, res)
        console.print(f"wrote {out}")
    else:
        console.print_json(json.dumps(res, default=str))
