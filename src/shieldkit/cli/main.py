"""`shieldkit` command line. Each stage's commands live in a sibling module exposing
``register(app)``; this file only assembles them, so a new stage never edits another's commands.

It also holds the one top-level error handler (:class:`ShieldkitGroup.main`, used by the console
script, ``python -m shieldkit`` and ``typer.testing.CliRunner`` alike):

* :class:`~shieldkit.errors.ShieldkitError` → ``error: …`` (1-3 lines, stderr), exit code 2;
* click usage errors → click's own short message, exit code 2;
* ``FileNotFoundError`` & co. → one line naming the path, exit code 2;
* anything else → ``error: <Type>: <first line>`` + "re-run with --debug for the traceback", exit code 1.

``shieldkit --debug CMD …`` or ``SHIELDKIT_DEBUG=1`` prints the full traceback instead.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback

import typer
from typer._click.exceptions import ClickException  # typer vendors its own click
from typer.core import TyperGroup
from typer.exceptions import Abort

from shieldkit.errors import ShieldkitError
from shieldkit.utils.allocator import tune_allocator

_STATE = {"debug": False}
_FS_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)
_FS_WHAT = {FileNotFoundError: "no such file or folder", PermissionError: "permission denied",
            IsADirectoryError: "is a folder, a file is expected", NotADirectoryError: "is not a folder"}


def _debug() -> bool:
    return _STATE["debug"] or os.environ.get("SHIELDKIT_DEBUG", "").strip().lower() in ("1", "true", "yes")


def _first_line(exc: BaseException) -> str:
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    return lines[0].strip() if lines else ""


def error_lines(exc: BaseException) -> tuple[list[str], int]:
    """The lines the handler prints for ``exc`` and the exit code."""
    if isinstance(exc, ShieldkitError):
        lines = exc.lines() or [type(exc).__name__]
        return [f"error: {lines[0]}", *lines[1:3]], exc.exit_code
    if isinstance(exc, _FS_ERRORS):
        what = next(v for k, v in _FS_WHAT.items() if isinstance(exc, k))
        if getattr(exc, "filename", None):
            return [f"error: {exc.filename}: {exc.strerror or what}"], 2
        return [f"error: {_first_line(exc) or what}"], 2
    if type(exc).__name__ == "SafetensorError":  # fallback; io.load_tensors translates it with the file name
        return [f"error: not a valid safetensors file (truncated or corrupt): {_first_line(exc)}"], 2
    return [f"error: {type(exc).__name__}: {_first_line(exc)}"[:300],
            "re-run with --debug for the traceback"], 1


# ``--help`` lists commands in workflow order: your model in, shielded, evaluated, exported; then the
# stage-by-stage commands, the other defences, scale-out, and the canned demo. Unlisted commands follow.
WORKFLOW_ORDER = ("import-model", "shield", "evaluate", "export", "teacher", "synthesize", "train-synthetic",
                  "train", "certify", "sqa", "atop", "dist-train", "dist-evaluate", "demo")


class ShieldkitGroup(TyperGroup):
    """The root command group: click/typer as usual, plus the single top-level error handler, commands
    listed in :data:`WORKFLOW_ORDER`, and per-attack progress lines from ``evaluate_basic`` while a
    command runs (``shield``/``demo`` call it through the pipeline; the Python API stays quiet)."""

    def list_commands(self, ctx):  # noqa: ANN001, ANN201
        names = super().list_commands(ctx)
        rank = {n: i for i, n in enumerate(WORKFLOW_ORDER)}
        return sorted(names, key=lambda n: (rank.get(n, len(rank)), names.index(n)))

    def invoke(self, ctx):  # noqa: ANN001, ANN201
        """Run the subcommand with ``evaluate_basic``'s progress lines on (restored afterwards). Here, not in
        :meth:`main`: ``--help``/``--version`` exit before, without importing the evaluation stack."""
        from shieldkit.evaluation.basic import set_default_progress

        previous = set_default_progress(True)
        try:
            return super().invoke(ctx)
        finally:
            set_default_progress(previous)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):  # noqa: ANN001, ANN201
        _STATE["debug"] = False
        try:
            tune_allocator()  # every stage allocates batch-sized maps: keep freed memory mapped (utils/allocator.py)
            rv = super().main(args=args, prog_name=prog_name, complete_var=complete_var, standalone_mode=False,
                              **extra)
        except ClickException as exc:
            if not standalone_mode:
                raise
            exc.show()  # click's short "Usage / Try --help / Error: …" (no rich panel)
            sys.exit(exc.exit_code)
        except Abort:
            if not standalone_mode:
                raise
            typer.echo("Aborted!", err=True)
            sys.exit(1)
        except Exception as exc:
            if not standalone_mode:
                raise
            lines, code = error_lines(exc)
            if _debug():
                traceback.print_exc()
            else:
                for line in lines:
                    typer.echo(line, err=True)
            sys.exit(code)
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) and not isinstance(rv, bool) else 0)


app = typer.Typer(cls=ShieldkitGroup, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  pretty_exceptions_show_locals=False,
                  help="shieldkit: data-free adversarial robustness and evaluation you can trust. Your model: "
                       "import-model → shield → evaluate → export.")


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            v = version("shieldkit")
        except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
            v = "unknown (not installed)"
        typer.echo(f"shieldkit {v}")
        raise typer.Exit(0)


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="show the full traceback of an error "
                                                      "(also: SHIELDKIT_DEBUG=1)"),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="print the shieldkit version and exit"),
) -> None:
    """shieldkit: data-free adversarial robustness and evaluation you can trust. Your model: import-model →
    shield → evaluate → export."""
    _STATE["debug"] = debug


# Modules contributing commands (each defines register(app)); --help orders them by WORKFLOW_ORDER.
_COMMAND_MODULES = ("core", "evaluate", "unig", "atop", "classic", "scale", "export")

for _name in _COMMAND_MODULES:
    try:
        _mod = importlib.import_module(f"shieldkit.cli.{_name}")
    except ModuleNotFoundError as _exc:  # a stage not installed yet
        if _exc.name != f"shieldkit.cli.{_name}":
            raise
        continue
    _mod.register(app)
