"""``shieldkit.utils.allocator``: freed tensor memory stays in the process (glibc), the opt-out works, and
every CLI command applies it. Each case runs in a fresh interpreter: the setting is process-wide and once."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

glibc = pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc"
                           or any(a in os.environ.get("LD_PRELOAD", "") for a in ("jemalloc", "tcmalloc", "mimalloc")),
                           reason="the setting exists only with glibc's malloc")

# RSS (MiB) after a 64 MiB tensor is filled and freed: glibc's default serves it with mmap (above the 32 MiB
# ceiling of its dynamic threshold) and unmaps it on free; tuned, it comes from the heap and is kept.
_PROBE = """
import json, os, sys
import torch
if sys.argv[1] == "tune":
    from shieldkit.utils.allocator import tune_allocator
    first, second = tune_allocator(), tune_allocator()
else:
    first = second = None
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
t = torch.ones(16 * 2**20)  # 64 MiB, every page touched
held = rss()
del t
print(json.dumps({"first": first, "second": second, "kept_mib": rss() - held + 64}))
"""


def _probe(mode: str, **env: str) -> dict:
    """Run the probe in a fresh interpreter whose environment sets no malloc option but ``env``."""
    clean = {k: v for k, v in os.environ.items()
             if k != "SHIELDKIT_MALLOC" and not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True,
                         env={**clean, **env})
    return json.loads(out.stdout.strip().splitlines()[-1])


@glibc
def test_freed_memory_stays_mapped_only_when_tuned() -> None:
    tuned = _probe("tune")
    assert tuned["first"]["applied"] is True and tuned["first"]["glibc"], tuned
    assert tuned["first"]["settings"] == {"M_MMAP_MAX": True, "M_TRIM_THRESHOLD": True}
    assert tuned["second"] == tuned["first"]  # idempotent: the second call reports the first
    assert tuned["kept_mib"] > 48, tuned  # the 64 MiB stayed in the process
    default = _probe("none")
    assert default["kept_mib"] < 16, default  # glibc's default gave it back


@glibc
def test_opt_out_leaves_glibc_defaults() -> None:
    res = _probe("tune", SHIELDKIT_MALLOC="default")
    assert res["first"]["applied"] is False and res["first"]["reason"] == "SHIELDKIT_MALLOC=default"
    assert res["kept_mib"] < 16, res


def test_every_cli_command_tunes_the_allocator(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from shieldkit.cli import main as cli_main

    calls: list[int] = []
    monkeypatch.setattr(cli_main, "tune_allocator", lambda: calls.append(1) or {"applied": True})
    res = CliRunner().invoke(cli_main.app, ["--version"])
    assert res.exit_code == 0 and calls == [1], (res.output, calls)


def test_provenance_and_report_say_which_allocator_the_times_were_measured_with() -> None:
    """Times (not floats) depend on the setting, so every result's provenance records it and the report shows it."""
    from shieldkit.reporting.shield_report import _allocator_text, _provenance_rows
    from shieldkit.utils.allocator import allocator_state
    from shieldkit.utils.provenance import provenance

    prov = provenance()
    assert prov["host"]["allocator"] == (allocator_state() or "glibc default (shieldkit's setting not applied)")
    assert ("memory allocator", _allocator_text(prov["host"]["allocator"])) in _provenance_rows(prov)
    assert _allocator_text({"applied": True, "glibc": "2.36"}) == "glibc 2.36, freed memory kept mapped"
    assert _allocator_text({"applied": False, "reason": "SHIELDKIT_MALLOC=default"}) == "SHIELDKIT_MALLOC=default"
    assert _allocator_text("glibc default (shieldkit's setting not applied)").startswith("glibc default")
    assert all(name != "memory allocator" for name, _ in _provenance_rows({"host": {}}))  # results from before
