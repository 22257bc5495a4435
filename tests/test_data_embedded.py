import pytest
import torch

from shieldkit.data import ImageDataset, list_datasets, load_dataset
from shieldkit.data.base import validate_images


def test_mnist5k_split_is_fixed_stratified_and_disjoint(mnist_train, mnist_test):
    assert mnist_train.x.shape == (4000, 1, 28, 28) and mnist_test.x.shape == (1000, 1, 28, 28)
    assert torch.equal(mnist_train.y.bincount(), torch.full((10,), 400))
    assert torch.equal(mnist_test.y.bincount(), torch.full((10,), 100))
    assert float(mnist_train.x.min()) >= 0.0 and float(mnist_train.x.max()) <= 1.0
    # disjoint: no test image appears in train
    tr = {hash(r.numpy().tobytes()) for r in mnist_train.x}
    assert sum(hash(r.numpy().tobytes()) in tr for r in mnist_test.x) < 5  # MNIST has a few exact duplicates
    again = load_dataset("mnist5k", "test")
    assert torch.equal(again.x, mnist_test.x) and torch.equal(again.y, mnist_test.y)


def test_digits_resized_and_native():
    d28 = load_dataset("digits", "train")
    d8 = load_dataset("digits", "test", image_size=8)
    assert d28.x.shape[1:] == (1, 28, 28) and d8.x.shape[1:] == (1, 8, 8)
    assert len(d28) + len(d8) == 1797
    assert float(d28.x.max()) <= 1.0 and float(d28.x.min()) >= 0.0


def test_subset_is_balanced_and_seeded(mnist_test):
    s1, s2 = mnist_test.subset(200, seed=3), mnist_test.subset(200, seed=3)
    assert torch.equal(s1.x, s2.x)
    assert torch.equal(s1.y.bincount(), torch.full((10,), 20))


def test_clear_errors():
    with pytest.raises(KeyError, match="unknown dataset"):
        load_dataset("nope")
    assert "mnist5k" in list_datasets(embedded_only=True)
    with pytest.raises(ValueError, match="NaN"):
        validate_images(torch.full((1, 1, 2, 2), float("nan")))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        validate_images(torch.full((1, 1, 2, 2), 2.0))
    with pytest.raises(ValueError, match="N×C×H×W"):
        ImageDataset(torch.zeros(3, 28, 28), torch.zeros(3), ["a"])
    with pytest.raises(ValueError, match="labels outside"):
        ImageDataset(torch.zeros(2, 1, 2, 2), torch.tensor([0, 5]), ["a", "b"])
