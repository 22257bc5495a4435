"""Provenance recorded with every result: package versions, git revision, host, time."""

from __future__ import annotations

import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

_PACKAGES = ("shieldkit", "torch", "torchvision", "numpy", "pyautoattack", "torchattacks",
             "adversarial-robustness-toolbox", "prdc", "scipy")


def package_versions() -> dict[str, str]:
    out: dict[str, str] = {"python": sys.version.split()[0]}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def git_revision(path: str | Path | None = None) -> str | None:
    cwd = Path(path) if path else Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return rev.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def provenance() -> dict:
    import torch

    from shieldkit.utils.allocator import allocator_state

    return {
        "packages": package_versions(),
        "git_revision": git_revision(),
        "host": {"platform": platform.platform(), "cpu_count": _cpu_count(),
                 "torch_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available(),
                 "allocator": allocator_state() or "glibc default (shieldkit's setting not applied)"},
        "timestamp_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _cpu_count() -> int | None:
    import os

    return os.cpu_count()
