"""Helpers shared by the command modules: parsing, console, and the one place every command resolves
its threat model (:func:`resolve_threat_model`), its deprecated flag spellings (:func:`alias_value`) and
``--quick`` on top of ``--config`` (:func:`apply_quick`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from shieldkit.errors import InputError
from shieldkit.utils.validate import parse_eps, parse_int_list

console = Console()

__all__ = ["EPS_HELP", "EPS_HELP_DATA", "ResolvedEps", "alias_value", "apply_quick", "console", "model_dataset",
           "parse_budgets", "parse_eps", "resolve_threat_model"]

EPS_HELP = ("ε, e.g. 0.1 or 8/255 (default: the threat model of the model card's dataset — ℓ∞ 0.1 for "
            "mnist5k/digits, 8/255 for CIFAR/SVHN/MedMNIST; the value used is printed)")
EPS_HELP_DATA = EPS_HELP.replace("model card's dataset", "model card's dataset, else of --data")
_NORM_SYMBOL = {"linf": "ℓ∞", "l2": "ℓ2"}


def parse_budgets(text: str, flag: str = "--budgets") -> list[int]:
    """Comma-separated query budgets → sorted unique positive ints (``InputError`` naming the flag)."""
    return parse_int_list(text, flag)


# ----------------------------------------------------------------------------- threat model
@dataclass(frozen=True)
class ResolvedEps:
    """The ε a command runs at, its norm, and where it came from (printed once by the command)."""

    eps: float
    norm: str
    source: str
    dataset: str | None = None

    def line(self) -> str:
        from shieldkit.data.threat_models import format_eps

        return f"ε = {format_eps(self.eps)} ({_NORM_SYMBOL.get(self.norm, self.norm)}, {self.source})"


def model_dataset(model: Any) -> str:
    """``card.dataset`` of a model given loaded (anything with a ``.card``) or as a path (``X``,
    ``X.safetensors`` or ``X.json``; only the JSON sidecar is read). ``""`` if it names none."""
    if model is None:
        return ""
    card = getattr(model, "card", None)
    if card is not None:
        return str(getattr(card, "dataset", "") or "")
    from shieldkit.utils.io import read_json

    p = Path(model).expanduser()
    stem = p.with_suffix("") if p.suffix in (".safetensors", ".json") else p
    sidecar = stem.with_name(stem.name + ".json")
    if not sidecar.is_file():
        return ""
    card_dict = read_json(sidecar)
    return str(card_dict.get("dataset") or "") if isinstance(card_dict, dict) else ""


def _config_source(ctx: Any, param: str) -> str | None:
    """``"--config NAME"`` if the option ``param`` got its value from a ``--config`` file (click's default_map)."""
    if ctx is None:
        return None
    src = ctx.get_parameter_source(param)
    if getattr(src, "name", "") != "DEFAULT_MAP":
        return None
    meta = ctx.meta.get("shieldkit_config") or {}
    return f"from --config {meta.get('path', '')}".rstrip()


def resolve_threat_model(eps: str | float | None, norm: str = "linf", *, model: Any = None, data: str | None = None,
                         ctx: Any = None, param: str = "eps", flag: str = "--eps", config: str | None = None,
                         announce: bool = True) -> ResolvedEps:
    """ε and norm for a command, in this order:

    1. ``eps`` given: the flag (or, when ``ctx`` shows the value came from a ``--config`` file's default
       map, that file; ``config`` names the file for commands that read it themselves);
    2. the threat model registered for the model card's dataset (``model``: a loaded model or a model path);
    3. the one registered for ``data`` (the ``--data`` name) where the card names none;
    4. :data:`shieldkit.data.threat_models.GENERIC` (ℓ∞ 8/255, ℓ2 0.5), saying there is no default.

    Validated like every ε (``InputError`` naming ``flag``). With ``announce`` the result is printed once to
    stderr (stdout may carry JSON) as e.g. ``ε = 0.1 (ℓ∞, default for mnist5k)``.
    """
    from shieldkit.data.threat_models import GENERIC, default_threat_model
    from shieldkit.utils import validate as v

    norm = v.check_norm(norm)
    if eps is not None:
        value = v.check_eps(eps, norm, flag=flag)
        source = (f"from --config {config}" if config else None) or _config_source(ctx, param) or f"from {flag}"
        res = ResolvedEps(value, norm, source)
    else:
        card_ds = model_dataset(model)
        candidates = [(card_ds, ", the model card's dataset" if data and data != card_ds else "")] if card_ds else []
        if data and data != card_ds:
            candidates.append((data, f" (--data; the model card's {card_ds!r} has none)" if card_ds else ""))
        for name, why in candidates:
            tm = default_threat_model(name, norm)
            if tm is not None:
                res = ResolvedEps(tm.eps, norm, f"default for {name}{why}", name)
                break
        else:
            named = candidates[0][0] if candidates else None
            what = f"dataset {named!r}" if named else "a model whose card names no dataset"
            res = ResolvedEps(GENERIC[norm].eps, norm, f"no default for {what}: RobustBench's common value — "
                                                        f"pass {flag} to choose", named)
    if announce:
        typer.echo(res.line(), err=True)
    return res


# ----------------------------------------------------------------------------- flag spellings
def alias_value(ctx: Any, name: str, value: Any, alias: Any, flag: str, alias_flag: str) -> tuple[Any, str]:
    """The value of option ``name`` (``flag``) given its hidden old spelling ``alias_flag`` (default None):
    ``(value, the flag the user typed)``; both typed is an ``InputError``."""
    if alias is None:
        return value, flag
    src = ctx.get_parameter_source(name) if ctx is not None else None
    if getattr(src, "name", "") in ("COMMANDLINE", "ENVIRONMENT"):
        raise InputError(f"{flag} and {alias_flag} are the same option: give one", hint=f"use {flag}")
    return alias, alias_flag


# ----------------------------------------------------------------------------- --quick with --config
def apply_quick(cfg: Any) -> list[str]:
    """``--quick`` on top of a ``--config``: cap the config's compute budget at the quick run's, in place.

    Chosen over refusing the combination because "smoke-test this preset before the GPU-hours run" is the
    point of ``--quick``. The config is applied first, then only its *sizes* are capped at
    :func:`shieldkit.pipeline.demo_config` ``(quick=True)``'s — synthesis ``n_samples`` and ``iterations``,
    training ``epochs``, evaluation ``n``, ``aa_n`` and ``curve_n`` (each ``min(config, quick)``, so a config already
    smaller is untouched) — and GradRefine's ℬ to the minibatches the capped set holds (ℬ × batch size
    beyond the set would train on empty batches). The method and the threat model (objective, ε, norm, lr,
    attack, labels, coefficients, seeds) stay the config's, which is what makes the combination well
    defined. The fast synthesis path's generator warm-up is capped too (``synthesis.fast.warmup_batches``).
    Returns the changes, e.g. ``["synthesis.n_samples 60000 → 400", …]``.
    """
    from shieldkit.pipeline import demo_config

    quick = demo_config(quick=True)
    changes: list[str] = []

    def cap(section: str, key: str, limit: int) -> None:
        obj = cfg
        for part in section.split("."):
            obj = getattr(obj, part)
        old = getattr(obj, key)
        if old > limit:
            setattr(obj, key, limit)
            changes.append(f"{section}.{key} {old} → {limit}")

    cap("synthesis", "n_samples", quick.synthesis.n_samples)
    cap("synthesis", "iterations", quick.synthesis.iterations)
    if cfg.synthesis.method == "fast":  # the generator's warm-up is the fast path's fixed cost
        cap("synthesis.fast", "warmup_batches", quick.synthesis.fast.warmup_batches)
    cap("training", "epochs", quick.training.epochs)
    cap("training", "grad_refine_batches", max(1, cfg.synthesis.n_samples // cfg.training.batch_size))
    cap("evaluation", "n", quick.evaluation.n)
    cap("evaluation", "aa_n", min(quick.evaluation.aa_n, cfg.evaluation.n))
    cap("evaluation", "curve_n", quick.evaluation.curve_n)
    return changes
