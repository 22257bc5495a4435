"""A user's own MNIST classifier, written as a user would write it: plain PyTorch, no shieldkit import.

The second teacher architecture of issue 16's recipe ablation: a small ResNet with BatchNorm after every convolution
(the residual and shortcut branches alike) and a BatchNorm1d in a two-layer head — unlike the registry's
``mnist_cnn``, which has no skip connections and a single linear head. shieldkit reaches it only through
``import_model("benchmarks/user_models/mnist_resnet_bn1d.py:MnistResNet", weights=...)`` (the path of
``shieldkit import-model``); ``benchmarks/recipe.py --teacher-source`` trains it on the mnist5k training split with
the plain loop :func:`train` below (a user's training script), then imports it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class MnistResNet(nn.Module):
    """stem 16 → blocks 16, 32 (/2), 64 (/2) → global average pool → Linear-BatchNorm1d-ReLU → Linear (~82k
    parameters). Takes [0, 1] images of shape (N, 1, 28, 28) and returns logits."""

    def __init__(self, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        w = width
        self.stem = nn.Sequential(nn.Conv2d(1, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
        self.layers = nn.Sequential(Block(w, w, 1), Block(w, 2 * w, 2), Block(2 * w, 4 * w, 2))
        self.fc1 = nn.Linear(4 * w, 4 * w, bias=False)
        self.bn_fc = nn.BatchNorm1d(4 * w)
        self.fc2 = nn.Linear(4 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.adaptive_avg_pool2d(self.layers(self.stem(x)), 1).flatten(1)
        return self.fc2(F.relu(self.bn_fc(self.fc1(h))))


def train(x: torch.Tensor, y: torch.Tensor, epochs: int = 15, seed: int = 0) -> MnistResNet:
    """The user's training script: Adam 1e-3, batches of 128, random ±2-pixel shifts, ``epochs`` epochs."""
    torch.manual_seed(seed)
    net = MnistResNet()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * -(-len(x) // 128))
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        net.train()
        for idx in torch.randperm(len(x), generator=g).split(128):
            dx, dy = (int(v) for v in torch.randint(-2, 3, (2,), generator=g))
            xb = torch.roll(x[idx], shifts=(dx, dy), dims=(2, 3))
            loss = F.cross_entropy(net(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return net.eval()
