"""CIFAR-style ResNets (He et al., 2016, §4.2): ``resnet20`` and ``resnet56``.

The network of He et al. §4.2 for 32×32 inputs: a 3×3 convolution with 16 filters, then three stages
of ``n`` basic blocks (two 3×3 conv-BN layers each) on feature maps of 32×32, 16×16 and 8×8 with
16, 32 and 64 filters, global average pooling and a linear classifier — ``6n + 2`` weighted layers,
so ResNet-20 is ``n = 3`` and ResNet-56 is ``n = 9``.

DataFreeShield (§5, "Experimental settings") takes its CIFAR/SVHN teachers from PyTorchCV, so this
module reproduces PyTorchCV's ``resnet20_cifar10`` / ``resnet56_cifar10`` exactly: the shortcut that
changes width/resolution is a strided 1×1 convolution followed by BatchNorm (He et al.'s option B,
not the zero-padding option A of the paper's CIFAR experiments), giving 272,474 and 855,770
parameters for 10 classes (He et al. Table 6 quotes 0.27M / 0.85M). The module names mirror
PyTorchCV's (``features.init_block``, ``features.stageK.unitJ.body.conv1.conv`` …), so a PyTorchCV
state dict loads after :func:`from_pytorchcv_state_dict` renames its ``output`` layer to ``head``.

Deviation: PyTorchCV pools with a fixed ``AvgPool2d(8)``, which only fits 32×32 inputs; global
*adaptive* average pooling gives identical outputs at 32×32 and also accepts 28×28 (MNIST-like)
images, where the last stage is 7×7.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

import torch
from torch import nn

from shieldkit.models.base import PooledLinearClassifier
from shieldkit.models.registry import register_model

CIFAR_STAGE_WIDTHS = (16, 32, 64)  # He et al. §4.2
CIFAR_STEM_WIDTH = 16


def from_pytorchcv_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a PyTorchCV CIFAR model's state dict (``resnet*_cifar*``, ``wrn*_cifar*``) to shieldkit's.

    The only difference is the classifier's name (``output`` → ``head``); load the result into the
    backbone (``create_model(...).net``), not the normalising wrapper.
    """
    prefix = "output."
    return {("head." + k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state_dict.items()}


def conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, relu: bool = True) -> nn.Sequential:
    """Conv (no bias) → BatchNorm → optional ReLU, named ``conv``/``bn``/``activ`` as in PyTorchCV."""
    layers: OrderedDict[str, nn.Module] = OrderedDict(
        conv=nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
        bn=nn.BatchNorm2d(cout))
    if relu:
        layers["activ"] = nn.ReLU(inplace=True)
    return nn.Sequential(layers)


class BasicUnit(nn.Module):
    """Post-activation basic block: ``relu(BN(conv(relu(BN(conv(x))))) + shortcut(x))`` (He et al. Fig. 2)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(OrderedDict(conv1=conv_bn(cin, cout, 3, stride),
                                              conv2=conv_bn(cout, cout, 3, relu=False)))
        # Projection shortcut (option B) only where the shape changes, identity elsewhere.
        reshape = cin != cout or stride != 1
        self.identity_conv = conv_bn(cin, cout, 1, stride, relu=False) if reshape else None
        self.activ = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.identity_conv is None else self.identity_conv(x)
        return self.activ(self.body(x) + identity)


class CifarResNet(PooledLinearClassifier):
    """ResNet-(6n+2) for small images; ``forward_features`` returns the 64-d pooled features."""

    def __init__(self, blocks_per_stage: int, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        check_builder_args(num_classes, in_channels)
        features: OrderedDict[str, nn.Module] = OrderedDict(
            init_block=conv_bn(in_channels, CIFAR_STEM_WIDTH, 3))
        cin = CIFAR_STEM_WIDTH
        for s, width in enumerate(CIFAR_STAGE_WIDTHS):
            units = OrderedDict()
            for u in range(blocks_per_stage):
                stride = 2 if (s > 0 and u == 0) else 1
                units[f"unit{u + 1}"] = BasicUnit(cin, width, stride)
                cin = width
            features[f"stage{s + 1}"] = nn.Sequential(units)
        self.features = nn.Sequential(features)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(cin, num_classes)
        init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(x)).flatten(1)


def init_weights(model: nn.Module) -> None:
    """He-normal convolutions (He et al., 2015), unit BN scale, zero biases — the usual ResNet init."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def check_builder_args(num_classes: int, in_channels: int) -> None:
    if num_classes < 1:
        raise ValueError(f"num_classes must be ≥ 1, got {num_classes}")
    if in_channels < 1:
        raise ValueError(f"in_channels must be ≥ 1, got {in_channels}")


@register_model
def resnet20(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """ResNet-20 (n = 3), ~0.27M parameters. ``image_size`` is free: pooling is global."""
    return CifarResNet(3, num_classes, in_channels)


@register_model
def resnet56(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """ResNet-56 (n = 9), ~0.86M parameters."""
    return CifarResNet(9, num_classes, in_channels)
