"""Shared fixtures: real embedded data and a small real teacher trained once per test session."""

from __future__ import annotations

import pytest
import torch

from shieldkit.data import load_dataset
from shieldkit.models import create_model
from shieldkit.training.standard import StandardTrainConfig, train_classifier
from shieldkit.utils.allocator import tune_allocator


def pytest_configure(config):  # noqa: ARG001
    """One declared policy instead of scattered ``torch.set_num_threads(1)`` calls: every test process
    computes on one thread. Parallelism comes from ``pytest -n 2`` (one xdist worker per core), and
    one-thread kernels make the bit-identity tests independent of how many workers run. Each test process
    also keeps freed memory mapped from the start, as every ``shieldkit`` command does
    (``shieldkit.utils.allocator``), so that no test's memory behaviour depends on which CLI test ran first."""
    torch.set_num_threads(1)
    tune_allocator()


@pytest.fixture(scope="session")
def mnist_train():
    return load_dataset("mnist5k", "train")


@pytest.fixture(scope="session")
def mnist_test():
    return load_dataset("mnist5k", "test")


@pytest.fixture(scope="session")
def mnist_teacher(mnist_train):
    """A real, standard-trained mnist_cnn (3 epochs on the 4,000 real training digits, ~95 %)."""
    torch.manual_seed(0)
    m = create_model("mnist_cnn", dataset="mnist5k", mean=[0.13], std=[0.31])
    train_classifier(m, mnist_train, StandardTrainConfig(epochs=3, seed=0), progress=False)
    return m.eval()
