"""Distributed first-cut evaluation: test points sharded across ranks, per-point results merged.

The evaluated points are the same seeded, class-stratified subset ``data.subset(n, seed)`` as
:func:`shieldkit.evaluation.basic.evaluate_basic`. They are cut into fixed *chunks* of ``chunk_size``
consecutive points; chunk c goes to rank ``c mod W`` and is evaluated by ``evaluate_basic`` itself
(no second implementation) with its own seed ``derive_seed(seed, "chunk", c)`` for the PGD random
start and AutoAttack. A point's result therefore depends only on (seed, chunk_size), never on the
number of ranks: W ranks give the per-point results of the single-process run of this function, and
the merged report (accuracies, Clopper-Pearson intervals, per-point vectors in subset order) is
computed once from the merged vectors.

Note: ``evaluate_basic`` on the whole subset draws one PGD random stream across all its batches, so
its per-point PGD results differ from this chunked run's (same distribution, different random
starts); the clean per-point results are identical.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from shieldkit.data.base import ImageDataset
from shieldkit.distributed import dist
from shieldkit.evaluation.basic import evaluate_basic
from shieldkit.evaluation.runner import AttackRun, EvaluationResult
from shieldkit.evaluation.stats import accuracy_summary
from shieldkit.utils.seed import derive_seed


def evaluate_distributed(model: nn.Module, data: ImageDataset, *, norm: str = "linf", eps: float = 0.2,
                         n: int | None = 1000, seed: int = 0, pgd_steps: int = 20, pgd_restarts: int = 1,
                         autoattack: bool = True, aa_version: str = "standard", chunk_size: int = 250,
                         device: str | torch.device = "cpu") -> dict:
    """Evaluate ``model`` with the points split over ranks; every rank returns the merged report."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be ≥ 1, got {chunk_size}")
    r, w = dist.rank(), dist.world_size()
    sub = data.subset(n, seed=seed)
    N = len(sub)
    starts = list(range(0, N, chunk_size))
    t0 = time.perf_counter()
    mine: dict[int, dict] = {}
    for c in range(r, len(starts), w):
        lo, hi = starts[c], min(starts[c] + chunk_size, N)
        chunk = ImageDataset(sub.x[lo:hi], sub.y[lo:hi], sub.classes, f"{sub.name}:chunk{c}", dict(sub.meta))
        res = evaluate_basic(model, chunk, norm=norm, eps=eps, n=None, seed=derive_seed(seed, "chunk", c),
                             pgd_steps=pgd_steps, pgd_restarts=pgd_restarts, autoattack=autoattack,
                             aa_version=aa_version, batch_size=chunk_size, device=device)
        mine[c] = {"per_point": res["per_point"], "seconds": res["seconds"], "pgd": res["pgd"],
                   "autoattack": res.get("autoattack"), "attacks": res["attacks"], "dataset": res["dataset"],
                   "model": res["model"]}
    gathered = dist.all_gather_object({"rank": r, "chunks": mine, "seconds": time.perf_counter() - t0})
    return merge_chunk_results(gathered, n_chunks=len(starts), norm=norm, eps=eps, seed=seed,
                               chunk_size=chunk_size, autoattack=autoattack)


def merge_chunk_results(gathered: list, *, n_chunks: int, norm: str, eps: float, seed: int, chunk_size: int,
                        autoattack: bool) -> dict:
    """Merge every rank's per-chunk results into one report in subset order (chunk 0 first)."""
    chunks: dict[int, dict] = {}
    for g in gathered:
        for c, v in g["chunks"].items():
            if c in chunks:
                raise RuntimeError(f"chunk {c} was evaluated by two ranks")
            chunks[c] = v
    missing = sorted(set(range(n_chunks)) - set(chunks))
    if missing:
        raise RuntimeError(f"chunks {missing} were evaluated by no rank")
    keys = ["clean_correct", "pgd_robust"] + (["autoattack_robust"] if autoattack else [])
    per_point = {k: [v for c in range(n_chunks) for v in chunks[c]["per_point"][k]] for k in keys}
    m = len(per_point["clean_correct"])
    first = chunks[0] if n_chunks else {"pgd": {}}
    legacy: dict = {
        "clean": accuracy_summary(sum(per_point["clean_correct"]), m),
        "pgd": {**accuracy_summary(sum(per_point["pgd_robust"]), m),
                **{k: v for k, v in first["pgd"].items() if k in ("attack", "steps", "step_size", "restarts",
                                                                   "loss", "random_start")}},
        "per_point": per_point,
        "distributed": {"world_size": len(gathered), "chunk_size": chunk_size, "n_chunks": n_chunks,
                        "chunk_seed": "derive_seed(seed, 'chunk', c)",
                        "rank_seconds": [g["seconds"] for g in gathered]},
        "seconds": {k: sum(chunks[c]["seconds"].get(k, 0.0) for c in chunks)
                    for k in ("clean", "pgd", "autoattack")},
    }
    worst = torch.tensor(per_point["pgd_robust"], dtype=torch.bool)
    aa_acc = None
    if autoattack:
        k = sum(per_point["autoattack_robust"])
        aa_acc = k / max(m, 1)
        legacy["autoattack"] = {**accuracy_summary(k, m), "attack": first["autoattack"]["attack"],
                                "implementation": first["autoattack"]["implementation"]}
        legacy["aa_n"] = m
        worst &= torch.tensor(per_point["autoattack_robust"], dtype=torch.bool)
    return EvaluationResult(
        clean_acc=sum(per_point["clean_correct"]) / max(m, 1), robust=worst,
        attacks=_merged_records(chunks, per_point), audit=[], eps=eps, norm=norm, seed=seed, suite="basic",
        dataset=first.get("dataset", ""), model=first.get("model", {}),
        threat_model="Linf" if norm == "linf" else "L2", autoattack_acc=aa_acc,
        pgd_acc=sum(per_point["pgd_robust"]) / max(m, 1), audited=False, n=m, extra=legacy,
    ).to_dict(wall_time_s=max((g["seconds"] for g in gathered), default=0.0), device="distributed")


def _merged_records(chunks: dict[int, dict], per_point: dict[str, list]) -> list[dict]:
    """One record per attack over all chunks: the merged per-point flags, the summed passes and seconds."""
    flags = {"clean": "clean_correct", "PGD": "pgd_robust", "AutoAttack": "autoattack_robust"}
    out = []
    for j, rec in enumerate(chunks[0]["attacks"] if chunks else []):
        key = next(v for k, v in flags.items() if rec["name"].startswith(k))
        parts = [chunks[c]["attacks"][j] for c in sorted(chunks)]
        run = AttackRun(rec["name"], rec["family"], torch.tensor(per_point[key], dtype=torch.bool),
                        sum(p["wall_time_s"] for p in parts), sum(p["forwards"] for p in parts),
                        sum(p["backwards"] for p in parts), rec["params"], rec["in_worst_case"], rec["note"])
        out.append(run.record())
    return out
