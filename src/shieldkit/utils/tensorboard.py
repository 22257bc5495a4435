"""Opt-in TensorBoard scalars (``torch.utils.tensorboard``); torch's writer is imported only when a
logger is created. Re-exported as :class:`shieldkit.config.TensorBoardLogger`."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any


class TensorBoardLogger:
    """Scalars to TensorBoard (``torch.utils.tensorboard``), only when the user asks for it.

    ``TensorBoardLogger(run_dir / "tensorboard")``; ``log.scalars(step, loss=…, acc=…)``; ``log.close()``.
    ``log_history`` replays a finished history dict (e.g. ``train_robust``'s) after the fact.
    """

    def __init__(self, log_dir: str | Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:  # pragma: no cover - tensorboard is installed in the dev env
            raise RuntimeError("TensorBoard logging needs the `tensorboard` package: pip install tensorboard") from exc
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def scalars(self, step: int, prefix: str = "", **values: float) -> None:
        for k, v in values.items():
            self.writer.add_scalar(f"{prefix}{k}", float(v), step)

    def log_history(self, history: Mapping[str, Any], prefix: str = "train/") -> None:
        for k, seq in history.items():
            if isinstance(seq, list) and seq and all(isinstance(v, int | float) for v in seq):
                for i, v in enumerate(seq, start=1):
                    self.writer.add_scalar(f"{prefix}{k}", float(v), i)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()
