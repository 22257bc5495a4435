"""Mixup / Cutout / CutMix on synthetic sets with teacher soft labels recomputed."""

from __future__ import annotations

import pytest
import torch

from shieldkit.models import create_model
from shieldkit.synthesis.augment import augment_images, augment_synthetic


def constant_images(n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    vals = torch.linspace(0.1, 0.9, n)
    return vals.view(n, 1, 1, 1).expand(n, 1, 8, 8).clone(), torch.arange(n) % 3


def test_mixup_is_a_convex_combination_of_two_images():
    x, y = constant_images()
    out, _ = augment_images(x, y, "mixup", generator=torch.Generator().manual_seed(0), p=1.0)
    for i in range(len(x)):
        v = out[i].unique()
        assert len(v) == 1  # constant images mix to a constant image
        assert 0.1 - 1e-6 <= float(v) <= 0.9 + 1e-6


def test_cutout_zeroes_one_box_and_cutmix_pastes_from_partner():
    x, y = constant_images()
    out, y2 = augment_images(x, y, "cutout", generator=torch.Generator().manual_seed(0), p=1.0, cutout_size=4)
    zeros = (out == 0).flatten(1).sum(1)
    assert torch.all(zeros > 0) and torch.all(zeros <= 16)
    assert torch.equal(y2, y)
    out, _ = augment_images(x, y, "cutmix", generator=torch.Generator().manual_seed(1), p=1.0)
    for i in range(len(x)):
        assert len(out[i].unique()) <= 2  # own value + the partner's pasted box
        assert torch.isclose(out[i], x[i]).any() or len(out[i].unique()) == 1


def test_p_zero_is_identity_and_seeded_determinism_and_errors():
    x, y = constant_images()
    out, _ = augment_images(x, y, "cutmix", generator=torch.Generator().manual_seed(0), p=0.0)
    assert torch.equal(out, x)
    a, _ = augment_images(x, y, "mixup", generator=torch.Generator().manual_seed(3))
    b, _ = augment_images(x, y, "mixup", generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="unknown augmentation"):
        augment_images(x, y, "autoaugment", generator=torch.Generator())
    with pytest.raises(ValueError, match="p must"):
        augment_images(x, y, "mixup", generator=torch.Generator(), p=2.0)


def test_augment_synthetic_recomputes_teacher_logits():
    torch.manual_seed(0)
    teacher = create_model("mnist_cnn").eval()
    x = torch.rand(10, 1, 28, 28)
    y = torch.arange(10)
    xa, ya, t = augment_synthetic(x, y, teacher, "cutout", seed=0, p=1.0)
    with torch.no_grad():
        assert torch.allclose(t, teacher(xa), atol=1e-5)
    assert not torch.equal(xa, x)
