"""Diversity of a synthetic set against real data (DataFreeShield Table 6 / 19 / 20).

All metrics are computed on the teacher's penultimate features ``model.features(x)`` (a fixed embedding
in which "covering the real data" is meaningful; pixels of a synthetic image are not):

* **recall** and **coverage** (Naeem et al. 2020, "Reliable Fidelity and Diversity Metrics for
  Generative Models", Eq 2 and Eq 4) — through the maintained ``prdc`` package (``compute_prdc``), k = 5
  nearest neighbours as in that paper. Coverage counts the real points whose k-NN ball contains at
  least one synthetic point, so unlike recall it is not inflated by a few outliers.
* **NDB** — number of statistically different bins (Richardson & Weiss 2018, §3): k-means with K bins
  fitted on the *real* features; every real and synthetic point goes to its nearest centroid; per bin a
  two-proportion z-test (pooled proportion) compares the real and synthetic bin frequencies; NDB is the
  number of bins where the difference is significant at level ``alpha`` (two-sided, 0.05). Lower is
  better; the paper reports it for K = 100 bins.
* **JSD** between the two bin histograms (natural log, so 0 ≤ JSD ≤ ln 2). Lower is better.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import norm as normal_dist
from torch import nn


@torch.no_grad()
def extract_features(
    model: nn.Module, x: torch.Tensor, batch_size: int = 500, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """Penultimate features ``model.features(x)`` in eval mode, on CPU as float32 (N, d)."""
    if not hasattr(model, "features"):
        raise TypeError("diversity metrics need a model with .features(x) (a shieldkit NormalizedClassifier)")
    was = model.training
    model.eval()
    try:
        out = [
            model.features(x[i : i + batch_size].to(device)).flatten(1).float().cpu()
            for i in range(0, len(x), batch_size)
        ]
    finally:
        model.train(was)
    return torch.cat(out)


def recall_coverage(real: np.ndarray, fake: np.ndarray, nearest_k: int = 5) -> dict[str, float]:
    """Naeem et al. 2020 precision / recall / density / coverage via ``prdc.compute_prdc``."""
    from prdc import compute_prdc

    real, fake = np.asarray(real, dtype=np.float32), np.asarray(fake, dtype=np.float32)
    if min(len(real), len(fake)) <= nearest_k:
        raise ValueError(
            f"need more than nearest_k={nearest_k} real and synthetic points, got {len(real)} and {len(fake)}"
        )
    out = compute_prdc(real_features=real, fake_features=fake, nearest_k=nearest_k)
    return {k: float(v) for k, v in out.items()}


def _jsd(p: np.ndarray, q: np.ndarray) -> float:
    m = 0.5 * (p + q)

    def kl(a: np.ndarray, b: np.ndarray) -> float:
        mask = a > 0
        return float(np.sum(a[mask] * np.log(a[mask] / b[mask])))

    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


def ndb_jsd(
    real: np.ndarray, fake: np.ndarray, bins: int = 100, alpha: float = 0.05, seed: int = 0
) -> dict[str, float]:
    """NDB (count and fraction of K bins) and JSD of the bin histograms (Richardson & Weiss 2018)."""
    from sklearn.cluster import KMeans

    real, fake = np.asarray(real, dtype=np.float64), np.asarray(fake, dtype=np.float64)
    if len(real) < bins:
        raise ValueError(f"NDB with {bins} bins needs at least {bins} real points, got {len(real)}")
    km = KMeans(n_clusters=bins, n_init=3, random_state=seed).fit(real)
    cr = np.bincount(km.labels_, minlength=bins).astype(np.float64)
    cf = np.bincount(km.predict(fake), minlength=bins).astype(np.float64)
    return ndb_from_counts(cr, cf, alpha)


def ndb_from_counts(count_real: np.ndarray, count_fake: np.ndarray, alpha: float = 0.05) -> dict[str, float]:
    """The statistics part of NDB/JSD given per-bin counts (separated so tests can check it by hand)."""
    nr, nf = count_real.sum(), count_fake.sum()
    pr, pf = count_real / nr, count_fake / nf
    pooled = (count_real + count_fake) / (nr + nf)
    se = np.sqrt(pooled * (1 - pooled) * (1 / nr + 1 / nf))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(se > 0, (pr - pf) / se, 0.0)
    pvals = 2 * normal_dist.sf(np.abs(z))
    different = int(np.sum(pvals < alpha))
    return {
        "ndb": different,
        "ndb_fraction": different / len(count_real),
        "jsd": _jsd(pr, pf),
        "bins": len(count_real),
    }


def diversity_metrics(
    model: nn.Module,
    real_x: torch.Tensor,
    synth_x: torch.Tensor,
    *,
    nearest_k: int = 5,
    bins: int = 100,
    seed: int = 0,
    max_points: int | None = 2000,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """Recall, coverage (prdc), NDB and JSD of ``synth_x`` against ``real_x`` in ``model``'s feature space.

    ``max_points`` caps both sets (a fixed seeded subset) because the k-NN step is O(N²) in memory.
    """
    g = torch.Generator().manual_seed(seed)

    def cap(x: torch.Tensor) -> torch.Tensor:
        if max_points is None or len(x) <= max_points:
            return x
        return x[torch.randperm(len(x), generator=g)[:max_points].sort().values]

    fr = extract_features(model, cap(real_x), device=device).numpy()
    ff = extract_features(model, cap(synth_x), device=device).numpy()
    pr = recall_coverage(fr, ff, nearest_k)
    nd = ndb_jsd(fr, ff, bins=bins, seed=seed)
    return {
        "recall": pr["recall"],
        "coverage": pr["coverage"],
        "precision": pr["precision"],
        "density": pr["density"],
        **nd,
        "n_real": len(fr),
        "n_synthetic": len(ff),
    }
