"""ResNet-18 / ResNet-50 for MedMNIST-sized images (Yang et al., 2023): ``resnet18``, ``resnet50``.

DataFreeShield (§5 and Appendix A) pretrains the MedMNIST teachers with "the two network
architectures ResNet-18 and ResNet-50 used in the original paper (Yang et al., 2023)". For 28×28
inputs MedMNIST's benchmark code uses the ImageNet ResNet (He et al., 2016, Table 1: stages of
64/128/256/512 channels, [2,2,2,2] basic blocks or [3,4,6,3] bottlenecks) with the 7×7 stride-2 stem
and the max-pool replaced by one 3×3 stride-1 convolution, so a 28×28 image keeps its resolution
into the first stage (28 → 28 → 14 → 7 → 4 over the four stages). Here the blocks are torchvision's
``BasicBlock`` / ``Bottleneck`` (stride on the 3×3 conv, "ResNet v1.5"; 1×1 conv + BN projection
shortcuts) assembled by torchvision's own ``ResNet``; only the stem and the classifier's name change.

For inputs larger than 32×32 (MedMNIST+ at 64/128/224 px) the builders keep torchvision's ImageNet
stem, as MedMNIST's benchmark does for those sizes. Parameters for 10 classes and 3 channels:
resnet18 11.17M, resnet50 23.52M.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from shieldkit.models.registry import register_model
from shieldkit.models.resnet_cifar import check_builder_args

SMALL_IMAGE_MAX = 32  # up to this size use the 3×3 stride-1 stem without max-pool
STEM_WIDTH = 64  # torchvision ResNet's ``inplanes`` after the stem


class MedResNet(ResNet):
    """torchvision ResNet with an in_channels-aware, small-image stem and ``forward_features``/``head``."""

    def __init__(self, block: type[BasicBlock | Bottleneck], layers: list[int], num_classes: int = 10,
                 in_channels: int = 3, image_size: int = 28) -> None:
        check_builder_args(num_classes, in_channels)
        super().__init__(block, layers, num_classes=num_classes)
        if image_size <= SMALL_IMAGE_MAX:
            self.conv1 = nn.Conv2d(in_channels, STEM_WIDTH, 3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_channels, STEM_WIDTH, 7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")  # as torchvision
        # The registry contract names the classifier ``head``; keep a single Linear (no alias → one
        # set of weights in the state dict).
        self.head = self.fc
        del self.fc

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


@register_model
def resnet18(num_classes: int = 10, in_channels: int = 3, image_size: int = 28) -> nn.Module:
    """ResNet-18 (BasicBlock, [2, 2, 2, 2]), 512-d features, ~11.2M parameters."""
    return MedResNet(BasicBlock, [2, 2, 2, 2], num_classes, in_channels, image_size)


@register_model
def resnet50(num_classes: int = 10, in_channels: int = 3, image_size: int = 28) -> nn.Module:
    """ResNet-50 (Bottleneck, [3, 4, 6, 3]), 2048-d features, ~23.5M parameters."""
    return MedResNet(Bottleneck, [3, 4, 6, 3], num_classes, in_channels, image_size)
