"""Generators and the shared alternating loop of the adapted baselines (DataFreeShield Table 2)."""

from __future__ import annotations

import pytest
import torch

from shieldkit.models import create_model
from shieldkit.synthesis.baselines import BASELINES, BaselineConfig, run_baseline
from shieldkit.synthesis.generators import create_generator


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
@pytest.mark.parametrize("kind", ["dfad", "acgan"])
def test_generator_shapes_and_range(kind, shape):
    torch.manual_seed(0)
    g = create_generator(kind, 16, shape, 10, ngf=8)
    z, y = g.sample_inputs(6, torch.Generator().manual_seed(0))
    x = g(z, y)
    assert x.shape == (6, *shape)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    xs, ys = g.generate(7, torch.Generator().manual_seed(1), batch_size=3)
    assert xs.shape == (7, *shape) and ys.shape == (7,)


def test_generator_errors_and_conditioning():
    with pytest.raises(ValueError, match="unknown generator kind"):
        create_generator("vae", 8, (1, 28, 28), 10)
    g = create_generator("acgan", 8, (1, 28, 28), 10, ngf=4)
    with pytest.raises(ValueError, match="needs labels"):
        g(torch.randn(2, 8))
    with pytest.raises(ValueError, match="z must have shape"):
        g(torch.randn(2, 9), torch.zeros(2, dtype=torch.long))
    # the label changes the image of a conditional generator
    torch.manual_seed(0)
    z = torch.randn(1, 8).repeat(2, 1)
    x = g.eval()(z, torch.tensor([0, 1]))
    assert not torch.allclose(x[0], x[1])


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_shared_loop_trains_generator_and_student_not_teacher(name):
    torch.manual_seed(0)
    teacher = create_model("mnist_cnn").eval()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    cfg = BaselineConfig(student_steps=2, batch_size=6, nz=8, ngf=4, attack_steps=1, seed=0)
    student, gen, hist = run_baseline(name, teacher, cfg, progress=False)
    assert len(hist["g_loss"]) == len(hist["s_loss"]) == 2
    assert all(torch.isfinite(torch.tensor(hist["s_loss"])))
    for k, v in teacher.state_dict().items():  # teacher untouched (weights and BN buffers)
        assert torch.equal(v, before[k]), k
    assert all(p.requires_grad for p in student.parameters())
    assert not all(
        torch.equal(a, b) for a, b in zip(student.state_dict().values(), before.values(), strict=True)
    )
    assert not student.training
    if BASELINES[name].adaptive_temperature:
        assert all(cfg.tau_min <= t <= cfg.tau_max for t in hist["temperature"])


def test_unknown_baseline():
    with pytest.raises(KeyError, match="unknown baseline"):
        run_baseline("nope", create_model("mnist_cnn"), BaselineConfig(student_steps=1))
