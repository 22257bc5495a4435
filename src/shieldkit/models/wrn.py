"""Wide residual networks (Zagoruyko & Komodakis, 2016): ``wrn28_10`` and the small ``wrn16_4``.

WRN-d-k (paper Table 1): a 3×3 convolution with 16 filters, three stages of ``N = (d - 4) / 6``
pre-activation "wide basic" blocks B(3,3) (BN-ReLU-conv3×3, BN-ReLU-conv3×3) with ``16k``, ``32k``
and ``64k`` filters at 32×32, 16×16 and 8×8, then BN-ReLU, global average pooling and a linear
layer. WRN-28-10 (widths 160/320/640) has 36.5M parameters (paper §3: "36.5M").

As in PyTorchCV's ``wrn28_10_cifar10`` (DataFreeShield's teacher, and the authors' own Lua code),
a block that changes width or resolution feeds the *pre-activated* input ``relu(BN(x))`` to both
its first convolution and its 1×1 projection shortcut, and there is no dropout (the paper's dropout
variant is optional). Module names mirror PyTorchCV's, so
:func:`shieldkit.models.resnet_cifar.from_pytorchcv_state_dict` converts its weights. Pooling is
global adaptive (PyTorchCV: ``AvgPool2d(8)``), identical at 32×32 and also valid at 28×28.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from shieldkit.models.base import PooledLinearClassifier
from shieldkit.models.registry import register_model
from shieldkit.models.resnet_cifar import (
    CIFAR_STAGE_WIDTHS,
    CIFAR_STEM_WIDTH,
    check_builder_args,
    init_weights,
)


class PreActConv(nn.Module):
    """BN → ReLU → 3×3 conv (pre-activation ordering, He et al. 2016b / WRN Fig. 1c)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(cin)
        self.activ = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.activ(self.bn(x)))


class WideBasicUnit(nn.Module):
    """``x + conv2(conv1(x))`` with pre-activation convs; projection shortcut on ``relu(BN(x))``."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(OrderedDict(conv1=PreActConv(cin, cout, stride),
                                              conv2=PreActConv(cout, cout)))
        self.identity_conv = (nn.Conv2d(cin, cout, 1, stride=stride, bias=False)
                              if (cin != cout or stride != 1) else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv1 = self.body.conv1
        pre = conv1.activ(conv1.bn(x))
        out = self.body.conv2(conv1.conv(pre))
        return out + (x if self.identity_conv is None else self.identity_conv(pre))


class WideResNet(PooledLinearClassifier):
    """WRN-``depth``-``widen``; ``forward_features`` returns the ``64·widen``-d pooled features."""

    def __init__(self, depth: int, widen: int, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        check_builder_args(num_classes, in_channels)
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6N + 4 with N ≥ 1, got {depth}")
        if widen < 1:
            raise ValueError(f"WRN widening factor must be ≥ 1, got {widen}")
        n = (depth - 4) // 6
        features: OrderedDict[str, nn.Module] = OrderedDict(
            init_block=nn.Conv2d(in_channels, CIFAR_STEM_WIDTH, 3, padding=1, bias=False))
        cin = CIFAR_STEM_WIDTH
        for s, base in enumerate(CIFAR_STAGE_WIDTHS):
            width = base * widen
            units = OrderedDict()
            for u in range(n):
                units[f"unit{u + 1}"] = WideBasicUnit(cin, width, 2 if (s > 0 and u == 0) else 1)
                cin = width
            features[f"stage{s + 1}"] = nn.Sequential(units)
        features["post_activ"] = nn.Sequential(OrderedDict(bn=nn.BatchNorm2d(cin),
                                                           activ=nn.ReLU(inplace=True)))
        self.features = nn.Sequential(features)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(cin, num_classes)
        init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(x)).flatten(1)


@register_model
def wrn28_10(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """WRN-28-10 (N = 4 blocks per stage, widths 160/320/640), ~36.5M parameters."""
    return WideResNet(28, 10, num_classes, in_channels)


@register_model
def wrn16_4(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """WRN-16-4 (N = 2, widths 64/128/256), ~2.75M parameters: the same code path, cheap for tests."""
    return WideResNet(16, 4, num_classes, in_channels)
