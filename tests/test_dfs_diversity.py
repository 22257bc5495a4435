"""Diversity metrics: NDB / JSD statistics by hand, prdc recall / coverage on known configurations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from shieldkit.data import load_dataset
from shieldkit.evaluation.diversity import diversity_metrics, ndb_from_counts, recall_coverage
from shieldkit.models import create_model


def test_ndb_two_proportion_z_test_by_hand():
    # 60/40 vs 40/60 of 100 each: pooled p = .5, se = sqrt(.25·.02) → z = 2.83, p = .0047 < .05 in both bins
    assert ndb_from_counts(np.array([60.0, 40.0]), np.array([40.0, 60.0]))["ndb"] == 2
    # 55/45 vs 45/55: z = 1.41, p = .157 → no bin differs
    assert ndb_from_counts(np.array([55.0, 45.0]), np.array([45.0, 55.0]))["ndb"] == 0
    same = ndb_from_counts(np.array([50.0, 50.0]), np.array([50.0, 50.0]))
    assert same["ndb"] == 0 and same["jsd"] == pytest.approx(0.0)


def test_jsd_by_hand():
    r = ndb_from_counts(np.array([90.0, 10.0]), np.array([10.0, 90.0]))
    kl_pm = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    assert r["jsd"] == pytest.approx(kl_pm)
    r = ndb_from_counts(np.array([10.0, 0.0]), np.array([0.0, 10.0]))  # disjoint → ln 2
    assert r["jsd"] == pytest.approx(math.log(2))


def test_recall_coverage_known_cases():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(200, 4))
    same = recall_coverage(real, real.copy())
    assert same["recall"] == pytest.approx(1.0) and same["coverage"] == pytest.approx(1.0)
    far = recall_coverage(real, real + 100.0)
    assert far["recall"] == 0.0 and far["coverage"] == 0.0
    collapsed = recall_coverage(real, np.repeat(real[:1], 200, axis=0) + 1e-3 * rng.normal(size=(200, 4)))
    assert collapsed["coverage"] < 0.1
    with pytest.raises(ValueError, match="nearest_k"):
        recall_coverage(real[:3], real[:3])


def test_diversity_metrics_real_vs_noise_on_mnist():
    torch.manual_seed(0)
    model = create_model("mnist_cnn").eval()
    data = load_dataset("mnist5k", "train").subset(400, seed=0)
    real, other = data.x[:200], data.x[200:]
    good = diversity_metrics(model, real, other, bins=5, nearest_k=3)
    noise = diversity_metrics(model, real, torch.rand(200, 1, 28, 28), bins=5, nearest_k=3)
    assert good["coverage"] > noise["coverage"]
    assert good["jsd"] < noise["jsd"]
    with pytest.raises(TypeError, match="features"):
        diversity_metrics(torch.nn.Linear(2, 2), real, other)
