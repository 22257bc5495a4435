"""Atomic, safe persistence.

Every long job in shieldkit writes through these helpers so that a kill at any moment leaves either
the previous file or the new one, never a truncated one (write to a temp file in the same directory,
fsync, ``os.replace``). Tensors go to safetensors; anything loaded with ``torch.load`` uses
``weights_only=True`` so an untrusted file can never execute code.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file


def _atomic_replace(path: Path, write_fn) -> None:  # noqa: ANN001 - internal callback
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write_fn(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    def _w(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)

    _atomic_replace(Path(path), _w)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def save_tensors(path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
                 ) -> None:
    """Atomically write a safetensors file (tensors are made contiguous and moved to CPU)."""
    data = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    meta = {k: str(v) for k, v in (metadata or {}).items()}
    _atomic_replace(Path(path), lambda tmp: save_file(data, tmp, metadata=meta))


def load_tensors(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read a safetensors file. A missing file is a ``MissingInputError``, a truncated or corrupt one a
    ``CorruptFileError`` naming the file (both ``shieldkit.errors``; subclasses of ``FileNotFoundError`` /
    ``ValueError``)."""
    from safetensors import SafetensorError

    from shieldkit.errors import CorruptFileError, MissingInputError

    path = Path(path)
    if not path.exists():
        raise MissingInputError(f"{path}: no such file", hint="check the path (weights are FILE.safetensors)")
    if path.is_dir():
        raise MissingInputError(f"{path}: is a folder, a .safetensors file is expected")
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError) as exc:  # header too large / incomplete metadata / ...
        raise CorruptFileError(f"{path}: not a valid safetensors file (truncated or corrupt): "
                               f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                               hint=f"re-create {path.name} (re-run the command that wrote it)") from exc


def atomic_torch_save(path: str | Path, obj: Any) -> None:
    """Atomic ``torch.save`` for checkpoints made only of tensors and plain containers."""
    _atomic_replace(Path(path), lambda tmp: torch.save(obj, tmp))


def safe_torch_load(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load`` that refuses to unpickle arbitrary objects (``weights_only=True``)."""
    from shieldkit.errors import CorruptFileError, MissingInputError

    path = Path(path)
    if not path.exists():
        raise MissingInputError(f"{path}: no such file", hint="check the path")
    if path.is_dir():
        raise MissingInputError(f"{path}: is a folder, a .pt file is expected")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # pickle.UnpicklingError, truncated zip archives and friends
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CorruptFileError(
            f"{path}: refused to load — not a plain tensor/state_dict file readable with weights_only=True "
            f"(corrupt, truncated, or containing arbitrary pickled code). Underlying error: "
            f"{type(exc).__name__}: {first}"[:400],
            hint=f"re-save {path.name} as a state_dict or safetensors file") from exc
