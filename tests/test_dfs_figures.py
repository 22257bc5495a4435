"""Figures: sample grid, filter-normalised directions (Li et al. 2018), loss surface, PCA."""

from __future__ import annotations

import matplotlib.image as mpimg
import pytest
import torch

from shieldkit.data import load_dataset
from shieldkit.models import create_model
from shieldkit.reporting.figures import (
    filter_normalized_direction,
    loss_surface,
    plot_feature_pca,
    plot_loss_surfaces,
    sample_grid,
)


def test_sample_grid_one_row_per_class(tmp_path):
    d = load_dataset("digits", "test").subset(60, seed=0)
    p3 = sample_grid(d.x, d.y.clamp(max=2), ["a", "b", "c"], tmp_path / "g3.png", per_class=4)
    p6 = sample_grid(d.x, d.y.clamp(max=5), [str(i) for i in range(6)], tmp_path / "g6.png", per_class=4)
    h3, h6 = mpimg.imread(p3).shape[0], mpimg.imread(p6).shape[0]
    assert h6 == pytest.approx(2 * h3, rel=0.05)
    with pytest.raises(ValueError, match="one label per image"):
        sample_grid(d.x, d.y[:3], d.classes, tmp_path / "bad.png")
    with pytest.raises(ValueError, match="labels outside"):
        sample_grid(d.x, d.y, ["a"], tmp_path / "bad.png")


def test_filter_normalised_direction_matches_filter_norms():
    torch.manual_seed(0)
    model = create_model("mnist_cnn")
    d = filter_normalized_direction(model, torch.Generator().manual_seed(0))
    for p, v in zip(model.parameters(), d, strict=True):
        if p.dim() <= 1:
            assert torch.count_nonzero(v) == 0  # biases / BN affine ignored
        else:
            assert torch.allclose(v.flatten(1).norm(dim=1), p.detach().flatten(1).norm(dim=1), rtol=1e-4)


def test_loss_surface_centre_is_the_model_and_model_untouched(tmp_path):
    torch.manual_seed(0)
    model = create_model("mnist_cnn").eval()
    x = torch.rand(16, 1, 28, 28)
    y = torch.arange(16) % 10
    before = [p.clone() for p in model.parameters()]

    def loss_fn(m):
        with torch.no_grad():
            return torch.nn.functional.cross_entropy(m(x), y).item()

    s = loss_surface(model, loss_fn, steps=3, span=0.5, seed=0)
    assert s["loss"][1][1] == pytest.approx(loss_fn(model), rel=1e-5)
    assert len(s["loss"]) == 3 and s["alphas"] == [-0.5, 0.0, 0.5]
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert plot_loss_surfaces({"a": s, "b": s}, tmp_path / "s.png").exists()
    real = torch.randn(50, 8)
    assert plot_feature_pca(real, {"x": torch.randn(30, 8)}, tmp_path / "pca.png").exists()
    with pytest.raises(ValueError, match="same d"):
        plot_feature_pca(real, {"x": torch.randn(30, 7)}, tmp_path / "pca.png")
