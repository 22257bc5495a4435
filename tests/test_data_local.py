"""Local-path loaders, each fed tiny files written in the dataset's exact on-disk format."""

from __future__ import annotations

import io
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from shieldkit.data import DATASETS, load_dataset
from shieldkit.data.local import MEDMNIST_CLASSES, RestrictedUnpickler, restricted_load

RNG = np.random.default_rng(0)


# ------------------------------------------------------------------------------------------------ CIFAR

class _Py2Pickler(pickle._Pickler):
    """Writes bytes/str as Python 2 ``str`` (SHORT_BINSTRING/BINSTRING opcodes), as the official CIFAR
    pickles (made with Python 2's cPickle) do; Python 3's pickler would route them via _codecs.encode."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_py2_str(self, obj: bytes | str) -> None:
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        n = len(raw)
        self.write(pickle.SHORT_BINSTRING + bytes([n]) + raw if n < 256
                   else pickle.BINSTRING + struct.pack("<i", n) + raw)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str
    dispatch[str] = _save_py2_str


def _dump_py2_style(obj: object, path: Path) -> None:
    """Protocol-2, Python-2-style pickle naming numpy's reconstructor as numpy 1.x did (official files)."""
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    path.write_bytes(buf.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))


def _cifar_batch(n: int, labels: list[int], label_key: bytes = b"labels") -> dict:
    return {b"batch_label": b"training batch", label_key: labels,
            b"data": RNG.integers(0, 256, size=(n, 3072), dtype=np.uint8), b"filenames": [b"x.png"] * n}


def _write_cifar10(d: Path) -> tuple[list[dict], dict]:
    d.mkdir(parents=True)
    batches = [_cifar_batch(2, [i, (i + 1) % 10]) for i in range(5)]
    for i, b in enumerate(batches):
        _dump_py2_style(b, d / f"data_batch_{i + 1}")
    test = _cifar_batch(3, [9, 0, 4])
    (d / "test_batch").write_bytes(pickle.dumps(test, protocol=2))  # numpy-2 spelling also accepted
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship",
             b"truck"]
    _dump_py2_style({b"num_cases_per_batch": 2, b"label_names": names, b"num_vis": 3072}, d / "batches.meta")
    return batches, test


def test_cifar10_official_layout(tmp_path: Path) -> None:
    batches, test = _write_cifar10(tmp_path / "cifar-10-batches-py")
    assert b"_codecs" not in (tmp_path / "cifar-10-batches-py" / "data_batch_1").read_bytes()  # py2-style
    tr = load_dataset("cifar10", "train", root=tmp_path)
    assert tr.x.shape == (10, 3, 32, 32) and tr.x.dtype == torch.float32 and tr.y.dtype == torch.int64
    assert float(tr.x.min()) >= 0.0 and float(tr.x.max()) <= 1.0
    assert tr.y.tolist() == [lab for b in batches for lab in b[b"labels"]]
    assert tr.classes[0] == "airplane" and tr.classes[9] == "truck" and len(tr.classes) == 10
    row = batches[0][b"data"][1]  # second image: red plane, then green, then blue, each row-major
    assert torch.equal(tr.x[1, 0, 0, :], torch.from_numpy(row[:32].astype(np.float32) / 255))
    assert torch.equal(tr.x[1, 1, 0, 0], torch.tensor(row[1024] / 255, dtype=torch.float32))
    assert torch.equal(tr.x[1, 2, 31, 31], torch.tensor(row[3071] / 255, dtype=torch.float32))
    te = load_dataset("cifar10", "test", root=tmp_path / "cifar-10-batches-py")  # root = the folder itself
    assert te.x.shape == (3, 3, 32, 32) and te.y.tolist() == [9, 0, 4]
    assert te.name == "cifar10-test"


def test_cifar10_missing_file_is_clear(tmp_path: Path) -> None:
    _write_cifar10(tmp_path / "cifar-10-batches-py")
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(FileNotFoundError, match=r"test_batch.*Expected layout: root/cifar-10-batches-py"):
        load_dataset("cifar10", "test", root=tmp_path)
    with pytest.raises(FileNotFoundError, match="--data-root"):
        load_dataset("cifar10", "test")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset("cifar10", "test", root=tmp_path / "nope")


def test_cifar100_fine_labels(tmp_path: Path) -> None:
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    train = _cifar_batch(4, [0, 99, 5, 42], label_key=b"fine_labels")
    train[b"coarse_labels"] = [0, 19, 1, 2]
    _dump_py2_style(train, d / "train")
    test = _cifar_batch(2, [7, 8], label_key=b"fine_labels") | {b"coarse_labels": [0, 0]}
    _dump_py2_style(test, d / "test")
    fine = [f"class{i}".encode() for i in range(100)]
    _dump_py2_style({b"fine_label_names": fine, b"coarse_label_names": [b"c"] * 20}, d / "meta")
    tr = load_dataset("cifar100", "train", root=tmp_path)
    assert tr.x.shape == (4, 3, 32, 32) and tr.y.tolist() == [0, 99, 5, 42]
    assert tr.num_classes == 100 and tr.classes[99] == "class99"
    assert load_dataset("cifar100", "test", root=d).y.tolist() == [7, 8]


class _Exploit:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return os.makedirs, (str(self.target),)


def test_malicious_pickle_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "cifar-10-batches-py"
    _write_cifar10(d)
    marker = tmp_path / "pwned"
    (d / "test_batch").write_bytes(pickle.dumps({b"data": _Exploit(marker), b"labels": [0]}, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to unpickle (posix|nt|os)\.makedirs"):
        load_dataset("cifar10", "test", root=tmp_path)
    assert not marker.exists()  # refused at GLOBAL, before anything ran
    # the allow-list is exact: even numpy callables outside it are refused
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(pickle.dumps(np.load, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        restricted_load(bad)
    assert RestrictedUnpickler.ALLOWED  # documented allow-list is non-empty


def test_cifar_batch_with_wrong_structure(tmp_path: Path) -> None:
    d = tmp_path / "cifar-10-batches-py"
    _write_cifar10(d)
    _dump_py2_style({b"pixels": np.zeros((1, 3072), np.uint8)}, d / "test_batch")
    with pytest.raises(ValueError, match="is not a CIFAR batch"):
        load_dataset("cifar10", "test", root=tmp_path)
    _dump_py2_style({b"data": np.zeros((1, 100), np.uint8), b"labels": [0]}, d / "test_batch")
    with pytest.raises(ValueError, match="uint8 N×3072"):
        load_dataset("cifar10", "test", root=tmp_path)


# ------------------------------------------------------------------------------------------------- SVHN

def test_svhn_mat_and_label_10_is_zero(tmp_path: Path) -> None:
    from scipy.io import savemat

    X = RNG.integers(0, 256, size=(32, 32, 3, 5), dtype=np.uint8)
    y = np.array([[10], [1], [9], [10], [3]], dtype=np.uint8)
    savemat(tmp_path / "train_32x32.mat", {"X": X, "y": y})
    ds = load_dataset("svhn", "train", root=tmp_path)
    assert ds.x.shape == (5, 3, 32, 32) and ds.x.dtype == torch.float32
    assert ds.y.tolist() == [0, 1, 9, 0, 3] and ds.classes == [str(i) for i in range(10)]
    assert torch.equal(ds.x[2, 1, 4, 7], torch.tensor(X[4, 7, 1, 2] / 255, dtype=torch.float32))
    with pytest.raises(FileNotFoundError, match=r"test_32x32\.mat.*Expected layout"):
        load_dataset("svhn", "test", root=tmp_path)


# --------------------------------------------------------------------------------------------- MedMNIST

EXPECTED_MEDMNIST = {"pathmnist": 9, "dermamnist": 7, "octmnist": 4, "pneumoniamnist": 2, "retinamnist": 5,
                     "breastmnist": 2, "bloodmnist": 8, "tissuemnist": 8, "organamnist": 11,
                     "organcmnist": 11, "organsmnist": 11}


def test_medmnist_registry_class_counts() -> None:
    assert set(MEDMNIST_CLASSES) == set(EXPECTED_MEDMNIST)
    for flag, k in EXPECTED_MEDMNIST.items():
        assert DATASETS[flag]["num_classes"] == k and len(MEDMNIST_CLASSES[flag]) == k
        assert not DATASETS[flag]["embedded"] and f"{flag}.npz" in DATASETS[flag]["layout"]


def _write_medmnist(path: Path, k: int, rgb: bool, side: int = 28) -> dict:
    shape = (side, side, 3) if rgb else (side, side)
    arrays = {}
    for part, n in (("train", 6), ("val", 2), ("test", 3)):
        arrays[f"{part}_images"] = RNG.integers(0, 256, size=(n, *shape), dtype=np.uint8)
        arrays[f"{part}_labels"] = RNG.integers(0, k, size=(n, 1), dtype=np.uint8)
    np.savez_compressed(path, **arrays)
    return arrays


def test_medmnist_gray_and_rgb(tmp_path: Path) -> None:
    gray = _write_medmnist(tmp_path / "organamnist.npz", 11, rgb=False)
    rgb = _write_medmnist(tmp_path / "pathmnist.npz", 9, rgb=True)
    g = load_dataset("organamnist", "train", root=tmp_path)
    assert g.x.shape == (6, 1, 28, 28) and g.x.dtype == torch.float32 and g.y.dtype == torch.int64
    assert g.y.tolist() == gray["train_labels"].reshape(-1).tolist() and g.classes[0] == "bladder"
    assert torch.equal(g.x[:, 0], torch.from_numpy(gray["train_images"]).float() / 255)
    p = load_dataset("pathmnist", "test", root=tmp_path)
    assert p.x.shape == (3, 3, 28, 28) and p.num_classes == 9
    expected = torch.tensor(rgb["test_images"][1, 5, 6, 2] / 255, dtype=torch.float32)
    assert torch.equal(p.x[1, 2, 5, 6], expected)
    v = load_dataset("organamnist", "train", root=tmp_path, val=True)
    assert len(v) == 2 and v.name == "organamnist-val"
    assert load_dataset("organamnist", "test", root=tmp_path, as_rgb=True).x.shape == (3, 3, 28, 28)
    with pytest.raises(ValueError, match="requires split='train'"):
        load_dataset("organamnist", "test", root=tmp_path, val=True)


def test_medmnist_sizes_and_errors(tmp_path: Path) -> None:
    _write_medmnist(tmp_path / "bloodmnist_64.npz", 8, rgb=True, side=64)
    assert load_dataset("bloodmnist", "train", root=tmp_path, size=64).x.shape == (6, 3, 64, 64)
    with pytest.raises(FileNotFoundError, match=r"bloodmnist\.npz.*Expected layout"):
        load_dataset("bloodmnist", "train", root=tmp_path)
    np.savez(tmp_path / "dermamnist.npz", train_images=np.zeros((2, 28, 28, 3), np.uint8),
             train_labels=np.zeros((2, 3), np.uint8))
    with pytest.raises(ValueError, match="single-label"):
        load_dataset("dermamnist", "train", root=tmp_path)
    with pytest.raises(ValueError, match="lacks test_images"):
        load_dataset("dermamnist", "test", root=tmp_path)


# ------------------------------------------------------------------------------------------ ImageFolder

def _write_png(path: Path, arr: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def test_imagefolder_rgb_gray_resize_and_errors(tmp_path: Path) -> None:
    imgs = {}
    for split, n in (("train", 2), ("test", 1)):
        for cls in ("dog", "cat"):
            for i in range(n):
                a = RNG.integers(0, 256, size=(10, 12, 3), dtype=np.uint8)
                imgs[(split, cls, i)] = a
                _write_png(tmp_path / split / cls / f"{i}.png", a)
    tr = load_dataset("imagefolder", "train", root=tmp_path)
    assert tr.classes == ["cat", "dog"] and tr.y.tolist() == [0, 0, 1, 1]
    assert tr.x.shape == (4, 3, 10, 12) and tr.x.dtype == torch.float32
    assert torch.equal(tr.x[2], torch.from_numpy(imgs[("train", "dog", 0)]).permute(2, 0, 1).float() / 255)
    te = load_dataset("imagefolder", "test", root=tmp_path, image_size=16, grayscale=True)
    assert te.x.shape == (2, 1, 16, 16) and te.y.tolist() == [0, 1]
    assert float(te.x.min()) >= 0.0 and float(te.x.max()) <= 1.0

    gray_root = tmp_path / "gray"
    for split in ("train", "test"):
        _write_png(gray_root / split / "a" / "x.png", np.full((8, 8), 255, np.uint8))
        _write_png(gray_root / split / "b" / "y.png", np.zeros((8, 8), np.uint8))
    g = load_dataset("imagefolder", "test", root=gray_root)  # auto: every image is single-channel
    assert g.x.shape == (2, 1, 8, 8) and float(g.x[0].min()) == 1.0 and float(g.x[1].max()) == 0.0

    _write_png(tmp_path / "train" / "cat" / "big.png", np.zeros((20, 20, 3), np.uint8))
    with pytest.raises(ValueError, match="pass image_size"):
        load_dataset("imagefolder", "train", root=tmp_path)
    _write_png(tmp_path / "test" / "fox" / "0.png", np.zeros((10, 12, 3), np.uint8))
    with pytest.raises(ValueError, match=r"absent from train/: \['fox'\]"):
        load_dataset("imagefolder", "test", root=tmp_path)
    with pytest.raises(FileNotFoundError, match=r"missing directory .*test.*Expected layout: root/train/"):
        load_dataset("imagefolder", "test", root=tmp_path / "gray" / "train")
