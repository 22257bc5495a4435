"""Device selection: never hard-code CPU or CUDA."""

from __future__ import annotations

import torch


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto | cpu | cuda | cuda:N | mps`` → ``torch.device`` (validated by
    :func:`shieldkit.utils.validate.resolve_device`: an unavailable device raises ``DependencyError``,
    a ``RuntimeError``)."""
    from shieldkit.utils.validate import resolve_device as _resolve

    return _resolve(device)
