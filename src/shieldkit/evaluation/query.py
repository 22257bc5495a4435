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
from shieldkit.evaluation.stats import accuracy_summary
from shieldkit.models.protocol import card_of
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
    """Robust accuracy under the five SQAs, in :func:`shieldkit.evaluation.suite.evaluate`'s schema.

    ``robust_acc`` is the per-point worst case over all attacks at the largest budget.
    """
    from shieldkit.evaluation.curves import plot_query_curves
    from shieldkit.evaluation.suite import eval_fingerprints, precheck, validity_probe, write_outputs
    from shieldkit.utils.provenance import provenance

    eps = precheck(model, dataset, eps=eps, norm=norm, out=out, n=n)
    dev = resolve_device(str(device))
    t0 = time.perf_counter()
    was_training = model.training
    audit = [A.check_eval_mode(model)]
    model.eval().to(dev)
    probe_x = dataset.subset(min(n, 16), seed=seed).x.to(dev)
    with torch.no_grad():
        audit.append(A.check_softmax(model, probe_x))
    probe = A.probe_randomness(model, probe_x)
    if probe["random"]:
        audit.append(
            A.check(
                "randomness",
                A.WARN,
                "the model's outputs are random (repeated queries disagree): "
                "score-based attacks see noisy scores, which is what input-noise defences such as "
                "RND rely on; a white-box evaluation must use EOT (`--suite standard`).",
                **probe,
            )
        )
    try:
        q = run_query_suite(
            model,
            dataset,
            budgets=budgets,
            eps=eps,
            norm=norm,
            n=n,
            seed=seed,
            attacks=attacks,
            targeted=targeted,
            device=dev,
        )
    finally:
        model.train(was_training)
    budgets = q["budgets"]
    audit.append(_scope_check(budgets))
    n_pts = q["n"]
    recs = [
        {
            "name": "clean",
            "family": "clean",
            **_summary(q["clean_accuracy"], n_pts),
            "wall_time_s": 0.0,
            "forwards": n_pts,
            "backwards": 0,
            "in_worst_case": True,
            "params": {},
        }
    ]
    for name, r in q["attacks"].items():
        for b in budgets:
            recs.append(
                {
                    "name": f"{name}@{b}",
                    "family": "black-box (score)",
                    **_summary(r["robust_accuracy"][b], n_pts),
                    "wall_time_s": r["seconds"] if b == budgets[-1] else 0.0,
                    "forwards": int(round(r["mean_queries"] * n_pts)) if b == budgets[-1] else 0,
                    "backwards": 0,
                    "in_worst_case": b == budgets[-1],
                    "params": {"budget": b, "targeted": targeted, "mean_queries": r["mean_queries"]},
                }
            )
    robust = torch.tensor(q["per_point_robust"], dtype=torch.bool)
    worst = accuracy_summary(int(robust.sum()), n_pts)
    validity = validity_probe(model, dataset.subset(n, seed=seed), eps=eps, norm=norm, batch=16,
                              device=torch.device(dev))
    validity.append(A.check_clean_accuracy(float(q["clean_accuracy"]), dataset.num_classes, n_pts))
    audit[:0] = validity
    trusted, head = A.headline(audit, worst["acc"], worst["ci"])
    card = card_of(model)
    res = {
        "clean_acc": q["clean_accuracy"],
        "robust_acc": worst["acc"],
        "robust_acc_ci": worst["ci"],
        "autoattack_acc": None,
        "pgd_acc": None,
        "eps": float(eps),
        "norm": norm,
        "threat_model": ("Linf" if norm == "linf" else "L2") + " score-based queries",
        "n": n_pts,
        "seed": seed,
        "suite": "query",
        "dataset": dataset.name,
        "model": card.to_dict() if card is not None else {"class": type(model).__name__},
        "valid": not A.invalid_reasons(audit),
        "trustworthy": trusted,
        "headline": head,
        "attacks": recs,
        "curves": {"queries": {k: v["curve"] for k, v in q["attacks"].items()}},
        "query_suite": {k: v for k, v in q.items() if k != "per_point_robust"},
        "audit": audit,
        "per_point_robust": q["per_point_robust"],
        "notes": [f"worst case over {', '.join(q['attacks'])} at {budgets[-1]} queries per image"],
        "wall_time_s": round(time.perf_counter() - t0, 2),
        "device": str(dev),
        "provenance": provenance(),
    }
    res["fingerprints"] = eval_fingerprints(model, dataset.subset(n, seed=seed), {
        "eps": float(eps), "norm": norm, "n": n_pts, "seed": seed, "suite": "query", "budgets": list(budgets)})
    pngs = {"accuracy_vs_queries": plot_query_curves(res["curves"]["queries"], float(eps), norm)}
    if out is not None:
        write_outputs(res, pngs, Path(out))
    res["_png"] = pngs
    return res


def _summary(acc: float, n: int) -> dict:
    s = accuracy_summary(int(round(acc * n)), n)
    return {"acc": s["acc"], "k": s["k"], "n": s["n"], "ci": s["ci"]}


__all__ = ["evaluate_query"]
