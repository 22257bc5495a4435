"""Dataset registry (timm-style): a loader is one decorated function."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from shieldkit.data.base import ImageDataset

Loader = Callable[..., ImageDataset]
DATASETS: dict[str, dict] = {}


def register_dataset(name: str, *, embedded: bool, layout: str = "", num_classes: int | None = None
                     ) -> Callable[[Loader], Loader]:
    """Register ``fn(split, root, **kw) -> ImageDataset``. ``layout`` documents the on-disk format
    expected under ``root`` and is quoted in the error when the path is missing."""

    def deco(fn: Loader) -> Loader:
        DATASETS[name] = {"fn": fn, "embedded": embedded, "layout": layout, "num_classes": num_classes}
        return fn

    return deco


def list_datasets(embedded_only: bool = False) -> list[str]:
    return sorted(k for k, v in DATASETS.items() if v["embedded"] or not embedded_only)


def load_dataset(name: str, split: str = "train", root: str | Path | None = None, **kwargs) -> ImageDataset:
    """Load dataset ``name`` (``split`` ∈ {"train", "test"}); local datasets need ``root``."""
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; available: {', '.join(list_datasets())}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    entry = DATASETS[name]
    if not entry["embedded"]:
        if root is None:
            raise FileNotFoundError(f"dataset {name!r} reads a local path: pass --data-root. Expected layout: "
                                    f"{entry['layout']}")
        if not Path(root).exists():
            raise FileNotFoundError(f"dataset {name!r}: {root} does not exist. Expected layout: {entry['layout']}")
        return entry["fn"](split=split, root=Path(root), **kwargs)
    return entry["fn"](split=split, **kwargs)
