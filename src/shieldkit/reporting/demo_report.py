"""The terminal table of a DataFreeShield run and ``write_report`` (``report.html``, rendered by
:mod:`shieldkit.reporting.shield_report`)."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from shieldkit.utils.io import atomic_write_text

ROWS = (("teacher", "Teacher (standard training)"), ("shielded", "DataFreeShield (data-free)"))


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.1f}"


def _ci(rec: dict | None) -> str:
    if not rec or "ci" not in rec:
        return ""
    lo, hi = rec["ci"]
    return f"[{100 * lo:.1f}, {100 * hi:.1f}]"


def summary_rows(results: dict) -> list[dict]:
    rows = []
    for key, label in ROWS:
        r = results.get(key)
        if r is None:
            continue
        rows.append({"key": key, "label": label, "clean": r["clean_acc"], "clean_ci": _ci(r.get("clean")),
                     "pgd": r["pgd_acc"], "pgd_ci": _ci(r.get("pgd")), "aa": r.get("autoattack_acc"),
                     "aa_ci": _ci(r.get("autoattack")), "n": r["n"], "aa_n": r.get("aa_n"),
                     "pgd_name": r.get("pgd", {}).get("attack", "PGD"),
                     "aa_name": r.get("autoattack", {}).get("attack", "AutoAttack")})
    return rows


def print_summary(results: dict, console: Console | None = None) -> None:
    """The before/after table and each row's audit headline. A label-free run (no real-data rows, figures
    under ``results["synthetic_eval"]``) prints them titled "synthetic — not a claim about real data"."""
    console = console or Console()
    synthetic = not any(k in results for k, _ in ROWS) and bool(results.get("synthetic_eval"))
    rows_of = results["synthetic_eval"] if synthetic else results
    any_r = rows_of.get("shielded") or rows_of.get("teacher")
    where = ("held-out SYNTHETIC samples labelled by the teacher — synthetic, not a claim about real data"
             if synthetic else "real test images")
    title = (f"Robust accuracy (%), {any_r['threat_model']} ε = {any_r['eps']:.4g}, {where}, "
             f"seed {any_r['seed']}") if any_r else "Results"
    t = Table(title=title)
    for col in ("model", "clean", "PGD", "AutoAttack", "n (clean/PGD, AA)"):
        t.add_column(col, justify="right" if col != "model" else "left")
    for r in summary_rows(rows_of):
        t.add_row(r["label"], f"{_pct(r['clean'])} {r['clean_ci']}", f"{_pct(r['pgd'])} {r['pgd_ci']}",
                  f"{_pct(r['aa'])} {r['aa_ci']}", f"{r['n']}, {r['aa_n']}")
    console.print(t)
    if synthetic:
        console.print("[bold yellow]Not evaluated on real data (label-free mode): no robustness is claimed for "
                      "real inputs.[/]", highlight=False)
    for key, label in ROWS:
        head = (rows_of.get(key) or {}).get("headline")
        if head:
            style = "bold yellow" if synthetic else "bold magenta" if head.startswith("INVALID") else (
                "bold green" if head.startswith("Trustworthy") else "bold red")
            console.print(f"{label}: [{style}]{escape(head)}[/]", highlight=False)


def _img(path: Path | None, alt: str) -> str:
    if path is None or not Path(path).exists():
        return ""
    data = base64.b64encode(Path(path).read_bytes()).decode()
    alt = html.escape(alt)
    return f'<figure><img alt="{alt}" src="data:image/png;base64,{data}"/><figcaption>{alt}</figcaption></figure>'


def write_report(results: dict, path: str | Path, grid_png: str | Path | None = None, title: str = "shieldkit demo",
                 card: dict | None = None, outputs: dict[str, str] | None = None) -> Path:
    """Self-contained HTML (plots embedded as base64 PNG): the shield report of
    :func:`shieldkit.reporting.shield_report.render_shield_report`, written atomically."""
    from shieldkit.reporting.shield_report import render_shield_report

    atomic_write_text(path, render_shield_report(results, title=title, card=card, grid_png=grid_png,
                                                 outputs=outputs))
    return Path(path)
