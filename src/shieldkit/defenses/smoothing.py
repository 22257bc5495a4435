"""Randomised smoothing (Cohen, Rosenfeld & Kolter 2019): certified ℓ2 robustness by Gaussian noise.

The smoothed classifier g(x) = argmax_c P_{δ~N(0,σ²I)}[f(x + δ) = c] is robust within the ℓ2 radius
R = σ·Φ⁻¹(p_A) around x whenever the top-class probability satisfies p_A ≥ ½ (their Theorem 1 with the
bound p_B ≤ 1 − p_A). p_A is unknown, so CERTIFY (their Algorithm, §3.2) estimates it:

1. draw n0 noisy copies, take the most frequent class ĉ_A (selection);
2. draw n fresh copies, count n_A = #{f(x + δ) = ĉ_A};
3. p̲_A = the one-sided (1 − α) Clopper-Pearson lower bound = Beta(α; n_A, n − n_A + 1) quantile;
4. if p̲_A < ½ ABSTAIN, else return (ĉ_A, σ·Φ⁻¹(p̲_A)).

PREDICT (§3.1) returns the top class only if a two-sided binomial test of n_A vs n_B (top two counts)
rejects equality at level α, else ABSTAIN — so a returned prediction differs from g(x) w.p. ≤ α.

The base classifier is trained with Gaussian data augmentation at the same σ (objective
``"gaussian_aug"`` in :mod:`shieldkit.training.defense_training`). Noise is drawn from an explicit
generator, so certificates are reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from scipy.stats import beta as beta_dist
from scipy.stats import binomtest, norm
from torch import nn

from shieldkit.data.base import validate_images
from shieldkit.defenses.base import BaseModelAlias, Defense

ABSTAIN = -1


def lower_confidence_bound(k: int, n: int, alpha: float) -> float:
    """One-sided (1 − α) Clopper-Pearson lower bound on a binomial proportion (0 when k = 0)."""
    if not 0 <= k <= n or n <= 0:
        raise ValueError(f"need 0 ≤ k ≤ n and n > 0, got k={k}, n={n}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    return 0.0 if k == 0 else float(beta_dist.ppf(alpha, k, n - k + 1))


@dataclass
class Certificate:
    prediction: int  # ABSTAIN (−1) or the class
    radius: float    # ℓ2 radius (0 when abstaining)
    p_lower: float
    count: int


class Smooth(Defense):
    """The smoothed classifier g around a base classifier ``f`` (any module: [0, 1] images → logits).

    :meth:`predict` / :meth:`certify` are Cohen et al.'s procedures (explicit generators). As a module,
    ``smooth(x)`` is one Monte-Carlo sample of the smoothing, ``f(x + δ)`` with δ ~ N(0, σ²I) from the
    defence's own stream (``reseed`` restarts it): randomised, and under :class:`EOT` the soft smoothed
    classifier an adaptive attacker differentiates. Differentiable, so no BPDA surrogate.
    """

    randomised = True
    base = BaseModelAlias()  # old name

    def __init__(self, base: nn.Module, num_classes: int, sigma: float, batch_size: int = 500,
                 device: str | torch.device = "cpu", seed: int = 0) -> None:
        from shieldkit.utils.validate import check_num_classes, check_positive_float, check_positive_int

        sigma = check_positive_float(sigma, "sigma")
        num_classes = check_num_classes(num_classes, "num_classes")
        batch_size = check_positive_int(batch_size, "batch_size")
        super().__init__(base)
        self.num_classes, self.sigma = num_classes, sigma
        self.batch_size, self.device = batch_size, torch.device(device)
        self.reseed(seed)

    def reseed(self, seed: int | None) -> None:
        self.generator = torch.Generator().manual_seed(0 if seed is None else seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(x.shape, generator=self.generator, dtype=x.dtype).to(x.device)
        return self.base_model(x + self.sigma * noise)

    @torch.no_grad()
    def sample_counts(self, x: torch.Tensor, num: int, generator: torch.Generator | None = None
                      ) -> torch.Tensor:
        """Class histogram of f(x + δ) over ``num`` Gaussian draws, for one image x (C, H, W).

        The noisy images are *not* clipped to [0, 1]: Theorem 1 is about the unclipped Gaussian.
        """
        if x.ndim != 3:
            raise ValueError(f"sample_counts takes one image (C, H, W), got shape {tuple(x.shape)}")
        self.base_model.eval()
        counts = torch.zeros(self.num_classes, dtype=torch.long)
        x = x.to(self.device)
        remaining = num
        while remaining > 0:
            b = min(self.batch_size, remaining)
            noise = torch.randn((b, *x.shape), generator=generator, device=self.device) * self.sigma
            pred = self.base_model(x.unsqueeze(0) + noise).argmax(1).cpu()
            counts += torch.bincount(pred, minlength=self.num_classes)
            remaining -= b
        return counts

    def predict(self, x: torch.Tensor, n: int, alpha: float, generator: torch.Generator | None = None) -> int:
        """Cohen et al. PREDICT: the top class if the binomial test of top vs runner-up rejects at α."""
        counts = self.sample_counts(x, n, generator)
        top2 = counts.topk(2)
        n_a, n_b = int(top2.values[0]), int(top2.values[1])
        if binomtest(n_a, n_a + n_b, 0.5).pvalue > alpha:
            return ABSTAIN
        return int(top2.indices[0])

    def certify(self, x: torch.Tensor, n0: int, n: int, alpha: float,
                generator: torch.Generator | None = None) -> Certificate:
        """Cohen et al. CERTIFY: (class, ℓ2 radius σΦ⁻¹(p̲_A)) or ABSTAIN, correct w.p. ≥ 1 − α."""
        c_a = int(self.sample_counts(x, n0, generator).argmax())
        count = int(self.sample_counts(x, n, generator)[c_a])
        p_lower = lower_confidence_bound(count, n, alpha)
        if p_lower < 0.5:
            return Certificate(ABSTAIN, 0.0, p_lower, count)
        return Certificate(c_a, self.sigma * float(norm.ppf(p_lower)), p_lower, count)


def certify_dataset(smooth: Smooth, x: torch.Tensor, y: torch.Tensor, *, n0: int = 100, n: int = 1000,
                    alpha: float = 0.001, seed: int = 0) -> list[dict]:
    """Certify every image; one record per point (label, prediction, radius, correct, p_lower)."""
    validate_images(x)
    from shieldkit.utils.seed import derive_seed, make_generator

    out = []
    for i in range(x.shape[0]):
        g = make_generator(derive_seed(seed, "certify", i), device=smooth.device)
        c = smooth.certify(x[i], n0, n, alpha, g)
        out.append({"label": int(y[i]), "prediction": c.prediction, "radius": c.radius,
                    "correct": c.prediction == int(y[i]), "p_lower": c.p_lower, "count": c.count})
    return out


def certified_accuracy(records: Sequence[dict], radii: Sequence[float]) -> dict[float, float]:
    """Cohen et al.'s approximate certified test accuracy at radius r: the fraction of points certified
    correctly with radius ≥ r (abstentions count as errors)."""
    if not records:
        raise ValueError("no certification records")
    return {float(r): sum(1 for rec in records if rec["correct"] and rec["radius"] >= r) / len(records)
            for r in radii}


def certified_accuracy_curve(records: Sequence[dict], max_radius: float | None = None, points: int = 50
                             ) -> list[tuple[float, float]]:
    """(radius, certified accuracy) on a grid from 0 to ``max_radius`` (default: the largest radius)."""
    top = max_radius if max_radius is not None else max((r["radius"] for r in records), default=0.0)
    grid = [top * i / max(points - 1, 1) for i in range(points)]
    acc = certified_accuracy(records, grid)
    return [(r, acc[r]) for r in grid]


def max_certifiable_radius(sigma: float, n: int, alpha: float) -> float:
    """The largest radius CERTIFY can ever return with n samples (all n votes for ĉ_A): σΦ⁻¹(α^{1/n})."""
    return sigma * float(norm.ppf(math.pow(alpha, 1.0 / n)))
