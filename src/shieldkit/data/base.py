"""The one in-memory dataset type every stage exchanges."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.utils.data import Dataset


@dataclass
class ImageDataset(Dataset):
    """Images in [0, 1] (``N×C×H×W`` float32) with integer labels.

    Kept in memory on purpose: every dataset shieldkit targets (MNIST-like, CIFAR, SVHN, MedMNIST at
    28×28) fits, and tensor slicing is far faster on CPU than a per-item DataLoader pipeline.
    """

    x: torch.Tensor
    y: torch.Tensor
    classes: list[str]
    name: str = "dataset"
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate_images(self.x, what=f"dataset {self.name!r}")
        if self.y.ndim != 1 or self.y.shape[0] != self.x.shape[0]:
            raise ValueError(f"dataset {self.name!r}: labels must be 1-D with one label per image, got "
                             f"x {tuple(self.x.shape)} and y {tuple(self.y.shape)}")
        self.y = self.y.long()
        if len(self.y) and (int(self.y.min()) < 0 or int(self.y.max()) >= len(self.classes)):
            raise ValueError(f"dataset {self.name!r}: labels outside [0, {len(self.classes) - 1}]")

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x.shape[1:])  # type: ignore[return-value]

    def subset(self, n: int | None, seed: int = 0, stratified: bool = True) -> ImageDataset:
        """A fixed, seeded subset of ``n`` points (class-balanced by round-robin when stratified)."""
        if n is None or n >= len(self):
            return self
        g = torch.Generator().manual_seed(seed)
        perm = torch.randperm(len(self), generator=g)
        if stratified:
            # round-robin over classes in permuted order → balanced and deterministic
            buckets = [perm[self.y[perm] == c] for c in range(self.num_classes)]
            order, k = [], 0
            while len(order) < n:
                for b in buckets:
                    if k < len(b):
                        order.append(int(b[k]))
                        if len(order) == n:
                            break
                k += 1
            idx = torch.tensor(sorted(order))
        else:
            idx = perm[:n].sort().values
        return ImageDataset(self.x[idx], self.y[idx], self.classes, f"{self.name}[{n}]", dict(self.meta))


def validate_images(x: torch.Tensor, what: str = "images") -> None:
    """Raise a clear error for anything that is not a finite N×C×H×W batch in [0, 1]."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what}: expected a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"{what}: expected shape N×C×H×W, got {tuple(x.shape)}")
    if not torch.is_floating_point(x):
        raise ValueError(f"{what}: expected float images in [0, 1], got dtype {x.dtype}")
    if x.numel() and not torch.isfinite(x).all():
        raise ValueError(f"{what}: contains NaN or Inf values")
    if x.numel() and (float(x.min()) < 0.0 or float(x.max()) > 1.0):
        raise ValueError(f"{what}: values must lie in [0, 1], got [{float(x.min()):.3g}, {float(x.max()):.3g}]")
