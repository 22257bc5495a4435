"""Randomised smoothing: the certificate's bound against SciPy's exact binomial interval, and behaviour."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import binomtest, norm
from torch import nn

from shieldkit.defenses.smoothing import (
    ABSTAIN,
    Smooth,
    certified_accuracy,
    certify_dataset,
    lower_confidence_bound,
    max_certifiable_radius,
)


@pytest.mark.parametrize(("k", "n", "alpha"),
                         [(990, 1000, 0.001), (60, 100, 0.05), (1, 10, 0.01), (50, 50, 0.001)])
def test_lower_bound_matches_scipy_exact_interval(k: int, n: int, alpha: float) -> None:
    # the one-sided (1 − α) Clopper-Pearson bound is the lower end of the two-sided (1 − 2α) exact interval
    exact = binomtest(k, n).proportion_ci(confidence_level=1 - 2 * alpha, method="exact").low
    assert lower_confidence_bound(k, n, alpha) == pytest.approx(exact, rel=1e-9, abs=1e-12)


def test_lower_bound_errors() -> None:
    assert lower_confidence_bound(0, 10, 0.01) == 0.0
    with pytest.raises(ValueError):
        lower_confidence_bound(11, 10, 0.01)
    with pytest.raises(ValueError):
        lower_confidence_bound(1, 10, 1.5)


class Constant(nn.Module):
    def __init__(self, cls: int, k: int = 3) -> None:
        super().__init__()
        self.cls, self.k = cls, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(x.shape[0], self.k)
        out[:, self.cls] = 1.0
        return out


class SignOfFirstPixel(nn.Module):
    """Class 1 iff the first pixel is positive: at x = 0 the smoothed votes are a fair coin."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = x.flatten(1)[:, :1]
        return torch.cat([-v, v], dim=1)


def test_certify_constant_classifier_reaches_the_max_radius() -> None:
    smooth = Smooth(Constant(2), 3, sigma=0.5)
    g = torch.Generator().manual_seed(0)
    cert = smooth.certify(torch.zeros(1, 4, 4), n0=10, n=200, alpha=0.001, generator=g)
    assert cert.prediction == 2 and cert.count == 200
    assert cert.radius == pytest.approx(0.5 * norm.ppf(0.001 ** (1 / 200)), rel=1e-9)
    assert cert.radius == pytest.approx(max_certifiable_radius(0.5, 200, 0.001), rel=1e-9)


def test_predict_and_certify_abstain_on_a_coin_flip() -> None:
    smooth = Smooth(SignOfFirstPixel(), 2, sigma=1.0)
    g = torch.Generator().manual_seed(0)
    assert smooth.predict(torch.zeros(1, 2, 2), n=200, alpha=0.001, generator=g) == ABSTAIN
    assert smooth.certify(torch.zeros(1, 2, 2), n0=20, n=200, alpha=0.001, generator=g).prediction == ABSTAIN
    # far from the boundary the prediction is confident and the radius is about the distance to it
    x = torch.zeros(1, 2, 2)
    x[0, 0, 0] = 3.0
    c = smooth.certify(x, n0=20, n=2000, alpha=0.001, generator=g)
    assert c.prediction == 1 and 1.5 < c.radius <= 3.0


def test_certified_accuracy_by_hand_and_dataset_records() -> None:
    recs = [{"correct": True, "radius": 0.3}, {"correct": True, "radius": 0.6},
            {"correct": False, "radius": 0.9}, {"correct": False, "radius": 0.0}]
    assert certified_accuracy(recs, [0.0, 0.25, 0.5, 1.0]) == {0.0: 0.5, 0.25: 0.5, 0.5: 0.25, 1.0: 0.0}
    x = torch.zeros(3, 1, 2, 2)
    out = certify_dataset(Smooth(Constant(1), 3, 0.25), x, torch.tensor([1, 1, 0]), n0=5, n=50, alpha=0.01)
    assert [r["correct"] for r in out] == [True, True, False]
    with pytest.raises(ValueError):
        Smooth(Constant(0), 3, sigma=0.0)
