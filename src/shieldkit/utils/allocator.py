"""Keep freed tensor memory in the process instead of handing it back to the OS (glibc only).

Why: PyTorch's CPU allocator is plain ``posix_memalign``. glibc serves blocks above its mmap threshold (128 KiB at
start, raised on each free up to 32 MiB) with a fresh ``mmap`` that is unmapped on free, and trims the heap top
whenever more than twice that threshold is free there; either way the next batch's activation maps land on pages
the kernel has to fault in and zero on first touch. Measured on this machine (1 thread, the same process
before/after): one ``conv2d`` 1 → 32 channels on a batch of 100 MNIST-sized images 10.3 ms with glibc's defaults,
0.87 ms with mmap threshold 32 MiB and trim threshold 1 GiB; two convolutions (1 → 32 → 32) on a batch of 400
(40 MB maps, above any mmap threshold) 160 ms → 64 ms with mmap disabled as well, the setting used here (the
rest is the arithmetic). The change is *only* where memory comes from — no kernel, no summation order, no float
changes — so results stay bitwise equal. ``make demo`` (``benchmarks/results/speed.json`` ``demo``, 2 threads):
530 → 469 s with identical figures — teacher training 61 → 47 s, robust training 106 → 68 s, PGD-20 on 1,000
points 19.6 → 13.6 s; AutoAttack moves least (Square's queries work on small tiles): on 60 points of the demo's
shielded model, two threads, 96 s with glibc's defaults and 91 s tuned, one after the other.

What is set (``mallopt``): ``M_MMAP_MAX = 0`` (large blocks come from the main heap too; glibc still falls back
to ``mmap`` when the heap cannot grow, and other threads' arenas still ``mmap`` requests above their 64 MiB heap
size) and ``M_TRIM_THRESHOLD = 1 GiB`` (free memory up to that stays mapped for the next batch). Costs: the
process keeps its peak heap (per arena, and the main heap only shrinks from the top) until it exits, and glibc's
dynamic threshold is off for good once set — which is why this is a process policy applied by the entry points
(every ``shieldkit`` command, the test session, the benchmarks), not by library functions. Opt out with
``SHIELDKIT_MALLOC=default``. Off glibc (macOS, Windows, musl) or with another allocator preloaded
(``LD_PRELOAD``, e.g. jemalloc or tcmalloc) this does nothing and says why.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_TRIM_BYTES = 1 << 30

_state: dict[str, object] = {}
_lock = threading.Lock()


def allocator_state() -> dict[str, object]:
    """What :func:`tune_allocator` did in this process (``{}`` if it was not called); changes nothing."""
    return dict(_state)


def tune_allocator() -> dict[str, object]:
    """Apply the settings above once per process; returns what was done: ``applied`` (both set), ``settings``
    (each one's ``mallopt`` result), ``glibc`` (version) or ``reason`` (why not).

    Idempotent: a second call returns the first call's result."""
    with _lock:
        if not _state:
            _state.update(_apply())
        return dict(_state)


def _apply() -> dict[str, object]:
    if os.environ.get("SHIELDKIT_MALLOC", "").strip().lower() == "default":
        return {"applied": False, "reason": "SHIELDKIT_MALLOC=default"}
    if not sys.platform.startswith("linux"):
        return {"applied": False, "reason": f"not glibc ({sys.platform})"}
    preload = os.environ.get("LD_PRELOAD", "")
    if any(name in preload for name in ("jemalloc", "tcmalloc", "mimalloc")):
        return {"applied": False, "reason": f"another allocator is preloaded (LD_PRELOAD={preload})"}
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt, version = libc.mallopt, libc.gnu_get_libc_version  # gnu_get_libc_version: glibc only
    except (OSError, AttributeError):
        return {"applied": False, "reason": "not glibc"}
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    version.restype = ctypes.c_char_p
    settings = {"M_MMAP_MAX": int(mallopt(_M_MMAP_MAX, 0)) == 1,
                "M_TRIM_THRESHOLD": int(mallopt(_M_TRIM_THRESHOLD, _TRIM_BYTES)) == 1}
    ok = all(settings.values())
    return {"applied": ok, "settings": settings, "glibc": version().decode(),
            "reason": "" if ok else "mallopt refused a setting"}


__all__ = ["allocator_state", "tune_allocator"]
