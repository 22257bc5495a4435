"""Seeding without touching more global state than needed.

shieldkit's own code draws randomness from explicit ``torch.Generator`` objects; ``seed_everything``
exists for third-party code (pyautoattack, torchattacks) that uses the global RNGs.
"""

from __future__ import annotations

import hashlib
import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def derive_seed(*parts: int | str) -> int:
    """A stable 63-bit seed from a run seed and labels (e.g. shard index). Same inputs → same seed,
    independent of process count or order, which is what makes sharded work reproducible."""
    h = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def make_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g
