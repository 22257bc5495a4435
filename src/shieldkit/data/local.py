"""Local-path datasets in their official on-disk formats: CIFAR-10/100, SVHN, MedMNIST, image folders.

Nothing here downloads: the user points ``root`` at files fetched once by other means (the official
archives, ``medmnist``'s ``.npz`` files, torchvision's download cache). Each loader checks the files
it needs and raises one ``FileNotFoundError`` line quoting the expected layout when one is missing.

Formats (the papers' datasets — DataFreeShield §5 uses MedMNIST-v2, SVHN, CIFAR-10 and CIFAR-100):

* **CIFAR** — the "python version" of Krizhevsky's archives: pickled dicts whose ``b"data"`` is a
  uint8 ``N×3072`` array (1024 red, 1024 green, 1024 blue values, each plane row-major) and whose
  labels are a list of ints. The pickles come from Python 2, so they are read with
  ``encoding="bytes"`` like the official loader. Unpickling can run arbitrary code, so instead of
  ``pickle.load`` a :class:`RestrictedUnpickler` resolves only the handful of globals a numpy array
  needs and refuses everything else before it can be called.
* **SVHN** — the "cropped digits" MATLAB files ``train_32x32.mat`` / ``test_32x32.mat``: ``X`` is
  ``32×32×3×N`` uint8, ``y`` is ``N×1`` with labels 1..10 where 10 stands for the digit 0.
* **MedMNIST** — one ``<flag>.npz`` per dataset as the ``medmnist`` package stores it, opened with
  ``allow_pickle=False``; labels are ``N×1``.
* **ImageFolder** — ``root/{train,test}/<class>/<image>``, decoded with Pillow.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import torch

from shieldkit.data.base import ImageDataset
from shieldkit.data.registry import register_dataset

# --------------------------------------------------------------------------------------------- pickles


def _numpy_reconstruct():
    try:  # numpy ≥ 2
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


def _codecs_encode(obj: str, encoding: str = "utf-8") -> bytes:
    """How protocol-2 pickles written by Python 3 spell a ``bytes`` literal (``_codecs.encode``)."""
    if not isinstance(obj, str) or not isinstance(encoding, str):
        raise pickle.UnpicklingError("malformed _codecs.encode call in pickle")
    return obj.encode(encoding)


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild dicts/lists/bytes/ints and numpy arrays, and nothing else.

    ``find_class`` is the only way a pickle reaches a callable; answering it from a fixed allow-list
    (instead of importing whatever module the stream names) means a crafted file cannot call
    ``os.system`` & co. — it fails at the ``GLOBAL`` opcode, before anything runs.
    """

    ALLOWED: dict[tuple[str, str], object] = {
        ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct(),  # written by numpy 1.x (official)
        ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct(),  # written by numpy 2.x
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _codecs_encode,
    }

    def __init__(self, file: io.BufferedIOBase, source: str = "pickle") -> None:
        super().__init__(file, encoding="bytes")
        self.source = source

    def find_class(self, module: str, name: str) -> object:
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"{self.source}: refusing to unpickle {module}.{name} — an official dataset batch holds "
                f"only numpy arrays, lists and bytes, so this file is not one (or has been tampered with)"
            ) from None


def restricted_load(path: Path) -> object:
    """Unpickle ``path`` with :class:`RestrictedUnpickler` (``encoding="bytes"``, as CIFAR requires)."""
    with open(path, "rb") as f:
        return RestrictedUnpickler(f, source=str(path)).load()


# --------------------------------------------------------------------------------------------- helpers


def _require(path: Path, dataset: str, layout: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"dataset {dataset!r}: missing {path}. Expected layout: {layout}")
    return path


def _to_float(x_uint8: np.ndarray) -> torch.Tensor:
    """uint8 N×C×H×W → float32 in [0, 1] (contiguous, owning its memory)."""
    return torch.from_numpy(np.ascontiguousarray(x_uint8, dtype=np.uint8)).float().div_(255.0)


def _labels(y: np.ndarray | list, n: int, what: str) -> torch.Tensor:
    arr = np.asarray(y).reshape(-1)
    if arr.shape[0] != n:
        raise ValueError(f"{what}: {arr.shape[0]} labels for {n} images")
    return torch.from_numpy(arr.astype(np.int64))


# --------------------------------------------------------------------------------------------- CIFAR

CIFAR10_LAYOUT = ("root/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta} — the official "
                  "CIFAR-10 'python version' archive, extracted (root may also be that folder)")
CIFAR100_LAYOUT = ("root/cifar-100-python/{train, test, meta} — the official CIFAR-100 'python version' "
                   "archive, extracted (root may also be that folder)")


def _cifar_dir(root: Path, folder: str, marker: str) -> Path:
    """Accept both ``root`` (containing ``folder``) and ``root`` = ``folder`` itself."""
    return root if (root / marker).exists() else root / folder


def _read_cifar_batch(path: Path, label_key: bytes, dataset: str) -> tuple[np.ndarray, list]:
    d = restricted_load(path)
    if not isinstance(d, dict) or b"data" not in d or label_key not in d:
        keys = sorted(d) if isinstance(d, dict) else type(d).__name__
        raise ValueError(f"dataset {dataset!r}: {path} is not a CIFAR batch (expected a dict with b'data' "
                         f"and {label_key!r}, got {keys})")
    data = np.asarray(d[b"data"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"dataset {dataset!r}: {path}: b'data' must be uint8 N×3072, got {data.dtype} "
                         f"{data.shape}")
    return data, list(d[label_key])


def _cifar(files: list[Path], meta: Path, label_key: bytes, names_key: bytes, dataset: str,
           split: str) -> ImageDataset:
    xs, ys = zip(*(_read_cifar_batch(f, label_key, dataset) for f in files), strict=True)
    x = np.concatenate(xs).reshape(-1, 3, 32, 32)  # channel planes, each row-major (official format)
    y = [label for batch in ys for label in batch]
    m = restricted_load(meta)
    if not isinstance(m, dict) or names_key not in m:
        raise ValueError(f"dataset {dataset!r}: {meta} has no {names_key!r} entry")
    classes = [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in m[names_key]]
    return ImageDataset(_to_float(x), _labels(y, len(x), dataset), classes, name=f"{dataset}-{split}",
                        meta={"source": str(files[0].parent), "format": "cifar-python"})


@register_dataset("cifar10", embedded=False, layout=CIFAR10_LAYOUT, num_classes=10)
def load_cifar10(split: str, root: Path) -> ImageDataset:
    d = _cifar_dir(root, "cifar-10-batches-py", "batches.meta")
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    files = [_require(d / n, "cifar10", CIFAR10_LAYOUT) for n in names]
    meta = _require(d / "batches.meta", "cifar10", CIFAR10_LAYOUT)
    return _cifar(files, meta, b"labels", b"label_names", "cifar10", split)


@register_dataset("cifar100", embedded=False, layout=CIFAR100_LAYOUT, num_classes=100)
def load_cifar100(split: str, root: Path) -> ImageDataset:
    """CIFAR-100 with its 100 fine labels (the coarse super-classes are not used by the papers)."""
    d = _cifar_dir(root, "cifar-100-python", "meta")
    files = [_require(d / split, "cifar100", CIFAR100_LAYOUT)]
    meta = _require(d / "meta", "cifar100", CIFAR100_LAYOUT)
    return _cifar(files, meta, b"fine_labels", b"fine_label_names", "cifar100", split)


# --------------------------------------------------------------------------------------------- SVHN

SVHN_LAYOUT = "root/{train_32x32.mat, test_32x32.mat} — SVHN 'cropped digits' (format 2) MATLAB files"
SVHN_ZERO_LABEL = 10  # SVHN stores the digit 0 as class 10


@register_dataset("svhn", embedded=False, layout=SVHN_LAYOUT, num_classes=10)
def load_svhn(split: str, root: Path) -> ImageDataset:
    from scipy.io import loadmat

    path = _require(root / f"{split}_32x32.mat", "svhn", SVHN_LAYOUT)
    mat = loadmat(path)
    if "X" not in mat or "y" not in mat:
        raise ValueError(f"dataset 'svhn': {path} lacks the 'X'/'y' variables of the cropped-digits format")
    X = np.asarray(mat["X"])
    if X.ndim != 4 or X.shape[2] != 3 or X.dtype != np.uint8:
        raise ValueError(f"dataset 'svhn': {path}: X must be uint8 H×W×3×N, got {X.dtype} {X.shape}")
    y = np.asarray(mat["y"]).reshape(-1).astype(np.int64)
    y[y == SVHN_ZERO_LABEL] = 0
    x = X.transpose(3, 2, 0, 1)  # H×W×C×N → N×C×H×W
    return ImageDataset(_to_float(x), _labels(y, x.shape[0], "svhn"), [str(i) for i in range(10)],
                        name=f"svhn-{split}", meta={"source": str(path), "format": "svhn-mat"})


# --------------------------------------------------------------------------------------------- MedMNIST

# Class names from medmnist's INFO (MedMNIST v2, Yang et al. 2023); only 2-D single-label tasks.
_ORGAN = ["bladder", "femur-left", "femur-right", "heart", "kidney-left", "kidney-right", "liver",
          "lung-left", "lung-right", "pancreas", "spleen"]
MEDMNIST_CLASSES: dict[str, list[str]] = {
    "pathmnist": ["adipose", "background", "debris", "lymphocytes", "mucus", "smooth muscle",
                  "normal colon mucosa", "cancer-associated stroma", "colorectal adenocarcinoma epithelium"],
    "dermamnist": ["actinic keratoses and intraepithelial carcinoma", "basal cell carcinoma",
                   "benign keratosis-like lesions", "dermatofibroma", "melanoma", "melanocytic nevi",
                   "vascular lesions"],
    "octmnist": ["choroidal neovascularization", "diabetic macular edema", "drusen", "normal"],
    "pneumoniamnist": ["normal", "pneumonia"],
    "retinamnist": ["0", "1", "2", "3", "4"],  # diabetic-retinopathy grade (ordinal)
    "breastmnist": ["malignant", "normal, benign"],
    "bloodmnist": ["basophil", "eosinophil", "erythroblast",
                   "immature granulocytes(myelocytes, metamyelocytes and promyelocytes)", "lymphocyte",
                   "monocyte", "neutrophil", "platelet"],
    "tissuemnist": ["Collecting Duct, Connecting Tubule", "Distal Convoluted Tubule",
                    "Glomerular endothelial cells", "Interstitial endothelial cells", "Leukocytes",
                    "Podocytes", "Proximal Tubule Segments", "Thick Ascending Limb"],
    "organamnist": _ORGAN,
    "organcmnist": _ORGAN,
    "organsmnist": _ORGAN,
}
MEDMNIST_NATIVE_SIZE = 28


def medmnist_layout(flag: str) -> str:
    return (f"root/{flag}.npz as saved by the medmnist package (keys train_/val_/test_images, *_labels; "
            f"for MedMNIST+ sizes pass size=64 etc. to read root/{flag}_64.npz)")


def _medmnist_file(root: Path, flag: str, size: int) -> Path:
    names = [f"{flag}.npz", f"{flag}_{size}.npz"] if size == MEDMNIST_NATIVE_SIZE else [f"{flag}_{size}.npz"]
    for n in names:
        if (root / n).is_file():
            return root / n
    return _require(root / names[0], flag, medmnist_layout(flag))


def load_medmnist(flag: str, split: str, root: Path, size: int = MEDMNIST_NATIVE_SIZE, val: bool = False,
                  as_rgb: bool = False) -> ImageDataset:
    """Load MedMNIST ``flag``. ``val=True`` (with ``split="train"``) returns the official validation split,
    so model selection never touches the test set; ``as_rgb`` repeats grayscale images to 3 channels
    (MedMNIST's ``--as_rgb``)."""
    if flag not in MEDMNIST_CLASSES:
        raise KeyError(f"unknown MedMNIST flag {flag!r}; supported: {', '.join(MEDMNIST_CLASSES)}")
    if val and split != "train":
        raise ValueError("val=True selects the validation split and requires split='train'")
    part = "val" if val else split
    path = _medmnist_file(root, flag, size)
    with np.load(path, allow_pickle=False) as z:
        if f"{part}_images" not in z or f"{part}_labels" not in z:
            raise ValueError(f"dataset {flag!r}: {path} lacks {part}_images/{part}_labels "
                             f"(has {sorted(z.files)})")
        images, labels = z[f"{part}_images"], z[f"{part}_labels"]
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[3] != 3):
        raise ValueError(f"dataset {flag!r}: {path}: {part}_images must be uint8 N×H×W or N×H×W×3, got "
                         f"{images.dtype} {images.shape}")
    if labels.ndim == 2 and labels.shape[1] != 1:
        raise ValueError(f"dataset {flag!r}: {path}: {part}_labels has shape {labels.shape}; only "
                         f"single-label tasks are supported")
    x = images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)
    if as_rgb and x.shape[1] == 1:
        x = np.repeat(x, 3, axis=1)
    return ImageDataset(_to_float(x), _labels(labels, x.shape[0], flag), list(MEDMNIST_CLASSES[flag]),
                        name=f"{flag}-{part}",
                        meta={"source": str(path), "format": "medmnist-npz", "size": size})


def _register_medmnist(flag: str) -> None:
    def loader(split: str, root: Path, size: int = MEDMNIST_NATIVE_SIZE, val: bool = False,
               as_rgb: bool = False) -> ImageDataset:
        return load_medmnist(flag, split, root, size=size, val=val, as_rgb=as_rgb)

    loader.__name__ = f"load_{flag}"
    loader.__doc__ = f"MedMNIST {flag} (see :func:`load_medmnist`)."
    register_dataset(flag, embedded=False, layout=medmnist_layout(flag),
                     num_classes=len(MEDMNIST_CLASSES[flag]))(loader)


for _flag in MEDMNIST_CLASSES:
    _register_medmnist(_flag)


# --------------------------------------------------------------------------------------------- folders

IMAGEFOLDER_LAYOUT = ("root/train/<class>/*.png|jpg|jpeg|bmp and root/test/<class>/* (class names = sorted "
                      "train subfolder names)")
_SINGLE_CHANNEL_MODES = ("1", "L", "LA", "I", "I;16", "F")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def _list_images(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS)


@register_dataset("imagefolder", embedded=False, layout=IMAGEFOLDER_LAYOUT)
def load_imagefolder(split: str, root: Path, image_size: int | None = None,
                     grayscale: bool | None = None) -> ImageDataset:
    """Images under ``root/<split>/<class>/``; the class list always comes from ``train/`` so both
    splits share label indices. ``image_size`` resizes (bilinear, antialiased) to a square; without it
    all images must already share one size. ``grayscale``: True → 1 channel, False → RGB, None →
    1 channel iff every *train* image is single-channel. 8-bit images are assumed (16-bit is clipped)."""
    from PIL import Image

    train_dir, split_dir = root / "train", root / split
    for d in (train_dir, split_dir):
        if not d.is_dir():
            raise FileNotFoundError(f"dataset 'imagefolder': missing directory {d}. Expected layout: "
                                    f"{IMAGEFOLDER_LAYOUT}")
    classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise FileNotFoundError(f"dataset 'imagefolder': no class folders in {train_dir}. Expected layout: "
                                f"{IMAGEFOLDER_LAYOUT}")
    if len(classes) < 2:
        from shieldkit.errors import IncompatibleError

        raise IncompatibleError(f"dataset 'imagefolder': {train_dir} has {len(classes)} class folder; at least two "
                                "classes are needed", hint=f"add a second class folder. Expected layout: "
                                f"{IMAGEFOLDER_LAYOUT}")
    unknown = sorted(p.name for p in split_dir.iterdir()
                     if p.is_dir() and not p.name.startswith(".") and p.name not in classes)
    if unknown:
        raise ValueError(f"dataset 'imagefolder': {split_dir} has classes absent from train/: {unknown}")
    files = [(p, c) for c, name in enumerate(classes) if (split_dir / name).is_dir()
             for p in _list_images(split_dir / name)]
    if not files:
        raise FileNotFoundError(f"dataset 'imagefolder': no images ({', '.join(IMAGE_EXTENSIONS)}) under "
                                f"{split_dir}. Expected layout: {IMAGEFOLDER_LAYOUT}")
    if grayscale is None:  # decided on train/ so both splits agree; header-only opens (lazy decoding)
        grayscale = True
        for p in (q for name in classes for q in _list_images(train_dir / name)):
            with Image.open(p) as im:
                if im.mode not in _SINGLE_CHANNEL_MODES:
                    grayscale = False
                    break
    mode = "L" if grayscale else "RGB"
    arrays = []
    for p, _ in files:
        with Image.open(p) as im:
            im = im.convert(mode)
        if image_size is not None:
            im = im.resize((image_size, image_size), Image.Resampling.BILINEAR)
        a = np.asarray(im, dtype=np.uint8)
        arrays.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
        if arrays[-1].shape != arrays[0].shape:
            raise ValueError(f"dataset 'imagefolder': {p} is {arrays[-1].shape[1:]} but {files[0][0]} is "
                             f"{arrays[0].shape[1:]}; pass image_size to resize all images to one size")
    x = np.stack(arrays)
    y = torch.tensor([c for _, c in files], dtype=torch.int64)
    return ImageDataset(_to_float(x), y, classes, name=f"imagefolder-{split}",
                        meta={"source": str(split_dir), "format": "imagefolder", "image_size": image_size})
