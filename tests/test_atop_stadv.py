"""StAdv (Xiao et al. 2018): flow resampling, flow loss, and breaking an undefended model."""

from __future__ import annotations

import pytest
import torch

from shieldkit.attacks.library import correct_mask
from shieldkit.attacks.stadv import StAdvConfig, apply_flow, flow_loss, stadv
from shieldkit.data import load_dataset
from shieldkit.models import create_model
from shieldkit.training.standard import StandardTrainConfig, train_classifier


def test_zero_flow_is_identity_and_integer_flow_shifts() -> None:
    x = torch.rand(2, 1, 6, 6)
    assert torch.allclose(apply_flow(x, torch.zeros(2, 2, 6, 6)), x, atol=1e-6)
    f = torch.zeros(2, 2, 6, 6)
    f[:, 0] = 1.0  # sample one pixel to the right
    assert torch.allclose(apply_flow(x, f)[..., :-1], x[..., 1:], atol=1e-6)


def test_flow_loss_known_values() -> None:
    assert flow_loss(torch.full((1, 2, 4, 4), 0.7)).item() == pytest.approx(0.0, abs=0.01)
    f = torch.zeros(1, 2, 1, 2)
    f[0, 0, 0, 1] = 3.0  # one horizontal neighbour pair differing by 3 in Δu, counted both ways
    assert flow_loss(f).item() == pytest.approx(6.0, abs=1e-3)
    with pytest.raises(ValueError, match="N×2×H×W"):
        flow_loss(torch.zeros(1, 3, 4, 4))


def test_stadv_breaks_undefended_model() -> None:
    torch.manual_seed(0)
    model = create_model("mnist_cnn", num_classes=10, in_channels=1, image_size=28)
    train_classifier(model, load_dataset("mnist5k", "train").subset(1600, seed=0),
                     StandardTrainConfig(epochs=3, batch_size=64, seed=0), progress=False)
    te = load_dataset("mnist5k", "test").subset(32, seed=0)
    clean = correct_mask(model, te.x, te.y).float().mean().item()
    # τ scaled down: Xiao's τ = 0.05 was tuned for their L-BFGS runs; L_flow sums ~3,000 neighbour terms
    x_adv = stadv(model, te.x, te.y, StAdvConfig(steps=30, lr=0.1, tau=5e-4, bound=2.0),
                  generator=torch.Generator().manual_seed(0))
    adv = correct_mask(model, x_adv, te.y).float().mean().item()
    assert clean > 0.7 and adv < 0.2 * clean
    assert float((x_adv - te.x).abs().max()) > 0  # pixels moved
    assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1


def test_stadv_lbfgs_runs_and_config_errors() -> None:
    torch.manual_seed(0)
    model = create_model("mnist_cnn", num_classes=10, in_channels=1, image_size=28).eval()
    x = torch.rand(2, 1, 28, 28)
    out = stadv(model, x, torch.tensor([0, 1]), StAdvConfig(steps=3, optimizer="lbfgs"))
    assert out.shape == x.shape
    with pytest.raises(ValueError, match="optimizer"):
        StAdvConfig(optimizer="sgd")
