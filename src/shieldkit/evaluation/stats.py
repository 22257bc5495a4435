"""Confidence intervals for accuracies measured on n points.

Every accuracy shieldkit reports is a binomial proportion k/n on a finite test subset, so it comes
with an interval. Two standard ones:

* :func:`clopper_pearson` — the exact ("conservative") interval from Beta quantiles
  (Clopper & Pearson 1934): [B(α/2; k, n−k+1), B(1−α/2; k+1, n−k)]. Never under-covers; the default.
* :func:`wilson` — the Wilson score interval (Wilson 1927), shorter and well-behaved at k = 0 or n.

Why it matters for robustness numbers: a robust accuracy of 0/100 is compatible with a true rate up
to 3.6 % (95 % CP), and 30 % on n = 200 has a ±6.5 pt interval; differences smaller than that are
not evidence of anything.
"""

from __future__ import annotations

import math

from scipy import stats as _st


def _check(k: int, n: int, alpha: float) -> None:
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    if not 0 <= k <= n:
        raise ValueError(f"k must be in [0, n={n}], got {k}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")


def clopper_pearson(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Exact two-sided (1−alpha) Clopper-Pearson interval for k successes in n trials."""
    k, n = int(k), int(n)
    _check(k, n, alpha)
    lo = 0.0 if k == 0 else float(_st.beta.ppf(alpha / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(_st.beta.ppf(1 - alpha / 2, k + 1, n - k))
    return lo, hi


def wilson(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval: (p̂ + z²/2n ± z·sqrt(p̂(1−p̂)/n + z²/4n²)) / (1 + z²/n)."""
    k, n = int(k), int(n)
    _check(k, n, alpha)
    z = float(_st.norm.ppf(1 - alpha / 2))
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def accuracy_summary(k: int, n: int, alpha: float = 0.05, method: str = "clopper_pearson") -> dict:
    """``{"acc", "k", "n", "ci": [lo, hi], "ci_method", "ci_level"}`` — the record stored for every
    accuracy in ``evaluation.json``."""
    fn = {"clopper_pearson": clopper_pearson, "wilson": wilson}.get(method)
    if fn is None:
        raise ValueError(f"unknown CI method {method!r}; use 'clopper_pearson' or 'wilson'")
    lo, hi = fn(k, n, alpha)
    return {
        "acc": k / n,
        "k": int(k),
        "n": int(n),
        "ci": [lo, hi],
        "ci_method": method,
        "ci_level": 1 - alpha,
    }
