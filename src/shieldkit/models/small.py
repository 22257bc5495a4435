"""A small BatchNorm CNN for 28×28 / 32×32 inputs — the default MNIST-5k teacher.

Four 3×3 conv-BN-ReLU layers (two per resolution, 2×2 max-pooling between), global average pooling,
a linear head: ~66k parameters, ~98 % on the MNIST-5k split after a minute of CPU training, and
small enough that synthesis and adversarial training fit the demo's 15-minute budget on 2 cores.
"""

from __future__ import annotations

import torch
from torch import nn

from shieldkit.models.base import PooledLinearClassifier
from shieldkit.models.registry import register_model


def _conv_bn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SmallCNN(PooledLinearClassifier):
    def __init__(self, num_classes: int = 10, in_channels: int = 1, widths: tuple[int, int] = (32, 64)) -> None:
        super().__init__()
        w1, w2 = widths
        self.body = nn.Sequential(
            _conv_bn(in_channels, w1), _conv_bn(w1, w1), nn.MaxPool2d(2),
            _conv_bn(w1, w2), _conv_bn(w2, w2), nn.MaxPool2d(2),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(w2, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.body(x)).flatten(1)


@register_model
def mnist_cnn(num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> nn.Module:
    return SmallCNN(num_classes, in_channels, (32, 64))


@register_model
def mnist_cnn_wide(num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> nn.Module:
    return SmallCNN(num_classes, in_channels, (64, 128))


class SmallCNN5(PooledLinearClassifier):
    """Five 3×3 conv-BN-ReLU layers (16, 32 | pool | 32, 64 | pool | 64), global average pooling, a linear
    head: ~70k parameters — the shape of the 72k-parameter 5-conv BN teacher of issue 16's reference loop,
    kept to measure how much the teacher's architecture (one more BN layer, narrower first layers) moves
    data-free robustness (``benchmarks/recipe.py``)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv_bn(in_channels, 16), _conv_bn(16, 32), nn.MaxPool2d(2),
            _conv_bn(32, 32), _conv_bn(32, 64), nn.MaxPool2d(2), _conv_bn(64, 64),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(64, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.body(x)).flatten(1)


@register_model
def mnist_cnn5(num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> nn.Module:
    return SmallCNN5(num_classes, in_channels)
