"""AToP random transforms (§3.1, Eq 2-4): mask statistics, RT3 partition and Eq 4 aggregation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from shieldkit.data import load_dataset
from shieldkit.defenses.atop import PurificationPipeline, RandomTransform, TransformConfig, default_patch
from shieldkit.utils.seed import make_generator


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return load_dataset("mnist5k", "test").subset(16, seed=0).x


def test_default_patch_is_divisor_nearest_p_over_8() -> None:
    assert default_patch(28) == 4 and default_patch(32) == 4 and default_patch(256) == 32


def test_rt1_exact_rate_blocks_and_no_noise(x: torch.Tensor) -> None:
    out = RandomTransform(kind="rt1", rate=0.25)(x, generator=make_generator(0))
    (m,) = out.masks
    assert m.shape == (16, 1, 28, 28) and not out.aggregate
    removed_blocks = (1 - m)[:, 0, ::4, ::4].sum(dim=(1, 2))
    assert torch.all(removed_blocks == 12)  # round(0.25 · 49)
    assert torch.allclose((1 - m).mean(dim=(1, 2, 3)), torch.full((16,), 12 * 16 / 784))
    blocks = m.view(16, 1, 7, 4, 7, 4)  # constant inside every p × p block
    assert torch.all(blocks.amax(dim=(3, 5)) == blocks.amin(dim=(3, 5)))
    assert torch.equal(out.base, x)  # RT1 adds no noise
    assert torch.equal(out.inputs[0], m * x)


def test_masks_differ_between_images_and_calls(x: torch.Tensor) -> None:
    t = RandomTransform(kind="rt1")
    g = make_generator(1)
    a, b = t(x, g).masks[0], t(x, g).masks[0]
    assert not torch.equal(a, b) and not torch.equal(a[0], a[1])


def test_rt2_noise_then_mask_clipped() -> None:
    x = torch.full((64, 1, 28, 28), 0.5)
    out = RandomTransform(kind="rt2", sigma=0.1)(x, generator=make_generator(0))
    noise = out.base - x
    assert abs(noise.std().item() - 0.1) < 0.005 and abs(noise.mean().item()) < 0.005
    assert float(out.base.min()) >= 0 and float(out.base.max()) <= 1
    big = RandomTransform(kind="rt2", sigma=2.0)(x, generator=make_generator(0)).base
    assert float(big.min()) == 0.0 and float(big.max()) == 1.0  # clipped to [0, 1]
    (m,) = out.masks
    assert torch.equal(out.inputs[0], m * out.base)


def test_rt3_masks_partition_the_image(x: torch.Tensor) -> None:
    out = RandomTransform(kind="rt3", n_masks=4)(x, generator=make_generator(0))
    assert out.aggregate and len(out.masks) == 4
    removed = torch.stack([1 - m for m in out.masks])
    assert torch.all(removed.sum(0) == 1)  # non-overlapping and covering
    rates = removed.mean(dim=(3, 4)).flatten()
    assert rates.min() >= 12 * 16 / 784 and rates.max() <= 13 * 16 / 784  # 49 blocks → 12/12/12/13


class _Probe(nn.Module):
    """Purifier returning ``a`` on removed pixels and ``b`` on kept ones (or the masked input)."""

    def __init__(self, a: float = 0.7, b: float = 0.2, echo: bool = False) -> None:
        super().__init__()
        self.a, self.b, self.echo = a, b, echo

    def forward(self, xm: torch.Tensor, m: torch.Tensor, return_stages: bool = False):  # noqa: ANN201
        out = xm if self.echo else (1 - m) * self.a + m * self.b
        out = out.expand_as(xm)
        return [out] if return_stages else out


def test_rt3_aggregates_only_removed_pixels(x: torch.Tensor) -> None:
    pipe = PurificationPipeline(nn.Identity(), _Probe(), TransformConfig(kind="rt3"), seed=0)
    assert torch.allclose(pipe.purify(x), torch.full_like(x, 0.7))  # b never leaks in
    echo = PurificationPipeline(nn.Identity(), _Probe(echo=True), TransformConfig(kind="rt3"), seed=0)
    assert torch.count_nonzero(echo.purify(x)) == 0  # kept (unmasked) input pixels are discarded


def test_rt1_rt2_use_the_purifier_output_as_is(x: torch.Tensor) -> None:
    pipe = PurificationPipeline(nn.Identity(), _Probe(), TransformConfig(kind="rt2"), seed=0)
    d = pipe.purify(x, return_details=True)
    assert torch.allclose(d.x_hat, d.hole * 0.7 + (1 - d.hole) * 0.2)  # Eq 3: x̂ = g(x_t)


def test_bad_configs_raise() -> None:
    with pytest.raises(ValueError, match="kind"):
        TransformConfig(kind="rt9")
    with pytest.raises(ValueError, match="missing rate"):
        TransformConfig(rate=1.5)
    with pytest.raises(ValueError, match="N×C×H×W"):
        RandomTransform()(torch.zeros(28, 28))
    with pytest.raises(ValueError, match="cannot split"):
        RandomTransform(kind="rt3", patch=28, n_masks=4)(torch.zeros(1, 1, 28, 28))
