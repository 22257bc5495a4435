"""Content-addressed runs: fingerprints of everything that determined an output folder.

Every output (teacher cache, synthetic set, training run, shield run) records, in
``fingerprints.json`` (the teacher: in its card, ``extra["fingerprints"]``), short sha256 digests of
its inputs. A re-run compares them: identical → resume / reuse; any difference → :class:`IntegrityError`
naming the *first* differing key, old vs new, and the fix (a new ``--out`` or ``--overwrite``).

What counts ("must match for resume"): everything that affects the numbers — model weights and card
(architecture, normalisation, classes; not ``card.extra``, which is bookkeeping such as test accuracy),
data content, every field of the stage's config dataclass (including seeds and sizes: growing
``n_samples`` is a different set, keep it strict and simple) and the shieldkit version. What does not:
the device, progress display, ``--overwrite`` itself, output paths, timings.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import shutil
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from shieldkit.errors import IntegrityError

FINGERPRINTS = "fingerprints.json"
SHORT = 12  # hex digits shown in messages
# Files that mark a folder as written by shieldkit (so --overwrite may delete its contents).
KNOWN_RUN_FILES = (FINGERPRINTS, "manifest.json", "checkpoint.pt", "results.json", "run.json", "config.yaml",
                   "shielded.safetensors", "model.safetensors", "train_history.json")


def shieldkit_version() -> str:
    try:
        return metadata.version("shieldkit")
    except metadata.PackageNotFoundError:  # pragma: no cover - source checkout without install
        from shieldkit import __version__

        return __version__


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().cpu().contiguous()
    if t.numel() == 0:
        return b""
    return t.reshape(-1).view(torch.uint8).numpy().tobytes()


def sha256_tensor(t: torch.Tensor) -> str:
    h = hashlib.sha256(f"{t.dtype}|{tuple(t.shape)}|".encode())
    h.update(_tensor_bytes(t))
    return h.hexdigest()


def sha256_tensors(state: Mapping[str, torch.Tensor]) -> str:
    """Order-independent digest of named tensors (name, dtype, shape and bytes of each)."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name]
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(_tensor_bytes(t))
        h.update(b"\0")
    return h.hexdigest()


def to_plain(v: Any) -> Any:
    """A JSON/YAML-ready copy of a config value: dataclasses, mappings, sequences, paths, tensors and numpy
    scalars made plain; non-finite floats as strings (JSON has no NaN)."""
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return to_plain(dataclasses.asdict(v))
    if isinstance(v, Mapping):
        return {str(k): to_plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [to_plain(x) for x in v]
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, torch.Tensor):
        return v.tolist()
    if hasattr(v, "item") and callable(v.item):
        return v.item()
    return v


def canonical_json(obj: Any) -> str:
    return json.dumps(to_plain(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def fingerprint_config(obj: Any) -> str:
    """sha256 of the canonical JSON of a resolved config (dataclass, dict, or nested mix)."""
    return sha256_bytes(canonical_json(obj).encode())


def _card_identity(card: Any) -> dict:
    d = card.to_dict() if hasattr(card, "to_dict") else dict(card)
    d.pop("extra", None)
    return d


def fingerprint_model(model_or_path: Any) -> str:
    """Weights + card of a model, from a module (``NormalizedClassifier``) or a saved path stem
    (``X.safetensors`` + ``X.json``). Both give the same digest for the same model: the weights are
    hashed by tensor content, the card without ``extra``."""
    if isinstance(model_or_path, str | Path):
        from shieldkit.utils.io import load_tensors, read_json

        p = Path(model_or_path)
        stem = p.with_suffix("") if p.suffix in (".safetensors", ".json") else p
        state = load_tensors(stem.with_name(stem.name + ".safetensors"))
        card = _card_identity(read_json(stem.with_name(stem.name + ".json")))
    else:
        state = model_or_path.state_dict()
        c = getattr(model_or_path, "card", None)
        card = _card_identity(c) if c is not None else {"class": type(model_or_path).__name__}
    return sha256_bytes(f"{sha256_tensors(state)}|{canonical_json(card)}".encode())


def fingerprint_dataset(ds: Any, split: str | None = None, root: str | None = None) -> dict:
    """Identity of an :class:`~shieldkit.data.base.ImageDataset`: name, split, root, size and a content
    digest of the images and labels (which pins any subset's indices exactly)."""
    meta = getattr(ds, "meta", {}) or {}
    return {"name": getattr(ds, "name", "?"), "split": split or meta.get("split"),
            "root": None if root is None and meta.get("root") is None else str(root or meta.get("root")),
            "n": len(ds), "sha256": sha256_bytes(f"{sha256_tensor(ds.x)}|{sha256_tensor(ds.y)}".encode())}


def fingerprint_synthetic(syn_or_manifest: Any) -> str:
    """Digest of a synthetic set: the manifest's per-shard sha256 list (plus its config)."""
    manifest = getattr(syn_or_manifest, "manifest", syn_or_manifest)
    if isinstance(manifest, str | Path):
        from shieldkit.utils.io import read_json

        manifest = read_json(Path(manifest) / "manifest.json")
    return fingerprint_config({"shards": manifest.get("shards"), "config": manifest.get("config")})


# ----------------------------------------------------------------------------- run manifest
def _short(v: Any) -> str:
    if v is None:
        return "(none)"
    s = v if isinstance(v, str) else canonical_json(v)
    if len(s) == 64 and all(c in "0123456789abcdef" for c in s):
        return s[:SHORT] + "…"
    return s if len(s) <= 60 else s[:57] + "…"


def first_difference(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> tuple[str, Any, Any] | None:
    """The first differing key (in ``new``'s order, then ``old``'s; nested dicts are descended, giving
    ``synthesis.iterations``) with its old and new value, or None."""
    for k in [*new, *(k for k in old if k not in new)]:
        a, b = old.get(k), new.get(k)
        if k in old and k in new and canonical_json(a) == canonical_json(b):
            continue
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            inner = first_difference(a, b, f"{prefix}{k}.")
            if inner is not None:
                return inner
        return f"{prefix}{k}", a, b
    return None


_LABELS = {"teacher": "another teacher", "synthetic": "another synthetic set", "version": "another shieldkit version",
           "data": "other data", "eval_data": "another evaluation dataset", "student_init": "another initial model"}


def mismatch_error(where: str | Path, key: str, old: Any, new: Any) -> IntegrityError:
    top = key.split(".")[0]
    label = _LABELS.get(top, f"another {top} configuration" if "." in key else f"another {top}")
    what = "sha256" if isinstance(new, str) and len(new) == 64 else key
    return IntegrityError(f"{where}: made from {label} ({what} {_short(old)} ≠ {_short(new)})",
                          hint="use a new --out or add --overwrite to start afresh")


def _is_known_run(run: Path) -> bool:
    return any((run / f).exists() for f in KNOWN_RUN_FILES) or any(run.glob("shard_*.safetensors"))


def clear_run(run: Path) -> None:
    """Delete a shieldkit run folder's contents (refuses a folder shieldkit did not write)."""
    if not run.exists() or not any(run.iterdir()):
        return
    if not _is_known_run(run):
        raise IntegrityError(f"{run}: not a shieldkit run folder (no {FINGERPRINTS}); refusing to delete its "
                             f"contents for --overwrite", hint="give a new or empty --out")
    for child in run.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


class RunManifest:
    """``fingerprints.json`` of a run folder: ``{"fingerprints": {...}}`` (keys in check order)."""

    @staticmethod
    def read(run_dir: str | Path) -> dict | None:
        p = Path(run_dir) / FINGERPRINTS
        if not p.exists():
            return None
        from shieldkit.utils.io import read_json

        return read_json(p)["fingerprints"]

    @staticmethod
    def check_or_init(run_dir: str | Path, fingerprints: Mapping[str, Any], overwrite: bool = False) -> str:
        """``"fresh"`` (folder absent/empty, or cleared by ``overwrite``; fingerprints written) or
        ``"resume"`` (fingerprints identical). Raises :class:`IntegrityError` otherwise."""
        from shieldkit.utils.io import atomic_write_json

        run = Path(run_dir)
        fps = {**to_plain(dict(fingerprints))}
        fps.setdefault("version", shieldkit_version())
        if run.exists() and not run.is_dir():
            raise IntegrityError(f"{run}: is a file, not a run folder", hint="give a folder path for --out")
        if overwrite:
            clear_run(run)
        elif run.exists() and any(run.iterdir()):
            old = RunManifest.read(run)
            if old is None:
                raise IntegrityError(f"{run}: not empty and has no {FINGERPRINTS} (written by an older shieldkit "
                                     f"or by something else); its inputs cannot be verified",
                                     hint="use a new --out or add --overwrite to start afresh")
            diff = first_difference(old, fps)
            if diff is not None:
                raise mismatch_error(run, *diff)
            return "resume"
        atomic_write_json(run / FINGERPRINTS, {"fingerprints": fps})
        return "fresh"

    @staticmethod
    def discard_if_unused(run_dir: str | Path) -> None:
        """After a failure in a fresh run: remove ``fingerprints.json`` if nothing else was written, and the
        folder if it is then empty (a failure leaves nothing behind)."""
        run = Path(run_dir)
        if not run.is_dir():
            return
        rest = [p for p in run.iterdir() if p.name != FINGERPRINTS and not p.name.startswith(".")]
        if rest:
            return
        (run / FINGERPRINTS).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            run.rmdir()


check_or_init = RunManifest.check_or_init
