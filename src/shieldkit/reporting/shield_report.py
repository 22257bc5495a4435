"""What ``shieldkit shield`` / ``shieldkit demo`` leave for a deployer: ``report.html`` (self-contained,
figures embedded as base64 PNG) and ``model_card.json`` (the shielded model's identity, threat model,
audited robust accuracies and limitations), both rendered from the run's ``results.json``.

The audit itself is computed by :func:`shieldkit.pipeline.audit_basic` (this layer renders, it does not
evaluate). "Trustworthy" appears only when the audit's headline says so, i.e. when no validity check is
INVALID and no audit check failed.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from shieldkit.reporting.demo_report import ROWS, _img, _pct, summary_rows
from shieldkit.reporting.eval_report import audit_rows_html, headline_color

CARD_SCHEMA = "shieldkit.model_card/1"
NOT_RUN = ("iterations", "restarts", "unbounded_attack", "eps_monotone", "blackbox_vs_whitebox", "loss_consistency",
           "adaptive_vs_standard")


def _acc_record(rec: dict | None, attack: str) -> dict | None:
    if not rec:
        return None
    return {"attack": rec.get("attack", attack), "acc": rec["acc"], "k": rec.get("k"), "n": rec["n"],
            "ci": rec.get("ci"), "ci_method": rec.get("ci_method"), "ci_level": rec.get("ci_level")}


def _row_accuracies(r: dict) -> dict:
    return {"clean": _acc_record(r.get("clean"), "clean"), "pgd": _acc_record(r.get("pgd"), "PGD"),
            "autoattack": _acc_record(r.get("autoattack"), "AutoAttack"),
            "robust": _acc_record(r.get("robust"), "worst case")}


SYNTHETIC_LABEL = "synthetic — not a claim about real data"  # = shieldkit.pipeline.SYNTHETIC_LABEL
SYNTHETIC_COLOR = "#8a6d00"  # the headline bar of label-free (synthetic) figures: neither pass nor fail


def _limitations(s: dict, model_card: dict, eval_data: dict | None, threat: str, synthetic: dict | None) -> list[str]:
    attacks = " and ".join(x for x in (s.get("pgd", {}).get("attack"), s.get("autoattack", {}).get("attack")) if x)
    if synthetic:
        first = ["Label-free mode: NOT evaluated on real data — robust accuracy on real inputs is unknown. The "
                 f"figures under `synthetic_evaluation` are {SYNTHETIC_LABEL}: held-out synthetic samples "
                 "labelled by the teacher's own predictions (so the teacher scores 100 % clean by construction).",
                 "To measure real robustness: `shieldkit evaluate --model <shielded model> --data <dataset>`."]
    else:
        first = [f"Robustness is measured only for the stated threat model ({threat}, inputs in [0, 1]) with "
                 f"{attacks or 'no '} attack(s) on {s.get('n', 0)} real test points (AutoAttack on "
                 f"{s.get('aa_n', 0)}) of {(eval_data or {}).get('name', model_card.get('dataset'))}, seed "
                 f"{s.get('seed')}; other norms, larger ε, corruptions, patches or distribution shift were not "
                 "measured.",
                 "Accuracies are sample estimates: quote them with their 95 % Clopper-Pearson intervals."]
    return first + [
        "The audit run here is the cheap one (validity, softmax, randomness, gradients, FGSM vs PGD); the "
        "attack-curve and adaptive checks of `shieldkit evaluate --suite standard` were not run.",
        "Trained without real data (DataFreeShield, synthetic samples from the teacher's BatchNorm statistics): "
        "expect lower clean accuracy than the teacher.",
        "Normalisation (mean/std) is inside the model: feed [0, 1] images of the stated shape, do not normalise again.",
    ]


def _rb_pct(v: float | None) -> str | None:
    return None if v is None else f"{100 * v:.2f}"


def robustbench_fields(s: dict, *, name: str, model_card: dict, norm: str | None, eps: float | None,
                       trusted: bool) -> dict:
    """RobustBench's model-info fields. ``clean_acc`` / ``autoattack_acc`` (percent strings, as RobustBench
    writes them) are real-data figures only: None when the shielded model was not evaluated on real data."""
    aa = s.get("autoattack") or {}
    if s:
        foot = (f"shieldkit, data-free (DataFreeShield); {s.get('n')} real test points, {aa.get('attack', 'no AA')} on "
                f"{s.get('aa_n')}, seed {s.get('seed')}; cheap audit: {'passed' if trusted else 'NOT passed'}")
    else:
        foot = "shieldkit label-free mode: not evaluated on real data (no clean_acc / autoattack_acc)"
    return {"name": name, "dataset": model_card.get("dataset"),
            "threat_model": {"linf": "Linf", "l2": "L2"}.get(str(norm), norm),
            "eps": None if eps is None else f"{float(eps):.4g}", "clean_acc": _rb_pct(s.get("clean_acc")),
            "reported": None, "autoattack_acc": _rb_pct(s.get("autoattack_acc")), "additional_data": False,
            "number_forward_passes": 1, "architecture": model_card.get("arch"), "footnote": foot,
            "unreliable": not trusted}


def _synthetic_section(syn_eval: dict | None) -> dict | None:
    if not syn_eval:
        return None
    sh = syn_eval.get("shielded") or {}
    return {"label": syn_eval.get("label", SYNTHETIC_LABEL), "data": syn_eval.get("data"), "n": sh.get("n"),
            "aa_n": sh.get("aa_n"), "seed": sh.get("seed"), "headline": syn_eval.get("headline"),
            "shielded": _row_accuracies(sh),
            "teacher": _row_accuracies(syn_eval["teacher"]) if "teacher" in syn_eval else None,
            "audit": [{"name": c["name"], "verdict": c["verdict"]} for c in sh.get("audit", [])]}


def build_model_card(results: dict, *, model_card: dict, teacher_card: dict, hashes: dict, files: dict,
                     eval_data: dict | None, created_utc: str, version: str, name: str) -> dict:
    """The deployer's card. ``model_card`` / ``teacher_card``: the models' sidecar dicts; ``hashes``:
    ``weights_sha256`` (the shielded ``.safetensors`` file), ``fingerprint`` (its weights + card),
    ``teacher_fingerprint`` and ``teacher_weights_sha256`` (the teacher's file, None when unknown).

    Label-free runs (``results["synthetic_eval"]``): ``evaluation`` / ``audit`` (real data) stay None, the
    RobustBench accuracies null, ``trustworthy`` False; the synthetic figures are under ``synthetic_evaluation``."""
    s = results.get("shielded") or {}
    syn_eval = results.get("synthetic_eval")
    any_row = s or (syn_eval or {}).get("shielded") or {}
    syn = results.get("synthesis", {})
    tr = results.get("training", {})
    c, size = model_card.get("in_channels"), model_card.get("image_size")
    evaluated = bool(s)
    valid, trusted = evaluated and bool(s.get("valid", False)), evaluated and bool(s.get("trustworthy", False))
    head = s.get("headline") or results.get("headline") or \
        "not evaluated: no real test set was given, so no robustness is claimed"
    norm, eps = any_row.get("norm", tr.get("norm")), any_row.get("eps", tr.get("eps"))
    threat = f"{any_row.get('threat_model', norm)} ε = {float(eps or 0):.4g}"
    limitations = _limitations(s, model_card, eval_data, threat, syn_eval)
    if evaluated and not trusted:
        limitations.insert(0, "The audit did NOT pass (" + head + "): do not rely on the robustness numbers.")
    return {
        "schema": CARD_SCHEMA,
        "name": name,
        "headline": head,
        "valid": valid,
        "trustworthy": trusted,
        "data_free": True,
        "real_data_evaluated": evaluated,
        "model": {"arch": model_card.get("arch"), "method": "DataFreeShield (data-free adversarial training)",
                  "weights": files.get("model"), "weights_sha256": hashes.get("weights_sha256"),
                  "fingerprint": hashes.get("fingerprint")},
        "teacher": {"arch": teacher_card.get("arch"), "weights": files.get("teacher"),
                    "weights_sha256": hashes.get("teacher_weights_sha256"),
                    "fingerprint": hashes.get("teacher_fingerprint")},
        "dataset": {"name": model_card.get("dataset"), "num_classes": model_card.get("num_classes"),
                    "classes": model_card.get("classes"), "input_shape": [c, size, size], "input_range": [0.0, 1.0],
                    "normalisation": {"mean": model_card.get("mean"), "std": model_card.get("std"),
                                      "inside_model": True}},
        "threat_model": {"norm": norm, "eps": eps, "name": any_row.get("threat_model")},
        "robustbench": robustbench_fields(s, name=name, model_card=model_card, norm=norm, eps=eps, trusted=trusted),
        "evaluation": None if not evaluated else {
            "data": eval_data, "n": s.get("n"), "aa_n": s.get("aa_n"), "seed": s.get("seed"),
            "points": "seeded, class-stratified subset of the real test split (never used for training)",
            "shielded": _row_accuracies(s),
            "teacher": _row_accuracies(results["teacher"]) if "teacher" in results else None,
        },
        "audit": None if not evaluated else {
            "headline": head, "valid": valid, "trustworthy": trusted,
            "checks": [{"name": c["name"], "verdict": c["verdict"]} for c in s.get("audit", [])],
            "teacher_headline": results.get("teacher", {}).get("headline"),
        },
        "synthetic_evaluation": _synthetic_section(syn_eval),
        "training": {"real_data_used": False, "synthetic_samples": syn.get("n_samples"),
                     "objective": tr.get("objective"), "epochs": tr.get("epochs"),
                     "attack_steps": tr.get("attack_steps"), "seed": tr.get("seed")},
        "intended_use": [
            f"Drop-in, more robust replacement of the teacher ({teacher_card.get('arch')}) for classifying "
            f"{model_card.get('dataset')}-like images where {threat} input perturbations are a concern.",
            "Research and evaluation; not certified robustness (the numbers are empirical attack results).",
        ],
        "limitations": limitations,
        "files": files,
        "shieldkit_version": version,
        "git_revision": results.get("provenance", {}).get("git_revision"),
        "created_utc": created_utc,
    }


def _legend_png(fig, ax) -> bytes:  # noqa: ANN001
    """Legend top right, tight layout, PNG bytes; the figure is closed (the charts' shared tail)."""
    import matplotlib.pyplot as plt

    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def accuracy_chart(results: dict, where: str = "real test images") -> bytes | None:
    """Grouped bars teacher vs shielded (clean / PGD / AutoAttack) with 95 % interval whiskers, as PNG.
    ``results``: a dict with ``teacher`` / ``shielded`` rows; ``where``: what they were measured on (title)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(label, results[k]) for k, label in ROWS if k in results]
    if not rows:
        return None
    metrics = (("clean", "clean"), ("pgd", rows[0][1].get("pgd", {}).get("attack", "PGD")),
               ("autoattack", rows[0][1].get("autoattack", {}).get("attack", "AutoAttack")))
    fig, ax = plt.subplots(figsize=(7, 3.4), dpi=110)
    width = 0.8 / len(rows)
    for j, (label, r) in enumerate(rows):
        xs, hs, lo, hi = [], [], [], []
        for i, (key, _) in enumerate(metrics):
            rec = r.get(key)
            if not rec:
                continue
            xs.append(i + (j - (len(rows) - 1) / 2) * width)
            hs.append(100 * rec["acc"])
            lo.append(100 * (rec["acc"] - rec["ci"][0]))
            hi.append(100 * (rec["ci"][1] - rec["acc"]))
        ax.bar(xs, hs, width, yerr=[lo, hi], capsize=3, label=label)
        for x, h, up in zip(xs, hs, hi, strict=True):  # the value above its interval's whisker
            ax.text(x, h + up + 1.5, f"{h:.1f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(metrics)), [m[1] for m in metrics])
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 118)
    ax.set_yticks(range(0, 101, 20))
    ax.set_title(f"{rows[0][1]['threat_model']} ε = {rows[0][1]['eps']:.4g}, {where}, 95 % intervals", fontsize=9)
    return _legend_png(fig, ax)


def eps_curve_chart(results: dict, where: str = "real test images") -> bytes | None:
    """Accuracy vs ε (``curves["eps"]`` of each teacher / shielded row, :func:`evaluate_basic`'s
    ``eps_curve``) with 95 % interval whiskers and the evaluated ε marked, as PNG; ``None`` without curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(label, results[k]) for k, label in ROWS if (results.get(k) or {}).get("curves", {}).get("eps")]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.4), dpi=110)
    for label, r in rows:
        pts = r["curves"]["eps"]
        ax.errorbar([p["eps"] for p in pts], [100 * p["acc"] for p in pts],
                    yerr=[[100 * (p["acc"] - p["ci"][0]) for p in pts], [100 * (p["ci"][1] - p["acc"]) for p in pts]],
                    marker="o", capsize=3, label=label)
    r0 = rows[0][1]
    ax.axvline(r0["eps"], color="#c0392b", ls="--", lw=1, label=f"evaluated ε = {r0['eps']:.4g}")
    ax.set_xlabel(f"ε ({r0['norm']})")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.set_title(f"{r0['curves']['eps_attack']} on {r0['curves']['eps_n']} {where} per ε, 95 % intervals", fontsize=9)
    return _legend_png(fig, ax)


def _png(data: bytes | None, alt: str) -> str:
    if not data:
        return ""
    a = html.escape(alt)
    return (f'<figure><img alt="{a}" src="data:image/png;base64,{base64.b64encode(data).decode()}"/>'
            f"<figcaption>{a}</figcaption></figure>")


def _kv(rows: list[tuple[str, object]], cls: str = "kv") -> str:
    e = html.escape
    body = "".join(f"<tr><th>{e(str(k))}</th><td>{e(str(v))}</td></tr>" for k, v in rows if v not in (None, ""))
    return f'<table class="{cls}">{body}</table>'


def _provenance_rows(prov: dict) -> list[tuple[str, object]]:
    host = prov.get("host", {})
    rows: list[tuple[str, object]] = [("git revision", prov.get("git_revision") or "unknown (not a git checkout)"),
                                      ("timestamp (UTC)", prov.get("timestamp_utc"))]
    rows += [(name, version) for name, version in prov.get("packages", {}).items()]
    rows += [("platform", host.get("platform")), ("CPU count", host.get("cpu_count")),
             ("torch threads", host.get("torch_threads")), ("CUDA available", host.get("cuda"))]
    if "allocator" in host:  # the times depend on it (shieldkit/utils/allocator.py); no float does
        rows.append(("memory allocator", _allocator_text(host["allocator"])))
    return rows


def _allocator_text(state: object) -> str:
    if not isinstance(state, dict):
        return str(state)
    if state.get("applied"):
        return f"glibc {state.get('glibc')}, freed memory kept mapped"
    return str(state.get("reason") or "glibc defaults")


def _floats(v: list[float] | None) -> str:
    return "—" if v is None else "[" + ", ".join(f"{x:.4g}" for x in v) + "]"


def _ci_cell(rec: dict | None) -> str:
    if not rec:
        return "<td class=num>—</td>"
    lo, hi = rec["ci"]
    return (f"<td class=num><b>{_pct(rec['acc'])}</b> <span class=ci>[{100 * lo:.1f}, {100 * hi:.1f}]"
            f"</span></td>")


STYLE = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
         "table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
         "vertical-align:top}th{background:#f2f2f2;text-align:left}.num{text-align:right;"
         "font-variant-numeric:tabular-nums;white-space:nowrap}.ci{color:#666;font-size:85%}"
         ".kv th{width:13em}.kv td{word-break:break-all}"
         ".headline{border-left:8px solid #999;padding:.6em 1em;background:#fafafa;font-size:105%}"
         ".synthetic{border:2px dashed #8a6d00;background:#fffbea;padding:.6em 1em}"
         "figure{display:inline-block;margin:.5em 0}img{max-width:100%}figcaption{color:#555;font-size:90%}")


def _headline_html(results: dict) -> str:
    e = html.escape
    s, syn_eval = results.get("shielded") or {}, results.get("synthetic_eval")
    if s.get("headline"):
        col = headline_color(s.get("audit", []), bool(s.get("trustworthy")))
        return (f'<p class="headline" style="border-left-color:{col}"><b>Shielded model:</b> '
                f"{e(s['headline'])}</p>")
    if syn_eval:
        return (f'<p class="headline" style="border-left-color:{SYNTHETIC_COLOR}"><b>Not evaluated on real data '
                "(label-free mode): no robustness is claimed for real inputs.</b> Figures below are "
                f"<b>{e(SYNTHETIC_LABEL)}</b>. {e(syn_eval.get('headline', ''))}</p>")
    if results.get("synthesis"):
        return '<p class="headline">Not evaluated (no real test set): no robustness is claimed.</p>'
    return ""


def _model_html(card: dict) -> str:
    ds, m, t = card["dataset"], card["model"], card["teacher"]
    return "<h2>Model</h2>" + _kv([
        ("shielded model", f"{m['arch']} — {m['method']}"), ("weights", m.get("weights")),
        ("weights sha256", m.get("weights_sha256")), ("teacher", t.get("arch")),
        ("teacher weights", t.get("weights")),
        ("teacher sha256", t.get("weights_sha256") or f"(fingerprint) {t.get('fingerprint')}"),
        ("dataset", f"{ds['name']}: {ds['num_classes']} classes ({', '.join(map(str, ds['classes'] or []))})"),
        ("input", f"{'×'.join(map(str, ds['input_shape']))} in [0, 1]; mean "
                  f"{_floats(ds['normalisation']['mean'])}, std {_floats(ds['normalisation']['std'])} "
                  "applied inside the model"),
        ("shieldkit", card.get("shieldkit_version")), ("created (UTC)", card.get("created_utc")),
    ])


def _accuracy_table(rows_of: dict) -> str:
    e = html.escape
    heads = ("model", "clean", "PGD", "AutoAttack", "worst case", "n", "AA n", "norm", "ε", "seed")
    out = ["<table><tr>" + "".join(f"<th>{h}</th>" for h in heads) + "</tr>"]
    for r in summary_rows(rows_of):
        rec = rows_of[r["key"]]
        out.append(f"<tr><td>{e(r['label'])}</td>{_ci_cell(rec.get('clean'))}{_ci_cell(rec.get('pgd'))}"
                   f"{_ci_cell(rec.get('autoattack'))}{_ci_cell(rec.get('robust'))}"
                   f"<td class=num>{r['n']}</td><td class=num>{r['aa_n'] if r['aa_n'] is not None else '—'}</td>"
                   f"<td>{e(rec['norm'])}</td><td class=num>{rec['eps']:.4g}</td><td class=num>{rec['seed']}</td></tr>")
    return "".join(out) + "</table>"


def _accuracy_html(rows_of: dict, synthetic: bool) -> str:
    """Table + chart of the teacher / shielded rows of ``rows_of`` (real test set, or the held-out synthetic set)."""
    e = html.escape
    rows = summary_rows(rows_of)
    any_r = rows_of.get("shielded") or rows_of.get("teacher")
    attacks = f"{e(rows[0]['pgd_name'])} and {e(rows[0]['aa_name'])} (official pyautoattack)"
    if synthetic:
        data = rows_of.get("data") or {}
        head = (f"<h2>Held-out synthetic samples — {e(SYNTHETIC_LABEL)}</h2><p class=synthetic><b>Synthetic — not a "
                f"claim about real data.</b> Threat model {e(any_r['threat_model'])} ε = {any_r['eps']:.4g}; "
                f"{attacks} on {data.get('n_samples', any_r['n'])} held-out synthetic samples (seed "
                f"{data.get('seed')}, not the training set's {data.get('training_seed')}: no training sample is "
                "reused), labelled by the teacher's own predictions — the teacher's clean accuracy is 100 % by "
                "construction. Robust accuracy on real inputs is unknown: run <code>shieldkit evaluate</code> "
                "on a real test set.")
        where = "held-out SYNTHETIC samples (not real data)"
    else:
        head = (f"<h2>Robust accuracy, teacher vs shielded</h2><p>Threat model {e(any_r['threat_model'])} ε = "
                f"{any_r['eps']:.4g}; {attacks} on real test images never used for training or model selection; "
                "seeded class-stratified points.")
        where = "real test images"
    head += (" Accuracy in %, [95 % Clopper-Pearson interval]. <i>Worst case</i> counts a point robust only if "
             "it is correct clean, under PGD and under AutoAttack.</p>")
    invalid = any(not (rows_of.get(k) or {}).get("valid", True) for k, _ in ROWS)
    alt = (f"Accuracy teacher vs shielded on {where} (95 % intervals)"
           + (" — INVALID evaluation, see the audit" if invalid else ""))
    curve_alt = f"Accuracy vs ε, teacher vs shielded, on {where} (95 % intervals; not part of the worst case)"
    return (head + _accuracy_table(rows_of) + _png(accuracy_chart(rows_of, where), alt)
            + _png(eps_curve_chart(rows_of, where), curve_alt))


def _audit_html(rows_of: dict, synthetic: bool) -> str:
    e = html.escape
    ran = {c["name"] for k, _ in ROWS for c in (rows_of.get(k) or {}).get("audit", [])}
    not_run = [c for c in NOT_RUN if c not in ran]
    out = ["<h2>Audit" + (f" (on the held-out synthetic samples — {e(SYNTHETIC_LABEL)})" if synthetic else "")
           + "</h2><p>Validity checks (INVALID = the evaluation itself is meaningless) and cheap "
           "obfuscated-gradient checks, run on the points evaluated. A headline says whether the "
           "<i>measurement</i> can be trusted (no check INVALID or FAIL), not that the model is robust: "
           "read the number it states. Not run here (use "
           f"<code>shieldkit evaluate --suite standard</code>): {e(', '.join(not_run))}.</p>"]
    for key, label in ROWS:
        rec = rows_of.get(key)
        if not rec or "audit" not in rec:
            continue
        col = SYNTHETIC_COLOR if synthetic else headline_color(rec["audit"], bool(rec.get("trustworthy")))
        out.append(f"<h3>{e(label)}</h3><p class=\"headline\" style=\"border-left-color:{col}\">"
                   f"{e(rec['headline'])}</p><table><tr><th>check</th><th>verdict</th><th>evidence</th></tr>"
                   f"{audit_rows_html(rec['audit'])}</table>")
    return "".join(out)


def _synthesis_html(syn: dict, grid_png: str | Path | None) -> str:
    cfg = syn.get("config", {})
    fast = cfg.get("fast") if cfg.get("method") == "fast" else None
    how = (f"a meta-learned generator, {fast.get('steps')} steps per batch of {fast.get('batch_size')} after "
           f"{fast.get('warmup_batches')} warm-up batches" if fast else f"{cfg.get('iterations')} Adam iterations "
           "per batch")
    return (f"<h2>Synthetic training data</h2><p>{syn['n_samples']} samples synthesised from the teacher alone "
            f"(DSS coefficients = {html.escape(str(cfg.get('coefficients')))}, {html.escape(how)}, "
            f"{syn.get('samples_per_s', 0):.2f} samples/s); no real image was used for training.</p>"
            + _img(Path(grid_png) if grid_png else None, "Synthetic samples, one row per assigned class"))


def _timing_html(results: dict) -> str:
    e = html.escape
    secs = results["seconds"]
    out = ("<h2>Wall time per stage</h2><table><tr><th>stage</th><th>wall time (s)</th></tr>"
           + "".join(f"<tr><td>{e(k)}</td><td class=num>{v:.1f}</td></tr>" for k, v in secs.items())
           + f"<tr><th>total</th><th class=num>{sum(secs.values()):.1f}</th></tr></table>")
    rows_of = results if any(k in results for k, _ in ROWS) else results.get("synthetic_eval") or {}
    parts = [(label, rows_of[key]["seconds"]) for key, label in ROWS if "seconds" in (rows_of.get(key) or {})]
    if parts:
        cols = ("clean", "pgd", "autoattack")
        out += ("<p>Evaluation, per model (s):</p><table><tr><th>model</th>"
                + "".join(f"<th>{c}</th>" for c in ("clean", "PGD", "AutoAttack")) + "</tr>"
                + "".join(f"<tr><td>{e(label)}</td>"
                          + "".join(f"<td class=num>{t[c]:.1f}</td>" if c in t else "<td>—</td>" for c in cols)
                          + "</tr>" for label, t in parts) + "</table>")
    return out


def render_shield_report(results: dict, *, title: str = "shieldkit shield — DataFreeShield",
                         card: dict | None = None, grid_png: str | Path | None = None,
                         outputs: dict[str, str] | None = None) -> str:
    """The report's HTML: headline, model, before/after accuracies (real data; or, label-free, the held-out
    synthetic figures, labelled :data:`SYNTHETIC_LABEL`), audit, synthetic training data, wall times,
    provenance and output paths."""
    e = html.escape
    body = [f"<h1>{e(title)}</h1>", _headline_html(results)]
    if card:
        body.append(_model_html(card))
    if summary_rows(results):
        body += [_accuracy_html(results, synthetic=False), _audit_html(results, synthetic=False)]
    elif results.get("synthetic_eval") and summary_rows(results["synthetic_eval"]):
        body += [_accuracy_html(results["synthetic_eval"], synthetic=True),
                 _audit_html(results["synthetic_eval"], synthetic=True)]
    if results.get("synthesis"):
        body.append(_synthesis_html(results["synthesis"], grid_png))
    if results.get("seconds"):
        body.append(_timing_html(results))
    if results.get("provenance"):
        body.append("<h2>Provenance</h2>" + _kv(_provenance_rows(results["provenance"])))
    if outputs:
        body.append("<h2>Outputs</h2>" + _kv(list(outputs.items())))
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{e(title)}</title>"
            f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>\n")
