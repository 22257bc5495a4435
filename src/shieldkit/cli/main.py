"""`shieldkit` command line. Each stage's commands live in a sibling module exposing
``register(app)``; this file only assembles them, so a new stage never edits another's commands."""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_show_locals=False,
                  help="shieldkit: data-free adversarial robustness and evaluation you can trust.")

# Modules contributing commands (each defines register(app)). Order = order in --help.
_COMMAND_MODULES = ("core", "evaluate", "unig", "atop", "classic", "bench", "scale")

for _name in _COMMAND_MODULES:
    try:
        _mod = importlib.import_module(f"shieldkit.cli.{_name}")
    except ModuleNotFoundError as _exc:  # a stage not installed yet
        if _exc.name != f"shieldkit.cli.{_name}":
            raise
        continue
    _mod.register(app)

