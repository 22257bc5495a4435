"""Datasets: a registry of embedded (shipped-in-a-package) and local-path image datasets.

Every loader returns an :class:`ImageDataset`: float32 images ``N×C×H×W`` in [0, 1], int64 labels,
and class names. Nothing here ever downloads.
"""

from shieldkit.data.base import ImageDataset
from shieldkit.data.registry import DATASETS, list_datasets, load_dataset, register_dataset

# Importing the modules registers their loaders.
from shieldkit.data import embedded as _embedded  # noqa: E402,F401  isort: skip

# local-path loaders (CIFAR, SVHN, MedMNIST, ImageFolder)
from shieldkit.data import local as _local  # noqa: E402,F401  isort: skip

__all__ = ["DATASETS", "ImageDataset", "list_datasets", "load_dataset", "register_dataset"]
