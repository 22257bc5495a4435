"""The CIFAR / WRN / MedMNIST architectures: shapes, parameter counts, the backbone contract,
BatchNorm presence, weight-file round trips, and exact equivalence with PyTorchCV's models."""

from __future__ import annotations

import pytest
import torch

from shieldkit.models import MODELS, bn_layers, create_model, load_model, save_model
from shieldkit.models.resnet_cifar import from_pytorchcv_state_dict

ZOO = ["resnet20", "resnet56", "wrn16_4", "resnet18", "resnet50"]  # wrn28_10 tested on its own (36.5M)


def _build(arch: str, in_channels: int, image_size: int, num_classes: int = 7, seed: int = 0):
    torch.manual_seed(seed)
    return create_model(arch, num_classes=num_classes, in_channels=in_channels, image_size=image_size).eval()


def test_all_archs_registered() -> None:
    assert {"resnet20", "resnet56", "wrn28_10", "wrn16_4", "resnet18", "resnet50"} <= set(MODELS)


@pytest.mark.parametrize("arch", ZOO)
def test_shapes_contract_and_bn(arch: str) -> None:
    g = torch.Generator().manual_seed(1)
    for in_channels in (1, 3):
        for size in (28, 32):
            model = _build(arch, in_channels, size)
            x = torch.rand(2, in_channels, size, size, generator=g)
            with torch.no_grad():
                logits = model(x)
                feats = model.features(x)
                assert logits.shape == (2, 7)
                assert feats.ndim == 2 and feats.shape[0] == 2
                assert feats.shape[1] == model.head.in_features
                # forward == head(forward_features) on the backbone and through the wrapper
                torch.testing.assert_close(model.head(feats), logits, rtol=0, atol=0)
            assert isinstance(model.head, torch.nn.Linear) and model.head.out_features == 7
            assert len(bn_layers(model)) > 0
            assert torch.isfinite(logits).all()


# He et al. 2016 Table 6 (0.27M, 0.85M), Zagoruyko & Komodakis 2016 §3 (36.5M), torchvision (11.2M,
# 23.5M with the 3×3 stem); exact counts are PyTorchCV's for 10 classes / 3 channels.
@pytest.mark.parametrize(("arch", "published", "exact"), [
    ("resnet20", 0.27e6, 272_474), ("resnet56", 0.85e6, 855_770), ("wrn16_4", 2.75e6, 2_748_890),
    ("resnet18", 11.2e6, 11_173_962), ("resnet50", 23.5e6, 23_520_842)])
def test_parameter_counts(arch: str, published: float, exact: int) -> None:
    net = create_model(arch, num_classes=10, in_channels=3, image_size=32).net
    n = sum(p.numel() for p in net.parameters())
    assert n == exact
    assert abs(n - published) / published < 0.03


def test_wrn28_10_count_and_forward() -> None:
    torch.manual_seed(0)
    model = create_model("wrn28_10", num_classes=10, in_channels=3, image_size=32).eval()
    n = sum(p.numel() for p in model.net.parameters())
    assert n == 36_479_194 and abs(n - 36.5e6) / 36.5e6 < 0.01
    assert [m.out_channels for m in model.net.modules() if isinstance(m, torch.nn.Conv2d)][-1] == 640
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits, feats = model(x), model.features(x)
    assert logits.shape == (2, 10) and feats.shape == (2, 640)
    torch.testing.assert_close(model.head(feats), logits, rtol=0, atol=0)
    assert len(bn_layers(model)) == 25  # 12 blocks × 2 pre-activation BNs + the final BN


def test_medmnist_resnet_stem_keeps_resolution() -> None:
    net = create_model("resnet18", in_channels=1, image_size=28).net
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1)
    assert isinstance(net.maxpool, torch.nn.Identity)
    assert not hasattr(net, "fc")  # one classifier, named head
    big = create_model("resnet18", in_channels=3, image_size=64).net  # MedMNIST+ sizes: ImageNet stem
    assert big.conv1.kernel_size == (7, 7) and isinstance(big.maxpool, torch.nn.MaxPool2d)


@pytest.mark.parametrize("arch", ZOO)
def test_save_load_roundtrip(arch: str, tmp_path) -> None:
    model = _build(arch, 3, 32, num_classes=5)
    # non-trivial BN statistics so that a buffer lost in the round trip would change the logits
    for _, bn in bn_layers(model):
        bn.running_mean.uniform_(-0.1, 0.1)
        bn.running_var.uniform_(0.5, 1.5)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    save_model(model, tmp_path / arch)
    loaded = load_model(tmp_path / arch)
    assert loaded.card.arch == arch and loaded.card.num_classes == 5
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def _randomise_bn(model: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


@pytest.mark.parametrize(("arch", "ref_name"), [("resnet20", "resnet20_cifar10"),
                                                ("resnet56", "resnet56_cifar10"), ("wrn16_4", "wrn16_4")])
def test_identical_to_pytorchcv(arch: str, ref_name: str) -> None:
    """DataFreeShield's CIFAR teachers are PyTorchCV models: same weights → same logits."""
    pytest.importorskip("pytorchcv")
    from pytorchcv.model_provider import get_model
    from pytorchcv.models.wrn_cifar import get_wrn_cifar

    torch.manual_seed(0)
    ref = (get_wrn_cifar(num_classes=10, blocks=16, width_factor=4, model_name="wrn16_4_cifar10")
           if arch == "wrn16_4" else get_model(ref_name, pretrained=False))
    _randomise_bn(ref)
    ref.eval()
    net = create_model(arch, num_classes=10, in_channels=3, image_size=32).net.eval()
    net.load_state_dict(from_pytorchcv_state_dict(ref.state_dict()), strict=True)
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ours, theirs = net(x), ref(x)
    assert (ours - theirs).abs().max() <= 1e-5 * theirs.abs().max() + 1e-5


def test_bad_builder_args() -> None:
    with pytest.raises(ValueError, match="in_channels"):
        create_model("resnet20", in_channels=0)
    with pytest.raises(ValueError, match="num_classes"):
        create_model("resnet18", num_classes=0, in_channels=3)
    from shieldkit.models.wrn import WideResNet

    with pytest.raises(ValueError, match="6N \\+ 4"):
        WideResNet(depth=27, widen=2)
