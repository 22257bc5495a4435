"""The obfuscated-gradient audit: automatic checks that say when a robustness number can't be trusted.

Each check returns ``{"name", "verdict": "pass"|"warn"|"fail", "evidence": str, "data": {...}}``.
The checks turn the warning signs of Athalye, Carlini & Wagner (2018, §3.1 "Identifying obfuscated
gradients"), Carlini et al. (2019, "On evaluating adversarial robustness") and the lecture's "How to
properly evaluate a defense" checklist into measurements, and add AutoAttack's ``checks.py``
(randomness, softmax outputs, train mode, zero gradients):

=========================  =====================================================================
check                      fail / warn when …
=========================  =====================================================================
eval_mode                  warn: the model (or a submodule) was handed over in train mode
logits_not_softmax         fail: outputs are non-negative rows summing to 1 (probabilities)
randomness                 fail: forward passes disagree and EOT was disabled; warn: EOT used
input_gradients            fail: NaN, exactly-zero or vanishing (‖∇‖₂ < 1e-12) input gradients on
                           > 10 % of points (of CE or of the logit margin)
single_step_vs_iterative   fail: FGSM accuracy below the iterative PGD's by more than tolerance
iterations                 fail: more PGD steps *raise* accuracy; warn: still falling at the end
                           (the issue's "more steps not lowering accuracy" read as: accuracy must be
                           non-increasing in steps and restarts, and should have converged)
restarts                   fail: restarts *raise* worst-case accuracy (impossible unless random);
                           warn: restarts lower it by more than the tolerance (not converged)
unbounded_attack           fail: PGD with ε → ∞ (whole image box) leaves > 2 % accuracy
eps_monotone               fail: accuracy grows with ε
blackbox_vs_whitebox       fail: a black-box / transfer attack breaks more than the tolerance of points
                           that survived every white-box gradient attack
loss_consistency           warn: PGD-CE much weaker than PGD on the CW margin (softmax saturation)
adaptive_vs_standard       fail: an adaptive attack (BPDA, rescaled CE, latent, DFShield-modified)
                           beats every standard attack — the standard numbers overestimate robustness
=========================  =====================================================================

Validity checks (issue 13) have a fourth status, ``"invalid"``: the *evaluation itself* is meaningless,
whatever the attacks say, and the headline becomes ``INVALID — <reason>`` (never "Trustworthy"):

=========================  =====================================================================
finite_outputs             invalid: the model's logits contain NaN/Inf on the probe batch
input_gradients            invalid: NaN/Inf input gradients on any point
clean_accuracy             invalid: clean accuracy ≤ chance (1/C) + tolerance(n) — wrong
                           normalisation, wrong dataset or label order
class_count                invalid: the model outputs C' logits but the dataset has C classes
eps_range                  invalid: ε outside the threat model (ℓ∞: (0, 1]; ℓ2: (0, √d]) for [0,1] images
sample_size                invalid: n < MIN_POINTS = 16 points — the 95 % interval of an accuracy near
                           50 % is then wider than ±25 points, so the stated number says nothing
=========================  =====================================================================

Tolerance: accuracies differ "meaningfully" when by more than ``max(0.02, 2/n)`` (two points at
small n), so that sampling noise in randomised attacks does not raise false alarms.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from shieldkit.attacks.losses import margin_loss

PASS, WARN, FAIL, INVALID = "pass", "warn", "fail", "invalid"
MIN_POINTS = 16  # 95 % CI half-width at p = 0.5 is ≈ 0.98/√n: ≤ ~0.25 needs n ≥ 16
ZERO_GRAD_FAIL_FRACTION = 0.10
VANISHING_NORM = 1e-12
UNBOUNDED_MAX_ACC = 0.02


def tolerance(n: int) -> float:
    return max(0.02, 2.0 / max(n, 1))


def check(name: str, verdict: str, evidence: str, **data: object) -> dict:
    return {"name": name, "verdict": verdict, "evidence": evidence, "data": data}


# ------------------------------------------------------------------------------ probes on the model itself
def check_eval_mode(model: nn.Module) -> dict:
    training = [n or type(model).__name__ for n, m in model.named_modules() if m.training]
    if not training:
        return check("eval_mode", PASS, "model and all submodules in eval mode")
    return check(
        "eval_mode",
        WARN,
        f"model handed over in train mode ({len(training)} modules, e.g. {training[:3]}); "
        "BatchNorm/Dropout then depend on the batch. Evaluated in eval mode — call model.eval() "
        "before deployment.",
        modules_in_train_mode=len(training),
    )


@torch.no_grad()
def check_softmax(model: nn.Module, x: torch.Tensor, atol: float = 1e-5) -> dict:
    out = model(x)
    if not bool(torch.isfinite(out).all()):
        bad = int((~torch.isfinite(out)).any(1).sum())
        return check("logits_not_softmax", INVALID,
                     f"outputs are NaN/Inf on {bad} of {len(out)} probe points — cannot tell logits from "
                     "probabilities; the model is broken (non-finite weights?)", non_finite_points=bad)
    nonneg = bool(out.min() > -atol)
    sums = out.sum(1)
    sum_one = bool(((sums - 1).abs() < 1e-4).all())
    ev = (
        f"outputs min {out.min().item():.3g}, max {out.max().item():.3g}, row sums in "
        f"[{sums.min().item():.4g}, {sums.max().item():.4g}]"
    )
    if nonneg and sum_one:
        return check(
            "logits_not_softmax",
            FAIL,
            "model returns probabilities, not logits (" + ev + "); "
            "cross-entropy on probabilities has vanishing gradients — return logits.",
        )
    return check("logits_not_softmax", PASS, ev)


@torch.no_grad()
def probe_randomness(model: nn.Module, x: torch.Tensor, passes: int = 5, atol: float = 1e-6) -> dict:
    """Repeated forward passes on the same batch: max normalised-output difference and flips."""
    outs = [model(x) for _ in range(passes)]
    norm = [o / (o.flatten(1).norm(dim=1, keepdim=True) + 1e-10) for o in outs]
    diff = max(float((norm[i] - norm[j]).abs().max()) for i in range(passes) for j in range(i + 1, passes))
    preds = torch.stack([o.argmax(1) for o in outs])
    flips = int((preds != preds[0]).any(0).sum())
    return {
        "random": diff > atol or flips > 0,
        "max_output_diff": diff,
        "prediction_flips": flips,
        "passes": passes,
    }


def check_randomness(probe: dict, eot_samples: int) -> dict:
    ev = (
        f"{probe['passes']} passes on the same batch: max normalised output difference "
        f"{probe['max_output_diff']:.3g}, {probe['prediction_flips']} points change prediction"
    )
    if not probe["random"]:
        return check("randomness", PASS, "deterministic: " + ev, **probe)
    if eot_samples <= 1:
        return check(
            "randomness",
            FAIL,
            "randomised model attacked WITHOUT EOT: "
            + ev
            + "; gradients of one random draw under-estimate the attack — enable EOT.",
            **probe,
        )
    return check(
        "randomness",
        WARN,
        f"randomised model: {ev}; gradient attacks used EOT over {eot_samples} samples and AutoAttack 'rand' was run.",
        eot_samples=eot_samples,
        **probe,
    )


def input_gradient_stats(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
    """Per-point input-gradient norms of CE and of the CW margin, at the clean points."""
    stats: dict = {}
    for name, fn in (("ce", lambda z, t: F.cross_entropy(z, t, reduction="none")), ("margin", margin_loss)):
        xr = x.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            loss = fn(model(xr), y)
            (g,) = torch.autograd.grad(loss.sum(), xr, allow_unused=True)
        if g is None:
            g = torch.zeros_like(xr)
        gn = g.flatten(1).double().norm(dim=1)
        stats[name] = {
            "nan": float(torch.isnan(gn).float().mean()),
            "nonfinite": float((~torch.isfinite(gn)).float().mean()),
            "zero": float((gn == 0).float().mean()),
            "vanishing": float((gn < VANISHING_NORM).float().mean()),
            "median_norm": float(gn[~torch.isnan(gn)].median()) if (~torch.isnan(gn)).any() else float("nan"),
        }
    return stats


def check_gradients(stats: dict) -> dict:
    ce, mg = stats["ce"], stats["margin"]
    ev = (
        f"CE: {ce['zero']:.0%} zero, {ce['nan']:.0%} NaN, {ce['vanishing']:.0%} vanishing, median "
        f"‖∇‖₂ {ce['median_norm']:.3g}; margin: {mg['zero']:.0%} zero, {mg['nan']:.0%} NaN, median "
        f"‖∇‖₂ {mg['median_norm']:.3g}"
    )
    if max(ce["nan"], mg["nan"], ce.get("nonfinite", 0.0), mg.get("nonfinite", 0.0)) > 0:
        return check("input_gradients", INVALID, "non-finite (NaN/Inf) input gradients — " + ev, **stats)
    if max(ce["zero"], mg["zero"]) > ZERO_GRAD_FAIL_FRACTION:
        return check(
            "input_gradients",
            FAIL,
            "zero input gradients (shattered / masked gradients: non-differentiable step or saturated softmax) — " + ev,
            **stats,
        )
    if ce["vanishing"] > ZERO_GRAD_FAIL_FRACTION:
        return check(
            "input_gradients",
            FAIL,
            "vanishing CE gradients (saturated softmax, e.g. defensive distillation / logit scaling) — " + ev,
            **stats,
        )
    return check("input_gradients", PASS, ev, **stats)


# ----------------------------------------------------------------------------------- validity checks
@torch.no_grad()
def check_finite_outputs(model: nn.Module, x: torch.Tensor, out: torch.Tensor | None = None) -> dict:
    """``out``: the logits of ``x`` if the caller already has them (saves a forward pass)."""
    out = model(x) if out is None else out
    bad = int((~torch.isfinite(out)).flatten(1).any(1).sum())
    if bad:
        return check("finite_outputs", INVALID,
                     f"logits are NaN/Inf on {bad} of {len(out)} probe points — the model is broken "
                     "(non-finite weights or an overflow); nothing it scores means anything", non_finite_points=bad)
    return check("finite_outputs", PASS, f"logits finite on all {len(out)} probe points")


def check_class_count(model_outputs: int, num_classes: int) -> dict:
    ev = f"model outputs {model_outputs} logits, dataset has {num_classes} classes"
    if model_outputs != num_classes:
        return check("class_count", INVALID, ev + " — the model was not trained for this dataset",
                     model_outputs=model_outputs, num_classes=num_classes)
    return check("class_count", PASS, ev)


def check_eps_range(eps: float, norm: str, dim: int) -> dict:
    hi = 1.0 if norm == "linf" else math.sqrt(dim)
    rng = "(0, 1]" if norm == "linf" else f"(0, √d = {hi:.4g}]"
    ev = f"ε = {eps:.4g} ({norm}); valid range for [0,1] images {rng}"
    if not (math.isfinite(eps) and 0 < eps <= hi + 1e-12):
        return check("eps_range", INVALID, ev + " — ε outside the threat model (a budget that covers the whole "
                     "image box makes every number meaningless)", eps=eps, max_eps=hi)
    return check("eps_range", PASS, ev)


def check_sample_size(n: int, min_points: int = MIN_POINTS) -> dict:
    half = 0.98 / math.sqrt(max(n, 1))
    ev = f"{n} points: 95% interval half-width up to ±{half:.0%} (minimum {min_points} points)"
    if n < min_points:
        return check("sample_size", INVALID, ev + " — too few points for the stated interval; use more --n",
                     n=n, min_points=min_points)
    return check("sample_size", PASS, ev)


def check_clean_accuracy(clean_acc: float, num_classes: int, n: int) -> dict:
    chance = 1.0 / max(num_classes, 1)
    bar = chance + tolerance(n)
    ev = f"clean accuracy {clean_acc:.1%} vs chance {chance:.1%} (+ tolerance {tolerance(n):.1%})"
    if not clean_acc > bar:
        return check("clean_accuracy", INVALID,
                     ev + " — the model is at or below chance on this data: wrong normalisation (mean/std), "
                     "wrong dataset or label order", chance=chance, threshold=bar)
    return check("clean_accuracy", PASS, ev)


def invalid_reasons(audit: list[dict]) -> list[str]:
    return [c["name"] + ": " + c["evidence"] for c in audit if c["verdict"] == INVALID]


# ------------------------------------------------------------------------- checks on the attack results
def check_single_vs_iterative(acc_fgsm: float, acc_iter: float, iter_name: str, n: int) -> dict:
    tol = tolerance(n)
    ev = f"FGSM {acc_fgsm:.1%} vs {iter_name} {acc_iter:.1%} (tolerance {tol:.1%})"
    if acc_fgsm < acc_iter - tol:
        return check("single_step_vs_iterative", FAIL, "single-step attack beats the iterative one: " + ev)
    return check("single_step_vs_iterative", PASS, ev)


def check_iterations(curve: list[tuple[int, float]], n: int) -> dict:
    """``curve`` = [(steps, acc)] sorted by steps, each a fresh PGD run at the nominal ε."""
    tol = tolerance(n)
    ev = ", ".join(f"PGD-{k} {a:.1%}" for k, a in curve)
    if len(curve) < 2:
        return check("iterations", PASS, "single point: " + ev)
    best_so_far = curve[0][1]
    for k, a in curve[1:]:
        if a > best_so_far + tol:
            return check(
                "iterations",
                FAIL,
                f"more steps raised accuracy (PGD-{k} {a:.1%} > {best_so_far:.1%} with fewer steps): " + ev,
            )
        best_so_far = min(best_so_far, a)
    drop = curve[-2][1] - curve[-1][1]
    if drop > 2 * tol:
        return check(
            "iterations",
            WARN,
            f"accuracy still falling at {curve[-1][0]} steps (−{drop:.1%} from "
            f"{curve[-2][0]}); the attack has not converged — run more steps: " + ev,
        )
    return check("iterations", PASS, "accuracy non-increasing in steps and converged: " + ev)


def check_restarts(acc_single: float, acc_restarts: float, restarts: int, n: int) -> dict:
    tol = tolerance(n)
    ev = f"1 restart {acc_single:.1%} vs worst case over {restarts} restarts {acc_restarts:.1%}"
    if restarts <= 1:
        return check("restarts", PASS, "suite runs one restart: " + ev)
    if acc_restarts > acc_single + 1e-12:
        return check(
            "restarts",
            FAIL,
            "restarts raised per-point worst-case accuracy (outputs not deterministic?): " + ev,
        )
    if acc_single - acc_restarts > tol:
        return check(
            "restarts",
            WARN,
            "restarts still lower accuracy beyond tolerance (loss landscape "
            "sensitive to initialisation; use more restarts): " + ev,
        )
    return check("restarts", PASS, ev)


def check_unbounded(acc: float, eps: float, n: int) -> dict:
    ev = f"PGD with ε = {eps:g} (the whole image box): {acc:.1%} accuracy"
    if acc > UNBOUNDED_MAX_ACC + 1.0 / max(n, 1):
        return check(
            "unbounded_attack",
            FAIL,
            "unbounded attack does not reach ~0 % — gradients do not "
            "lead anywhere (masking) or the attack is broken: " + ev,
        )
    return check("unbounded_attack", PASS, ev)


def check_eps_monotone(curve: list[tuple[float, float]], n: int) -> dict:
    tol = tolerance(n)
    ev = ", ".join(f"ε={e:.4g}: {a:.1%}" for e, a in curve)
    lowest = 1.0
    for e, a in sorted(curve):
        if a > lowest + tol:
            return check("eps_monotone", FAIL, f"accuracy grows with ε (at ε={e:.4g}): " + ev)
        lowest = min(lowest, a)
    return check("eps_monotone", PASS, ev)


def _group_beats(name: str, challengers: dict[str, float], reference: dict[str, float], n: int, labels: tuple[str, str],
                 empty: str, failure: str, show_tol: bool = False) -> dict:
    """FAIL when the best of ``challengers`` is lower than the best of ``reference`` by more than the tolerance."""
    if not challengers:
        return check(name, PASS, empty)
    tol = tolerance(n)
    cname, cacc = min(challengers.items(), key=lambda kv: kv[1])
    rname, racc = min(reference.items(), key=lambda kv: kv[1])
    ev = f"best {labels[0]} {cname} {cacc:.1%} vs best {labels[1]} {rname} {racc:.1%}"
    ev += f" (tolerance {tol:.1%})" if show_tol else ""
    if cacc < racc - tol:
        return check(name, FAIL, failure + ev)
    return check(name, PASS, ev)


def check_blackbox(bb: dict[str, float], wb: dict[str, float], n: int) -> dict:
    return _group_beats("blackbox_vs_whitebox", bb, wb, n, ("black-box", "white-box"),
                        "no black-box attack in this suite (use --suite standard)",
                        "a black-box/transfer attack beats white-box gradient attacks — gradient masking: ",
                        show_tol=True)


def check_loss_consistency(acc_ce: float, acc_margin: float, n: int) -> dict:
    tol = tolerance(n)
    ev = f"PGD-CE {acc_ce:.1%} vs PGD-margin (CW) {acc_margin:.1%}"
    if acc_ce - acc_margin > 2 * tol:
        return check(
            "loss_consistency",
            WARN,
            "cross-entropy attacks much weaker than the logit-margin "
            "attack (saturated softmax / temperature masking): " + ev,
        )
    return check("loss_consistency", PASS, ev)


def check_adaptive(adaptive: dict[str, float], standard: dict[str, float], n: int) -> dict:
    return _group_beats("adaptive_vs_standard", adaptive, standard, n, ("adaptive", "standard"),
                        "no adaptive attack run",
                        "an adaptive attack beats every standard attack — the standard evaluation overestimates "
                        "robustness: ")


def headline(audit: list[dict], robust_acc: float, ci: list[float]) -> tuple[bool, str]:
    invalid = [c for c in audit if c["verdict"] == INVALID]
    if invalid:
        names = ", ".join(c["name"] for c in invalid)
        return False, (f"INVALID — {invalid[0]['evidence']} ({len(invalid)} validity check(s) failed: {names}). "
                       f"The measured robust accuracy {robust_acc:.1%} means nothing.")
    fails = [c["name"] for c in audit if c["verdict"] == FAIL]
    warns = [c["name"] for c in audit if c["verdict"] == WARN]
    num = f"robust accuracy {robust_acc:.1%} (95% CI {ci[0]:.1%}–{ci[1]:.1%})"
    if fails:
        return False, (
            f"NOT TRUSTWORTHY — {len(fails)} audit check(s) failed ({', '.join(fails)}). "
            f"Worst case over all attacks incl. adaptive ones: {num}."
        )
    if warns:
        return True, f"Trustworthy with caveats ({', '.join(warns)}): {num}."
    return True, f"Trustworthy — all {len(audit)} audit checks pass: {num}."
