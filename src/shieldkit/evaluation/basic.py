"""First-cut robustness evaluation used by ``shieldkit shield`` and ``make demo``: clean accuracy,
PGD-k and AutoAttack (official pyautoattack), on real test images, with everything needed to trust
and reproduce the number recorded next to it (attack, norm, ε, n, seed, CI, versions, wall time).

The full suite with the obfuscated-gradient audit is :mod:`shieldkit.evaluation.suite`.

The result has the schema every evaluator shares (:class:`~shieldkit.evaluation.runner.EvaluationResult`:
run records with their passes, the per-point worst case, threat model, curves), plus the first-cut keys
its consumers read (``clean`` / ``pgd`` / ``autoattack`` summaries, ``aa_n``, ``seconds``, ``per_point``).
It runs no audit, so it is ``audited: false`` and its headline says "NOT AUDITED", never "Trustworthy";
:func:`shieldkit.pipeline.audit_basic` adds the cheap audit that ``shield`` / ``demo`` report.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence

import torch
from torch import nn

from shieldkit.attacks.counting import CountingModel
from shieldkit.attacks.library import DEFAULT_AA_BACKEND, run_autoattack
from shieldkit.attacks.pgd import PGDConfig, pgd
from shieldkit.data.base import ImageDataset
from shieldkit.evaluation.runner import AttackRun, EvaluationResult
from shieldkit.evaluation.stats import accuracy_summary
from shieldkit.utils.seed import derive_seed, make_generator

_PROGRESS = {"default": False}


def set_default_progress(on: bool) -> bool:
    """Set what ``evaluate_basic(progress=None)`` means; returns the previous setting.

    Off in the Python API (library calls stay quiet); the ``shieldkit`` command line turns it on for the
    duration of a command (``cli.main.ShieldkitGroup.main``), so ``shield`` and ``demo`` — which call
    :func:`evaluate_basic` through the pipeline without a ``progress`` argument — print a line per attack.
    """
    prev = _PROGRESS["default"]
    _PROGRESS["default"] = bool(on)
    return prev


class _Progress:
    """One stderr line per event: ``HH:MM:SS evaluate[label] attack: points, elapsed``."""

    def __init__(self, enabled: bool, label: str) -> None:
        self.enabled, self.label = enabled, label

    def __call__(self, msg: str) -> None:
        if self.enabled:
            print(f"{time.strftime('%H:%M:%S')} evaluate[{self.label}] {msg}", file=sys.stderr, flush=True)


def _model_label(model: nn.Module) -> str:
    card = getattr(model, "card", None)
    if card is None:
        return type(model).__name__
    method = (card.extra or {}).get("method")
    return f"{card.arch}, {method}" if method else str(card.arch)


def _predict(model: nn.Module, x: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            out.append(model(x[i:i + batch_size].to(device)).argmax(1).cpu())
    return torch.cat(out)


def _pgd_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: PGDConfig, generator: torch.Generator,
                 batch_size: int, device: torch.device, after_batch: Callable[[int], None] | None = None
                 ) -> torch.Tensor:
    """Per point: still classified ``y`` after PGD-CE (best iterate kept), batch by batch with one generator
    drawn in batch order; ``after_batch(points done)`` after each batch (progress lines)."""
    ok = torch.zeros(len(y), dtype=torch.bool)
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
        adv = pgd(model, xb, yb, cfg, loss_fn="ce", generator=generator, track_best=True)
        ok[i:i + batch_size] = _predict(model, adv, batch_size, device) == yb.cpu()
        if after_batch is not None:
            after_batch(min(i + batch_size, len(x)))
    return ok


def stratified_positions(y: torch.Tensor, m: int, seed: int) -> torch.Tensor:
    """Positions of a class-balanced, seeded ``m``-point subset of labels ``y`` (sorted)."""
    if m >= len(y):
        return torch.arange(len(y))
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(y), generator=g)
    buckets = [perm[y[perm] == c].tolist() for c in torch.unique(y).tolist()]
    order: list[int] = []
    k = 0
    while len(order) < m:
        order.extend(b[k] for b in buckets if k < len(b))
        k += 1
    return torch.tensor(sorted(order[:m]))


def evaluate_basic(model: nn.Module, data: ImageDataset, *, norm: str = "linf", eps: float = 0.2,
                   n: int | None = 1000, seed: int = 0, pgd_steps: int = 20, pgd_restarts: int = 1,
                   autoattack: bool = True, aa_version: str = "standard", aa_n: int | None = None,
                   aa_attacks: Sequence[str] | None = None, batch_size: int = 250,
                   device: str | torch.device = "cpu", progress: bool | None = None,
                   eps_curve: Sequence[float] = (), curve_n: int = 200, curve_steps: int = 10) -> dict:
    """Evaluate ``model`` on a fixed, seeded, class-stratified subset of ``n`` points of ``data``.

    ``aa_n`` (≤ n) evaluates AutoAttack on a class-stratified ``aa_n``-point subset of those points only
    (AutoAttack is by far the slowest step on CPU); its accuracy and CI are then reported on ``aa_n``
    points. (Stratified, not "the first aa_n": datasets stored sorted by class — mnist5k is — would
    otherwise be attacked on two classes only.) ``aa_attacks`` restricts AutoAttack to some of its attacks
    (e.g. ``["apgd-ce", "apgd-t"]`` when Square's queries are unaffordable); the label records which.
    Robust accuracy counts a point as robust only if it is classified correctly clean *and* under the
    attack (the per-point worst case of clean and attack).

    ``eps_curve`` (factors of ε, e.g. ``(0.5, 1, 1.5, 2)``) adds the accuracy-vs-ε curve: PGD-``curve_steps``
    (step 2.5ε/k, random start) at each ε·f on a class-stratified ``curve_n``-point subset, plus the clean
    point at ε = 0, each with its interval, in ``curves["eps"]``. The curve runs after — and with generators
    of its own, apart from — the headline attacks, so it changes none of their per-point results; it is not
    part of the worst case (other ε). Factors whose ε leaves the valid range of the norm are skipped.

    ``progress`` prints (stderr) a line per attack — name, points, accuracy, elapsed — and, for PGD over
    several batches, the points done / remaining; ``None`` means the process default
    (:func:`set_default_progress`: off in the API, on under the ``shieldkit`` CLI).
    """
    from shieldkit.evaluation.result import precheck

    t_start = time.perf_counter()
    eps = precheck(model, data, eps=eps, norm=norm, out=None, n=n)
    device = torch.device(device)
    model = model.to(device).eval()
    counted = CountingModel(model)  # a transparent wrapper: the passes each attack made, for its record
    sub = data.subset(n, seed=seed)
    x, y = sub.x, sub.y
    log = _Progress(_PROGRESS["default"] if progress is None else progress, _model_label(model))
    log(f"{len(y)} points, {'ℓ∞' if norm == 'linf' else 'ℓ2'} ε = {eps:.4g}")
    t0 = time.perf_counter()
    clean_ok = _predict(counted, x, batch_size, device) == y
    t_clean = time.perf_counter() - t0
    c_clean = counted.counts()
    counted.reset()
    log(f"clean: {len(y)} points, {clean_ok.float().mean().item():.1%} accurate, {t_clean:.1f} s")

    cfg = PGDConfig(eps=eps, norm=norm, steps=pgd_steps, alpha=2.5 * eps / pgd_steps, random_start=True,
                    restarts=pgd_restarts)
    g = make_generator(derive_seed(seed, "pgd-eval"), device=device)
    t0 = time.perf_counter()

    def progress_line(done: int) -> None:
        if done < len(x):
            log(f"PGD-{pgd_steps}: {done}/{len(x)} points ({len(x) - done} left), {time.perf_counter() - t0:.1f} s")

    pgd_ok = _pgd_correct(counted, x, y, cfg, g, batch_size, device, progress_line) & clean_ok
    t_pgd = time.perf_counter() - t0
    c_pgd = counted.counts()
    log(f"PGD-{pgd_steps}: {len(y)} points, {pgd_ok.float().mean().item():.1%} robust, {t_pgd:.1f} s")

    legacy: dict = {
        "clean": accuracy_summary(int(clean_ok.sum()), len(y)),
        "pgd": {**accuracy_summary(int(pgd_ok.sum()), len(y)), "attack": f"PGD-{pgd_steps}",
                "steps": pgd_steps, "step_size": cfg.step_size(), "restarts": pgd_restarts, "loss": "ce",
                "random_start": "uniform", "seconds": t_pgd},
        "seconds": {"clean": t_clean, "pgd": t_pgd},
        "per_point": {},
    }
    runs = [AttackRun("clean", "clean", clean_ok, t_clean, **c_clean),
            AttackRun(f"PGD-{pgd_steps}", "white-box", pgd_ok, t_pgd, **c_pgd,
                      params={"steps": pgd_steps, "step_size": cfg.step_size(), "restarts": pgd_restarts})]
    worst, notes, aa_acc = pgd_ok, [], None
    if autoattack:
        m = len(y) if aa_n is None else min(aa_n, len(y))
        aa_idx = stratified_positions(y, m, seed)
        label = f"AutoAttack-{aa_version}" + (f"[{'+'.join(aa_attacks)}]" if aa_attacks else "")
        log(f"{label}: {m} points …")
        counted.reset()
        t0 = time.perf_counter()
        robust, _ = run_autoattack(counted, x[aa_idx], y[aa_idx], norm=norm, eps=eps, version=aa_version,
                                   seed=seed, attacks=list(aa_attacks) if aa_attacks else None,
                                   batch_size=batch_size, device=device)
        t_aa = time.perf_counter() - t0
        robust = robust.cpu() & clean_ok[aa_idx]
        aa_acc = robust.float().mean().item()
        log(f"{label}: {m} points, {aa_acc:.1%} robust, {t_aa:.1f} s")
        legacy["autoattack"] = {**accuracy_summary(int(robust.sum()), m), "attack": label,
                                "implementation": f"pyautoattack ({DEFAULT_AA_BACKEND} backend)", "seconds": t_aa}
        legacy["aa_n"] = m
        legacy["seconds"]["autoattack"] = t_aa
        legacy["per_point"] = {"autoattack_robust": robust.int().tolist(), "autoattack_index": aa_idx.tolist()}
        runs.append(AttackRun(label, "white-box", robust, t_aa, **counted.counts(),
                              params={"version": aa_version, "n": m, "backend": DEFAULT_AA_BACKEND}))
        worst = pgd_ok[aa_idx] & robust
        if m < len(y):
            notes.append(f"AutoAttack ran on a class-stratified {m} of the {len(y)} points: the worst case "
                         f"(clean, PGD-{pgd_steps} and AutoAttack per point) is over those {m}")
    curves = _eps_curve(counted, x, y, clean_ok, eps=eps, norm=norm, factors=eps_curve, m=curve_n,
                        steps=curve_steps, seed=seed, batch_size=batch_size, device=device, log=log)
    legacy["per_point"] = {**legacy["per_point"], "clean_correct": clean_ok.int().tolist(),
                           "pgd_robust": pgd_ok.int().tolist()}
    return EvaluationResult(
        clean_acc=clean_ok.float().mean().item(), robust=worst, attacks=[r.record() for r in runs], audit=[],
        eps=eps, norm=norm, seed=seed, suite="basic", dataset=data.name, model=EvaluationResult.describe(model),
        threat_model="Linf" if norm == "linf" else "L2", curves=curves, notes=notes, autoattack_acc=aa_acc,
        pgd_acc=pgd_ok.float().mean().item(), audited=False, n=len(y), extra=legacy,
    ).to_dict(wall_time_s=time.perf_counter() - t_start, device=str(device))


def _eps_curve(model: nn.Module, x: torch.Tensor, y: torch.Tensor, clean_ok: torch.Tensor, *, eps: float,
               norm: str, factors: Sequence[float], m: int, steps: int, seed: int, batch_size: int,
               device: torch.device, log: _Progress) -> dict:
    """Accuracy vs ε on a stratified ``m``-point subset (see :func:`evaluate_basic`); ``{}`` without factors."""
    if not factors:
        return {}
    idx = stratified_positions(y, min(m, len(y)), seed)
    xs, ys, ok0 = x[idx], y[idx], clean_ok[idx]
    limit = 1.0 if norm == "linf" else float(x[0].numel()) ** 0.5
    points = [{"eps": 0.0, **accuracy_summary(int(ok0.sum()), len(ys))}]
    t0 = time.perf_counter()
    for f in sorted({float(f) for f in factors if f > 0}):
        e = eps * f
        if e > limit:
            continue
        cfg = PGDConfig(eps=e, norm=norm, steps=steps, alpha=2.5 * e / steps, random_start=True)
        g = make_generator(derive_seed(seed, "eps-curve", f), device=device)
        ok = _pgd_correct(model, xs, ys, cfg, g, batch_size, device) & ok0
        points.append({"eps": e, **accuracy_summary(int(ok.sum()), len(ys))})
    log(f"ε-curve (PGD-{steps} at {len(points) - 1} ε): {len(ys)} points, {time.perf_counter() - t0:.1f} s")
    return {"eps": points, "eps_attack": f"PGD-{steps}", "eps_n": len(ys)}
