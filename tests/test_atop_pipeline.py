"""AToP pipeline, purifiers, losses, training and the EOT evaluation on tiny real models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from shieldkit.attacks.adaptive import EOT
from shieldkit.attacks.library import correct_mask
from shieldkit.attacks.pgd import PGDConfig, pgd
from shieldkit.data import load_dataset
from shieldkit.defenses.atop import (
    FinetuneConfig,
    PretrainConfig,
    PurificationPipeline,
    PurifierConfig,
    TransformConfig,
    build_purifier,
    df_discriminator_loss,
    df_generator_loss,
    finetune_purifier,
    load_pipeline,
    mae_loss,
    pretrain_purifier,
    save_purifier,
)
from shieldkit.models import create_model
from shieldkit.training.standard import StandardTrainConfig, train_classifier


@pytest.fixture(scope="module")
def data():  # noqa: ANN201
    return load_dataset("mnist5k", "train").subset(1600, seed=0), load_dataset("mnist5k", "test").subset(48, seed=1)


@pytest.fixture(scope="module")
def clf(data) -> nn.Module:  # noqa: ANN001
    torch.manual_seed(0)
    m = create_model("mnist_cnn", num_classes=10, in_channels=1, image_size=28)
    return train_classifier(m, data[0], StandardTrainConfig(epochs=3, batch_size=64, seed=0), progress=False).eval()


def _tiny(kind: str = "gated") -> tuple[nn.Module, PurifierConfig]:
    cfg = PurifierConfig(kind=kind, width=4)
    torch.manual_seed(0)
    return build_purifier(cfg), cfg


class _Keep(nn.Module):
    """Purifier that returns its masked input (keeps the classifier meaningful on RT1/RT2)."""

    def forward(self, xm: torch.Tensor, m: torch.Tensor, return_stages: bool = False):  # noqa: ANN201
        return [xm] if return_stages else xm


def test_losses_on_known_cases() -> None:
    ones, zeros = torch.ones(2, 1, 2, 2), torch.zeros(2, 1, 2, 2)
    assert df_generator_loss(ones, zeros, None).item() == pytest.approx(1.0)
    assert df_generator_loss(ones, [zeros, 0.5 * ones], torch.tensor([1.0, 3.0])).item() == pytest.approx(-0.5)
    assert df_generator_loss(ones, zeros, torch.tensor([1.0, 3.0]), adv_weight=0.5, l1_weight=2.0).item() \
        == pytest.approx(1.0)
    assert df_discriminator_loss(torch.tensor([2.0, 0.0]), torch.tensor([-2.0, 0.0])).item() == pytest.approx(1.0)
    assert mae_loss(zeros, 0.5 * ones).item() == pytest.approx(0.25)
    with pytest.raises(ValueError, match="shape"):
        mae_loss(zeros, torch.zeros(1, 1, 2, 2))


@pytest.mark.parametrize("kind", ["gated", "ae"])
@pytest.mark.parametrize("side", [28, 32])
def test_purifier_shapes_and_range(kind: str, side: int) -> None:
    net, _ = _tiny(kind)
    x = torch.rand(3, 1, side, side)
    m = (torch.rand(3, 1, side, side) > 0.25).float()
    out = net(m * x, m)
    assert out.shape == x.shape and float(out.min()) >= 0 and float(out.max()) <= 1


def test_refine_stage_gives_two_outputs() -> None:
    net = build_purifier(PurifierConfig(width=4, refine=True))
    x = torch.rand(2, 1, 28, 28)
    assert len(net(x, torch.ones(2, 1, 28, 28), return_stages=True)) == 2


@pytest.mark.parametrize("rt", ["rt1", "rt2", "rt3"])
def test_gradients_reach_input_through_purifier(clf: nn.Module, data, rt: str) -> None:  # noqa: ANN001
    net, _ = _tiny()
    pipe = PurificationPipeline(clf, net, TransformConfig(kind=rt), seed=0)
    x = data[1].x[:4].clone().requires_grad_(True)
    pipe(x).logsumexp(1).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in net.parameters())
    if rt == "rt3":  # every pixel is regenerated, so the gradient flows *only* through the purifier
        assert (x.grad != 0).float().mean() > 0.5


def test_randomness_detected_and_reproducible(clf: nn.Module, data) -> None:  # noqa: ANN001
    net, _ = _tiny()
    pipe = PurificationPipeline(clf, net, TransformConfig(kind="rt2")).eval()
    x = data[1].x[:8]
    with torch.no_grad():
        assert not torch.allclose(pipe(x), pipe(x))  # repeated passes disagree: attack with EOT
        pipe.reseed(3)
        a = pipe(x)
        pipe.reseed(3)
        assert torch.equal(a, pipe(x))


def test_pipeline_rejects_wrong_range(clf: nn.Module) -> None:
    net, _ = _tiny()
    pipe = PurificationPipeline(clf, net, TransformConfig())
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        pipe(torch.rand(2, 1, 28, 28) * 2 - 1)


def test_eot_pgd_beats_single_sample_pgd(clf: nn.Module, data) -> None:  # noqa: ANN001
    # half the pixels masked at random: a single-sample gradient sees one mask, EOT sees its expectation
    pipe = PurificationPipeline(clf, _Keep(), TransformConfig(kind="rt1", rate=0.5), seed=0).eval()
    x, y = data[1].x, data[1].y
    cfg = PGDConfig(eps=0.1, steps=5, alpha=0.03)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    x_single = pgd(pipe, x, y, cfg, generator=g1)
    x_eot = pgd(EOT(pipe, 8), x, y, cfg, generator=g2)

    def acc(xa: torch.Tensor) -> float:  # expected accuracy over 8 fixed draws of the randomness
        out = []
        for s in range(8):
            pipe.reseed(100 + s)
            out.append(correct_mask(pipe, xa, y).float().mean())
        return float(torch.stack(out).mean())

    assert acc(x) > 0.2  # half the pixels masked, no purifier: still far above chance (0.1) on clean digits
    assert acc(x_eot) < acc(x_single)


def test_pretrain_finetune_checkpoint_roundtrip(clf: nn.Module, data, tmp_path) -> None:  # noqa: ANN001
    pcfg, tcfg = PurifierConfig(width=4), TransformConfig(kind="rt1")
    x, y = data[0].x[:32], data[0].y[:32]
    pur, disc, hist = pretrain_purifier(x, tcfg, pcfg, PretrainConfig(epochs=1, batch_size=16, adv_weight=0.01),
                                        out_dir=tmp_path / "pre", progress=False)
    assert disc is not None and len(hist) == 1 and {"d", "org"} <= set(hist[0])
    before = [p.detach().clone() for p in clf.parameters()]
    flags = [p.requires_grad for p in clf.parameters()]
    tuned, h2 = finetune_purifier(clf, pur, pcfg, tcfg, x, y, FinetuneConfig(epochs=1, batch_size=16, eot_samples=1),
                                  discriminator=disc, out_dir=tmp_path / "ft", progress=False)
    assert "extra" in h2[0]  # λ·CE was applied
    assert all(torch.equal(a, b) for a, b in zip(before, clf.parameters(), strict=True))  # θ_f frozen
    assert [p.requires_grad for p in clf.parameters()] == flags
    assert any(not torch.equal(a, b) for a, b in zip(pur.parameters(), tuned.parameters(), strict=True))
    # resume: a second call with the same config finds the finished checkpoint and does no more epochs
    _, h3 = finetune_purifier(clf, pur, pcfg, tcfg, x, y, FinetuneConfig(epochs=1, batch_size=16, eot_samples=1),
                              discriminator=disc, out_dir=tmp_path / "ft", progress=False)
    assert h3 == h2
    save_purifier(tmp_path / "p.pt", tuned, pcfg, tcfg)
    pipe = load_pipeline(tmp_path / "p.pt", clf, seed=5)
    ref = PurificationPipeline(clf, tuned, tcfg, seed=5)
    with torch.no_grad():
        assert torch.allclose(pipe(data[1].x[:4]), ref(data[1].x[:4]))


def test_finetune_rejects_mismatched_labels(clf: nn.Module) -> None:
    net, pcfg = _tiny()
    with pytest.raises(ValueError, match="labels"):
        finetune_purifier(clf, net, pcfg, TransformConfig(), torch.rand(4, 1, 28, 28), torch.zeros(3, dtype=torch.long))


def test_classifier_fixture_is_trained(clf: nn.Module, data) -> None:  # noqa: ANN001
    assert correct_mask(clf, data[1].x, data[1].y).float().mean() > 0.8
