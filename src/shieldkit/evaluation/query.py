"""``shieldkit evaluate --suite query``: the score-based query attacks of UniG Table 1 as an evaluation.

Runs :func:`shieldkit.attacks.query.run_query_suite` (Square, SimBA-DCT, SignHunter, NES, Bandits through
the budget-enforcing oracle) and reshapes its result into the same ``evaluation.json`` / ``report.html``
schema as the white-box suites, so one report format covers both. The attack table has one row per
(attack, budget); only the largest budget enters the worst case, the smaller ones are curve points.

The audit is deliberately modest about scope: a score-based evaluation is a claim about attackers who
only see output scores (the deployment threat model UniG defends), never a white-box claim, so the
``query-scope`` check is always a *warn* pointing at ``--suite standard``. The other checks (eval mode,
logits rather than probabilities, randomness) are the white-box suite's own probes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from shieldkit.attacks.query.suite import TABLE1_ATTACKS, run_query_suite
from shieldkit.data.base import ImageDataset
from shieldkit.evaluation import audit as A
from shieldkit.evaluation.result import eval_fingerprints, precheck, validity_probe, write_outputs
from shieldkit.evaluation.runner import EvaluationResult
from shieldkit.evaluation.stats import accuracy_summary
from shieldkit.utils.device import resolve_device


def _scope_check(budgets: Sequence[int]) -> dict:
    return A.check(
        "query-scope",
        A.WARN,
        f"score-based query attacks only (budgets {', '.join(map(str, budgets))} queries per image): this "
        "bounds what an attacker seeing output scores can do within the budget; it is not a white-box "
        "robustness claim — run `--suite standard` for that.",
    )


def evaluate_query(model: nn.Module, dataset: ImageDataset, *, eps: float, norm: str = "linf", n: int = 100,
                   seed: int = 0, budgets: Sequence[int] = (100, 2500), attacks: Sequence[str] = TABLE1_ATTACKS,
                   targeted: bool = False, device: str | torch.device = "cpu", out: str | Path | None = None) -> dict:
    """Robust accuracy under the five SQAs, in :func:`shieldkit.evaluation.suite.evaluate`'s schema
    (:class:`~shieldkit.evaluation.runner.EvaluationResult`).

    ``robust_acc`` is the per-point worst case over all attacks at the largest budget.
    """
    from shieldkit.evaluation.curves import plot_query_curves

    eps = precheck(model, dataset, eps=eps, norm=norm, out=out, n=n)
    dev = resolve_device(str(device))
    t0 = time.perf_counter()
    was_training = model.training
    audit = [A.check_eval_mode(model)]
    model.eval().to(dev)
    audit += _probe_audit(model, dataset.subset(min(n, 16), seed=seed).x.to(dev))
    try:
        q = run_query_suite(model, dataset, budgets=budgets, eps=eps, norm=norm, n=n, seed=seed, attacks=attacks,
                            targeted=targeted, device=dev)
    finally:
        model.train(was_training)
    budgets = q["budgets"]
    audit.append(_scope_check(budgets))
    data = dataset.subset(n, seed=seed)
    validity = validity_probe(model, data, eps=eps, norm=norm, batch=16, device=torch.device(dev))
    validity.append(A.check_clean_accuracy(float(q["clean_accuracy"]), dataset.num_classes, q["n"]))
    audit[:0] = validity
    result = EvaluationResult(
        clean_acc=q["clean_accuracy"], robust=torch.tensor(q["per_point_robust"], dtype=torch.bool),
        attacks=_records(q, targeted), audit=audit, eps=eps, norm=norm, seed=seed, suite="query",
        dataset=dataset.name, threat_model=("Linf" if norm == "linf" else "L2") + " score-based queries",
        model=EvaluationResult.describe(model),
        curves={"queries": {k: v["curve"] for k, v in q["attacks"].items()}},
        notes=[f"worst case over {', '.join(q['attacks'])} at {budgets[-1]} queries per image"],
        extra={"query_suite": {k: v for k, v in q.items() if k != "per_point_robust"}})
    res = result.to_dict(wall_time_s=time.perf_counter() - t0, device=str(dev))
    res["fingerprints"] = eval_fingerprints(model, data, {
        "eps": float(eps), "norm": norm, "n": q["n"], "seed": seed, "suite": "query", "budgets": list(budgets)})
    pngs = {"accuracy_vs_queries": plot_query_curves(res["curves"]["queries"], float(eps), norm)}
    if out is not None:
        write_outputs(res, pngs, Path(out))
    res["_png"] = pngs
    return res


def _probe_audit(model: nn.Module, probe_x: torch.Tensor) -> list[dict]:
    """The white-box suite's own probes that apply to a score-based evaluation: logits, randomness."""
    with torch.no_grad():
        checks = [A.check_softmax(model, probe_x)]
    probe = A.probe_randomness(model, probe_x)
    if probe["random"]:
        checks.append(A.check(
            "randomness", A.WARN,
            "the model's outputs are random (repeated queries disagree): score-based attacks see noisy scores, "
            "which is what input-noise defences such as RND rely on; a white-box evaluation must use EOT "
            "(`--suite standard`).", **probe))
    return checks


def _records(q: dict, targeted: bool) -> list[dict]:
    """One attack-table row per (attack, budget); only the largest budget joins the worst case."""
    n_pts, budgets = q["n"], q["budgets"]
    recs = [{"name": "clean", "family": "clean", **_summary(q["clean_accuracy"], n_pts), "wall_time_s": 0.0,
             "forwards": n_pts, "backwards": 0, "in_worst_case": True, "params": {}}]
    for name, r in q["attacks"].items():
        for b in budgets:
            last = b == budgets[-1]
            recs.append({"name": f"{name}@{b}", "family": "black-box (score)",
                         **_summary(r["robust_accuracy"][b], n_pts), "wall_time_s": r["seconds"] if last else 0.0,
                         "forwards": int(round(r["mean_queries"] * n_pts)) if last else 0, "backwards": 0,
                         "in_worst_case": last,
                         "params": {"budget": b, "targeted": targeted, "mean_queries": r["mean_queries"]}})
    return recs


def _summary(acc: float, n: int) -> dict:
    s = accuracy_summary(int(round(acc * n)), n)
    return {"acc": s["acc"], "k": s["k"], "n": s["n"], "ci": s["ci"]}


__all__ = ["evaluate_query"]
