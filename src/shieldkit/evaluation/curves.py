"""Robust-accuracy curves (DataFreeShield Table 10 as plots): accuracy vs ε and vs PGD iterations.

Plots are rendered headless (Agg) to PNG bytes so the HTML report can embed them (base64) and the
evaluation directory can keep them as files. Every point carries its Clopper-Pearson interval.
"""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _png(fig) -> bytes:  # noqa: ANN001
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _plot(
    points: list[dict], xkey: str, xlabel: str, title: str, logx: bool = False, nominal: float | None = None
) -> bytes:
    fig, ax = plt.subplots(figsize=(5.0, 3.4))
    xs = [p[xkey] for p in points]
    ys = [100 * p["acc"] for p in points]
    lo = [100 * (p["acc"] - p["ci"][0]) for p in points]
    hi = [100 * (p["ci"][1] - p["acc"]) for p in points]
    ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, color="#1f5fa8")
    if nominal is not None:
        ax.axvline(nominal, color="#c0392b", ls="--", lw=1, label="evaluated ε")
        ax.legend(loc="upper right", fontsize=8)
    if logx:
        ax.set_xscale("log")
        ax.set_xticks(xs)
        ax.set_xticklabels([str(v) for v in xs])
        ax.minorticks_off()
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    return _png(fig)


def plot_eps_curve(points: list[dict], nominal_eps: float, norm: str, attack: str) -> bytes:
    """``points``: [{"eps", "acc", "ci"}]."""
    return _plot(points, "eps", f"ε ({norm})", f"Robust accuracy vs ε ({attack})", nominal=nominal_eps)


def plot_iteration_curve(points: list[dict], eps: float, norm: str) -> bytes:
    """``points``: [{"steps", "acc", "ci"}]."""
    return _plot(points, "steps", "PGD iterations", f"Robust accuracy vs iterations ({norm}, ε={eps:.4g})", logx=True)


def plot_query_curves(curves: dict[str, dict[int, float]], eps: float, norm: str) -> bytes:
    """Accuracy vs queries per score-based attack (UniG Fig. 3 style); ``curves``: {attack: {queries: acc}}."""
    fig, ax = plt.subplots(figsize=(5.4, 3.4))
    for name, pts in curves.items():
        qs = sorted(int(q) for q in pts)
        ax.plot(qs, [100 * pts[q] if q in pts else 100 * pts[str(q)] for q in qs], marker=".", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("queries per image")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.set_title(f"Accuracy vs queries ({norm}, ε={eps:.4g})", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)
