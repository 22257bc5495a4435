"""`shieldkit bench dfs` — the DataFreeShield claims benchmark (``benchmarks/dfs_claims.py``).

A thin layer: it locates the benchmark script (in the repository checkout: ``./benchmarks`` or next to
the installed source tree) and runs its ``main`` with the given options. Everything the benchmark does
is in that script, which can also be run directly.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import typer

bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks that regenerate the committed claims tables.")


def _find_script(name: str) -> Path:
    candidates = [Path.cwd() / "benchmarks" / name, Path(__file__).resolve().parents[3] / "benchmarks" / name]
    for c in candidates:
        if c.exists():
            return c
    raise typer.BadParameter(
        f"benchmarks/{name} not found (looked in {', '.join(map(str, candidates))}); "
        "run from the shieldkit repository checkout"
    )


def _load(name: str):  # noqa: ANN202
    path = _find_script(name)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


@bench_app.command("dfs", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def dfs(
    ctx: typer.Context,
    part: str = typer.Option("main", help="main (mnist5k teacher) | second (digits teacher)"),
    merge_only: bool = typer.Option(False, help="only merge finished parts into dfs_claims.json/.md"),
) -> None:
    """DataFreeShield claims: Tables 1/6/7/8 and Appendix C at CPU scale (resumable, incremental JSON).

    Extra options (``--n-synth``, ``--epochs``, ``--aa-n``, … see ``python benchmarks/dfs_claims.py -h``)
    are passed through to the benchmark script.
    """
    mod = _load("dfs_claims.py")
    argv = ["--part", part, *(["--merge-only"] if merge_only else []), *ctx.args]
    raise typer.Exit(mod.main(argv))


def register(app: typer.Typer) -> None:
    app.add_typer(bench_app, name="bench")
