"""The before/after report of a DataFreeShield run (``runs/demo/report.html``) and its terminal table."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from rich.console import Console
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
    console = console or Console()
    any_r = results.get("shielded") or results.get("teacher")
    title = (f"Robust accuracy (%), {any_r['threat_model']} ε = {any_r['eps']:.4g}, real test images, "
             f"seed {any_r['seed']}") if any_r else "Results"
    t = Table(title=title)
    for col in ("model", "clean", "PGD", "AutoAttack", "n (clean/PGD, AA)"):
        t.add_column(col, justify="right" if col != "model" else "left")
    for r in summary_rows(results):
        t.add_row(r["label"], f"{_pct(r['clean'])} {r['clean_ci']}", f"{_pct(r['pgd'])} {r['pgd_ci']}",
                  f"{_pct(r['aa'])} {r['aa_ci']}", f"{r['n']}, {r['aa_n']}")
    console.print(t)


def _img(path: Path | None, alt: str) -> str:
    if path is None or not Path(path).exists():
        return ""
    data = base64.b64encode(Path(path).read_bytes()).decode()
    alt = html.escape(alt)
    return f'<figure><img alt="{alt}" src="data:image/png;base64,{data}"/><figcaption>{alt}</figcaption></figure>'


def write_report(results: dict, path: str | Path, grid_png: str | Path | None = None, title: str = "shieldkit demo"
                 ) -> Path:
    """Self-contained HTML (plots embedded as base64 PNG)."""
    rows = summary_rows(results)
    any_r = results.get("shielded") or results.get("teacher") or {}
    body = [f"<h1>{html.escape(title)}</h1>"]
    if any_r:
        body.append(f"<p>Threat model: {any_r.get('threat_model')} ε = {any_r.get('eps'):.4g}; "
                    f"{rows[0]['pgd_name'] if rows else 'PGD'} and {rows[0]['aa_name'] if rows else 'AutoAttack'} "
                    f"(official pyautoattack) on real test images never seen in training; seed {any_r.get('seed')}. "
                    "Intervals are 95 % Clopper-Pearson.</p>")
    heads = ("model", "clean %", "PGD %", "AutoAttack %", "n", "AA n")
    body.append("<table><tr>" + "".join(f"<th>{h}</th>" for h in heads) + "</tr>")
    for r in rows:
        body.append(f"<tr><td>{html.escape(r['label'])}</td><td>{_pct(r['clean'])} {r['clean_ci']}</td>"
                    f"<td>{_pct(r['pgd'])} {r['pgd_ci']}</td><td>{_pct(r['aa'])} {r['aa_ci']}</td>"
                    f"<td>{r['n']}</td><td>{r['aa_n']}</td></tr>")
    body.append("</table>")
    syn = results.get("synthesis")
    if syn:
        cfg = syn.get("config", {})
        body.append(f"<h2>Synthetic data</h2><p>{syn['n_samples']} samples, DSS={cfg.get('coefficients')}, "
                    f"{cfg.get('iterations')} Adam iterations per batch, {syn['samples_per_s']:.2f} samples/s.</p>")
    body.append(_img(Path(grid_png) if grid_png else None, "Synthetic samples per assigned class"))
    secs = results.get("seconds")
    if secs:
        items = "".join(f"<li>{html.escape(k)}: {v:.0f} s</li>" for k, v in secs.items())
        body.append(f"<h2>Wall time</h2><ul>{items}</ul>")
    prov = results.get("provenance", {})
    if prov:
        body.append(f"<h2>Provenance</h2><pre>{html.escape(str(prov))}</pre>")
    style = ("body{font-family:sans-serif;max-width:960px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #999;padding:4px 8px;text-align:right}img{max-width:100%}")
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>")
    atomic_write_text(path, page)
    return Path(path)
