"""YAML configs, paper presets, run metadata (and, re-exported, the optional TensorBoard logger).

Config files
------------
A config is a YAML mapping. Stage settings live in sections named after the API dataclasses they
fill — ``synthesis`` (:class:`~shieldkit.synthesis.SynthesisConfig`), ``training``
(:class:`~shieldkit.training.robust.RobustTrainConfig`), ``evaluation`` (the pipeline's ``EvalConfig``)
— plus descriptive ``teacher`` and ``data`` sections. Keys are validated against the dataclass fields
(a typo is an error with a suggestion, never silently ignored); ε-like values may be written as
fractions (``eps: 4/255``). Presets ship under ``configs/`` and are named by their path without the
extension: ``--config paper/cifar10-resnet20-linf4`` (a file path works too).

Command line: ``--config FILE`` and flags
-----------------------------------------
Every command takes ``--config``; flags given on the command line override the file, the file
overrides the command's defaults. Two mechanisms, both here:

* :func:`config_option` — an eager typer option whose callback puts the file's values into click's
  ``default_map``, so they become the defaults of the command's own options (flat keys named like the
  options, or the section the command maps to, see ``COMMAND_SECTIONS``/``KEY_ALIASES``). Keys the
  command has no option for are reported (they are not silently dropped).
* :func:`stage_config` with :func:`explicit_params` — build the stage dataclass from the file's section
  and override only the fields whose flags the user typed (``click.core.ParameterSource``), so a
  preset's settings that have no flag (momentum, weight decay, …) still reach the API.

Run metadata: :func:`save_run_metadata` writes ``run.json`` (resolved config, seed, package versions,
git revision, host, time) and ``config.yaml`` (the resolved config, re-runnable with ``--config``).

:class:`TensorBoardLogger` lives in :mod:`shieldkit.utils.tensorboard` (issue 14: the distributed trainer,
a lower layer, uses it) and is re-exported here.
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from shieldkit.errors import CorruptFileError, InputError, MissingInputError
from shieldkit.utils.fingerprint import to_plain as _plain
from shieldkit.utils.io import atomic_write_json, atomic_write_text
from shieldkit.utils.provenance import provenance
from shieldkit.utils.tensorboard import TensorBoardLogger  # noqa: F401  re-export (API, tests/test_config.py)

PRESET_DIR = Path(__file__).resolve().parents[2] / "configs"
META_SECTIONS = ("teacher", "data", "run")
STAGE_SECTIONS = ("synthesis", "training", "evaluation")
EPS_KEYS = ("eps", "attack_alpha")
# Which section of a sectioned config feeds a command's options, and option names that differ from
# the dataclass field they set (``n_samples`` is ``--n`` in ``synthesize``).
COMMAND_SECTIONS: dict[str, tuple[str, ...]] = {
    "synthesize": ("synthesis",), "train-synthetic": ("training",), "dist-train": ("training",),
    "evaluate": ("evaluation",), "shield": (), "teacher": (), "import-model": ("teacher",),
}
KEY_ALIASES: dict[str, str] = {"grad_refine_batches": "grad_refine"}


def __getattr__(name: str):  # lazy re-exports (avoid importing torch-heavy modules at CLI start-up)
    if name == "SynthesisConfig":
        from shieldkit.synthesis import SynthesisConfig

        return SynthesisConfig
    if name == "RobustTrainConfig":
        from shieldkit.training.robust import RobustTrainConfig

        return RobustTrainConfig
    raise AttributeError(name)


class ConfigError(InputError):
    """A config file is missing, malformed, or names a setting that does not exist (an ``InputError``,
    hence a ``ValueError``)."""


class ConfigNotFoundError(ConfigError, MissingInputError):
    """``--config`` names neither a file nor a preset."""


class ConfigSyntaxError(ConfigError, CorruptFileError):
    """A config file is not valid YAML (the message names the file and line)."""


def _did_you_mean(key: str, valid: Any) -> str:
    valid = sorted(valid)
    close = difflib.get_close_matches(key, valid, n=1)
    return f"did you mean {close[0]!r}?" if close else f"valid: {', '.join(valid)}"


def _section_classes() -> dict[str, type]:
    from shieldkit.pipeline import EvalConfig
    from shieldkit.synthesis import SynthesisConfig
    from shieldkit.training.robust import RobustTrainConfig

    return {"synthesis": SynthesisConfig, "training": RobustTrainConfig, "evaluation": EvalConfig}


def check_sections(cfg: Mapping[str, Any], where: str = "config") -> None:
    """Refuse unknown sections (a mapping-valued top-level key that is no known section) and unknown
    keys inside the stage sections, each with a "did you mean" suggestion."""
    known = (*STAGE_SECTIONS, *META_SECTIONS)
    for sec, value in cfg.items():
        if isinstance(value, dict) and sec not in known:
            raise ConfigError(f"{where}: unknown section {sec!r}; {_did_you_mean(str(sec), known)}",
                              hint=f"sections are {', '.join(known)}")
    classes = None
    for sec in STAGE_SECTIONS:
        if not cfg.get(sec):
            continue
        classes = classes or _section_classes()
        fields = {f.name for f in dataclasses.fields(classes[sec])}
        for k in cfg[sec]:
            key = str(k).replace("-", "_")
            if key not in fields:
                raise ConfigError(f"{where}: unknown {sec} setting {k!r}; {_did_you_mean(key, fields)}")


# ----------------------------------------------------------------------------- loading
def list_presets() -> list[str]:
    if not PRESET_DIR.is_dir():
        return []
    return sorted(str(p.relative_to(PRESET_DIR).with_suffix("")) for p in PRESET_DIR.rglob("*.yaml"))


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A file path, or a preset name (``paper/cifar10-resnet20-linf4``) under ``configs/``."""
    p = Path(name_or_path).expanduser()
    if p.is_file():
        return p
    preset = PRESET_DIR / (str(name_or_path).removesuffix(".yaml") + ".yaml")
    if preset.is_file():
        return preset
    if p.exists():
        raise ConfigError(f"config {str(name_or_path)!r}: is a folder, not a YAML file")
    raise ConfigNotFoundError(f"config {str(name_or_path)!r}: no such file or preset; presets: "
                              f"{', '.join(list_presets())}", hint="give a YAML file path or a preset name")


def load_config(name_or_path: str | Path) -> dict:
    """Read and minimally validate a YAML config (a mapping; stage sections are mappings)."""
    path = resolve_config_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigSyntaxError(f"{path}: not a text (YAML) file", hint="give a YAML config file") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigSyntaxError(f"{path}: not valid YAML{where}: {problem}",
                                hint=f"fix the YAML syntax of {path.name}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a YAML mapping (key: value), got {type(data).__name__}")
    for sec in (*STAGE_SECTIONS, *META_SECTIONS):
        if sec in data and not isinstance(data[sec], dict):
            raise ConfigError(f"{path}: section {sec!r} must be a mapping")
    check_sections(data, str(path))
    return data


def _parse_value(key: str, value: Any) -> Any:
    if key in EPS_KEYS and isinstance(value, str):
        from shieldkit.utils.validate import parse_eps

        return parse_eps(value, flag=key)
    return value


def stage_config(cls: type, section: Mapping[str, Any] | None = None, overrides: Mapping[str, Any] | None = None,
                 where: str = "config"):
    """Instantiate dataclass ``cls`` from a config section, then ``overrides`` (explicit flags).

    Unknown keys raise :class:`ConfigError` naming the closest valid field.
    """
    fields = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for src_name, src in (("file", section or {}), ("flags", overrides or {})):
        for k, v in src.items():
            key = k.replace("-", "_")
            if key not in fields:
                close = difflib.get_close_matches(key, sorted(fields), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(sorted(fields))}"
                raise ConfigError(f"{where}: unknown {cls.__name__} setting {k!r} (from {src_name}){hint}")
            values[key] = _parse_value(key, v)
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        # keep the validator's fix line (InputError.hint): wrapping it in a ConfigError must not lose it
        raise ConfigError(f"{where}: invalid {cls.__name__} settings: {exc}", hint=getattr(exc, "hint", None)) from exc


def shield_config(cfg: Mapping[str, Any], overrides: Mapping[str, Mapping[str, Any]] | None = None):
    """The pipeline's ``ShieldConfig`` (synthesis, training, evaluation) from a loaded config."""
    from shieldkit.pipeline import EvalConfig, ShieldConfig
    from shieldkit.synthesis import SynthesisConfig
    from shieldkit.training.robust import RobustTrainConfig

    overrides = overrides or {}
    unknown = set(cfg) - set(STAGE_SECTIONS) - set(META_SECTIONS)
    if unknown:
        first = sorted(map(str, unknown))[0]
        raise ConfigError(f"unknown config sections {sorted(unknown)}; "
                          f"{_did_you_mean(first, STAGE_SECTIONS + META_SECTIONS)}")
    return ShieldConfig(
        synthesis=stage_config(SynthesisConfig, cfg.get("synthesis"), overrides.get("synthesis"), "synthesis"),
        training=stage_config(RobustTrainConfig, cfg.get("training"), overrides.get("training"), "training"),
        evaluation=stage_config(EvalConfig, cfg.get("evaluation"), overrides.get("evaluation"), "evaluation"))


# ----------------------------------------------------------------------------- typer / click integration
def command_defaults(cfg: Mapping[str, Any], command: str, param_names: set[str]) -> tuple[dict, list[str]]:
    """Map a config onto a command's option names: (defaults for ``default_map``, keys it cannot use).

    Flat top-level keys are matched to options directly; the sections in ``COMMAND_SECTIONS[command]``
    are flattened (with ``KEY_ALIASES``); other sections are ignored as belonging to other commands.
    """
    out: dict[str, Any] = {}
    unused: list[str] = []
    flat = {k: v for k, v in cfg.items() if not isinstance(v, dict)}
    items = [(k, k, v) for k, v in flat.items()]
    for sec in COMMAND_SECTIONS.get(command, ()):
        items += [(f"{sec}.{k}", k, v) for k, v in (cfg.get(sec) or {}).items()]
    for label, key, value in items:
        name = key.replace("-", "_")
        name = name if name in param_names else KEY_ALIASES.get(name, name)
        if name in param_names:
            out[name] = value
        else:
            unused.append(label)
    return out, unused


def _config_callback(ctx, param, value):  # noqa: ANN001, ANN202 - click callback signature
    if not value:
        return value
    import typer  # typer vendors its own click: raise its BadParameter

    cfg = load_config(value)  # a ConfigError (an InputError) goes to the CLI's top-level handler as is
    names = {p.name for p in ctx.command.params if p.name}
    defaults, unused = command_defaults(cfg, ctx.info_name or "", names)
    flat_unknown = [k for k in unused if "." not in k]
    if flat_unknown:
        close = difflib.get_close_matches(flat_unknown[0].replace("-", "_"), sorted(names), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise typer.BadParameter(f"{value}: `{ctx.info_name}` has no option for {', '.join(flat_unknown)}{hint}",
                                 ctx=ctx, param=param)
    if unused:
        print(f"note: `{ctx.info_name}` has no flag for {', '.join(unused)} from {value}; those keep the "
              f"command's defaults", file=sys.stderr)
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    ctx.meta["shieldkit_config"] = {"path": str(resolve_config_path(value)), "values": cfg, "unused": unused}
    return value


def config_option(help_text: str = "YAML config file or preset name (flags given on the command line override it)"):
    """``config: Annotated[Path | None, config_option()] = None`` — put it first among a command's options."""
    import typer

    return typer.Option("--config", help=help_text, callback=_config_callback, is_eager=True,
                        expose_value=True)


def explicit_params(ctx) -> dict[str, Any]:  # noqa: ANN001 - click.Context
    """The options the user typed on the command line (not defaults, not config-file values)."""
    return {k: v for k, v in ctx.params.items()
            if k != "config" and _source(ctx, k) in ("commandline", "environment")}


def _source(ctx, name: str) -> str:  # noqa: ANN001
    """Where a parameter's value came from, by enum *name*: typer vendors click, so its
    ``ParameterSource`` is not ``click.core.ParameterSource``."""
    src = ctx.get_parameter_source(name)
    return {"DEFAULT_MAP": "config"}.get(getattr(src, "name", ""), getattr(src, "name", "unknown").lower())


def resolved_config(ctx) -> dict:  # noqa: ANN001 - click.Context
    """Every option's final value and where it came from (commandline / config / default)."""
    return {"command": ctx.info_name, "params": {k: _plain(v) for k, v in ctx.params.items()},
            "sources": {k: _source(ctx, k) for k in ctx.params},
            "config_file": ctx.meta.get("shieldkit_config")}


# ----------------------------------------------------------------------------- run metadata
def save_run_metadata(run_dir: str | Path, resolved_config: Any, seed: int | None) -> Path:
    """Write ``run.json`` (config, seed, versions, git revision, host, time) and ``config.yaml``.

    ``resolved_config``: a dict, a dataclass (e.g. ``ShieldConfig``) or :func:`resolved_config`'s output.
    """
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    plain = _plain(resolved_config)
    prov = provenance()
    atomic_write_json(run / "run.json", {"config": plain, "seed": seed, "packages": prov["packages"],
                                         "git_revision": prov["git_revision"], "host": prov["host"],
                                         "timestamp_utc": prov["timestamp_utc"], "argv": list(sys.argv)})
    atomic_write_text(run / "config.yaml", yaml.safe_dump(plain, sort_keys=False, allow_unicode=True))
    return run / "run.json"
