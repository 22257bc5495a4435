"""Render an evaluation (``shieldkit.evaluation.suite.evaluate``'s dict) as a terminal table and as a
self-contained HTML page (plots embedded as base64 PNG, no external assets), so the report can be
mailed or archived and still show everything."""

from __future__ import annotations

import base64
import html

_COLORS = {"pass": "#1e8449", "warn": "#b9770e", "fail": "#c0392b", "invalid": "#7d3c98"}


def _pct(a: float | None) -> str:
    return "—" if a is None else f"{100 * a:.1f}%"


def _ci(ci: list[float] | None) -> str:
    return "" if not ci else f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def headline_color(audit: list[dict], trusted: bool) -> str:
    """Colour of an audit headline: purple INVALID, green all pass, amber trustworthy with caveats, red not."""
    if any(c["verdict"] == "invalid" for c in audit):
        return _COLORS["invalid"]
    if trusted:
        return _COLORS["pass"] if all(c["verdict"] == "pass" for c in audit) else _COLORS["warn"]
    return _COLORS["fail"]


def audit_rows_html(audit: list[dict]) -> str:
    """``<tr>`` rows (check, coloured verdict, evidence) of an audit list."""
    e = html.escape
    return "".join(
        f"<tr><td>{e(c['name'])}</td><td style='color:{_COLORS[c['verdict']]};font-weight:bold'>"
        f"{e(c['verdict'].upper())}</td><td>{e(c['evidence'])}</td></tr>"
        for c in audit
    )


def render_html(res: dict, pngs: dict[str, bytes]) -> str:
    e = html.escape
    trusted = res.get("trustworthy", False)
    head_col = headline_color(res["audit"], trusted)
    rows = []
    for a in res["attacks"]:
        rows.append(
            f"<tr><td>{e(a['name'])}</td><td>{e(a['family'])}</td><td class=num>{_pct(a['acc'])}</td>"
            f"<td class=num>{_ci(a['ci'])}</td><td class=num>{a['n']}</td>"
            f"<td class=num>{a['wall_time_s']:.1f}</td><td class=num>{a['forwards']:,}</td>"
            f"<td class=num>{a['backwards']:,}</td><td>{'✓' if a['in_worst_case'] else 'curve/check'}</td>"
            f"<td class=small>{e(_params(a['params']))}</td></tr>"
        )
    checks = audit_rows_html(res["audit"])
    imgs = "".join(
        f"<figure><img alt='{e(k)}' src='data:image/png;base64,{base64.b64encode(b).decode()}'/>"
        f"<figcaption>{e(k.replace('_', ' '))}</figcaption></figure>"
        for k, b in pngs.items()
    )
    notes = "".join(f"<li>{e(n)}</li>" for n in res.get("notes", []))
    aa = autoattack_detail_html(res.get("autoattack_detail") or {})
    prov = res.get("provenance", {})
    pk = ", ".join(f"{k} {v}" for k, v in prov.get("packages", {}).items())
    model = res.get("model", {})
    arch = e(str(model.get("arch", model.get("class", ""))))
    mdata = e(str(model.get("dataset", "")))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>shieldkit evaluation — {arch}</title>
<style>
body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;width:100%;margin:1em 0}} td,th{{border:1px solid #ccc;padding:4px 8px}}
th{{background:#f2f2f2}} .num{{text-align:right;font-variant-numeric:tabular-nums}} .small{{font-size:80%}}
.headline{{border-left:8px solid {head_col};padding:.6em 1em;background:#fafafa;font-size:110%}}
figure{{display:inline-block;margin:.5em}} .kv td:first-child{{font-weight:bold;width:14em}}
</style></head><body>
<h1>Robustness evaluation</h1>
<p class="headline">{e(res["headline"])}</p>
<table class="kv">
<tr><td>model</td><td>{arch} ({mdata})</td></tr>
<tr><td>data</td><td>{e(res["dataset"])}, n = {res["n"]} (seed {res["seed"]})</td></tr>
<tr><td>threat model</td><td>{e(res["threat_model"])}, ε = {res["eps"]:.5g}</td></tr>
<tr><td>suite</td><td>{e(res["suite"])}</td></tr>
<tr><td>clean accuracy</td><td>{_pct(res["clean_acc"])}</td></tr>
<tr><td>AutoAttack accuracy</td><td>{_pct(res["autoattack_acc"])}</td></tr>
<tr><td>robust accuracy (worst case)</td>
<td>{_pct(res["robust_acc"])} 95% CI {_ci(res["robust_acc_ci"])}</td></tr>
<tr><td>wall time</td><td>{res["wall_time_s"]:.1f} s on {e(res["device"])}</td></tr>
</table>
<h2>Audit</h2>
<table><tr><th>check</th><th>verdict</th><th>evidence</th></tr>{checks}</table>
<h2>Attacks</h2>
<p>Accuracy = fraction of the n points still classified correctly (clean errors count as broken);
intervals are 95% Clopper-Pearson. Forward/backward = images passed through the model.</p>
<table><tr><th>attack</th><th>family</th><th>acc</th><th>95% CI</th><th>n</th><th>time (s)</th>
<th>forwards</th><th>backwards</th><th>worst case</th><th>parameters</th></tr>{"".join(rows)}</table>
{aa}
<h2>Curves</h2>{imgs}
<h2>Notes</h2><ul>{notes or "<li>none</li>"}</ul>
<h2>Provenance</h2><p class="small">git {e(str(prov.get("git_revision")))} · {e(pk)} ·
{e(str(prov.get("timestamp_utc", "")))}</p>
</body></html>
"""


def autoattack_detail_html(detail: dict) -> str:
    """AutoAttack's own per-sub-attack ledger (points still robust after each sub-attack, in order, and
    its time): which of APGD-CE / APGD-T / FAB-T / Square did the breaking. Empty when no AutoAttack ran."""
    e = html.escape
    parts = []
    for version, d in detail.items():
        n = d.get("n")
        rows = "".join(
            f"<tr><td>{e(name)}</td><td class=num>{k}</td>"
            f"<td class=num>{_pct(k / n) if n else ''}</td>"
            f"<td class=num>{float(d.get('attack_time_s', {}).get(name, 0.0)):.1f}</td></tr>"
            for name, k in d.get("per_attack_robust", {}).items())
        if rows:
            how = (d.get("backend") or {}).get("backend", "")
            parts.append(f"<h3>AutoAttack {e(version)}: robust after each sub-attack</h3>"
                         f"<p class=small>pyautoattack's attacks and runner; backend: {e(str(how))}</p><table>"
                         f"<tr><th>after</th><th>robust points</th><th>acc</th><th>time (s)</th></tr>{rows}</table>")
    return "".join(parts)


def _params(p: dict) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in p.items())


def print_table(res: dict, console=None) -> None:  # noqa: ANN001
    """Rich terminal summary: attacks, audit, headline."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    t = Table(title=f"{res['threat_model']} ε={res['eps']:.4g} · n={res['n']} · suite {res['suite']}")
    for col in ("attack", "family", "acc", "95% CI", "time s", "fwd", "bwd"):
        t.add_column(col, justify="right" if col not in ("attack", "family") else "left")
    for a in res["attacks"]:
        name = a["name"] if a["in_worst_case"] else f"[dim]{a['name']}[/]"
        t.add_row(
            name,
            a["family"],
            _pct(a["acc"]),
            _ci(a["ci"]),
            f"{a['wall_time_s']:.1f}",
            f"{a['forwards']:,}",
            f"{a['backwards']:,}",
        )
    t.add_row(
        "[bold]worst case[/]",
        "all",
        f"[bold]{_pct(res['robust_acc'])}[/]",
        _ci(res["robust_acc_ci"]),
        f"{res['wall_time_s']:.1f}",
        "",
        "",
    )
    console.print(t)
    a = Table(title="audit")
    for col in ("check", "verdict", "evidence"):
        a.add_column(col)
    style = {"pass": "green", "warn": "yellow", "fail": "bold red", "invalid": "bold magenta"}
    for c in res["audit"]:
        a.add_row(c["name"], f"[{style[c['verdict']]}]{c['verdict']}[/]", c["evidence"])
    console.print(a)
    console.print(f"[bold]{res['headline']}[/]")
