"""Progress bars (rich) with throughput, silenced in non-interactive runs when asked."""

from __future__ import annotations

import time
from contextlib import contextmanager

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class _Bar:
    def __init__(self, progress: Progress | None, task: int | None, unit: str) -> None:
        self._p, self._t, self.unit = progress, task, unit
        self.start = time.perf_counter()
        self.done = 0

    def advance(self, n: float = 1, **stats: float) -> None:
        self.done += n
        if self._p is None:
            return
        rate = self.done / max(time.perf_counter() - self.start, 1e-9)
        info = "  ".join(f"{k}={v:.4g}" for k, v in stats.items())
        self._p.update(self._t, advance=n, info=f"{rate:.1f} {self.unit}/s  {info}")

    @property
    def rate(self) -> float:
        return self.done / max(time.perf_counter() - self.start, 1e-9)


@contextmanager
def progress_bar(description: str, total: float, enabled: bool = True, unit: str = "it", completed: float = 0):
    if not enabled:
        yield _Bar(None, None, unit)
        return
    cols = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TimeRemainingColumn(), TextColumn("{task.fields[info]}")]
    with Progress(*cols, transient=False) as p:
        t = p.add_task(description, total=total, completed=completed, info="")
        yield _Bar(p, t, unit)
