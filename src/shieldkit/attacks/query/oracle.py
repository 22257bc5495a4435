"""The score-only, query-counting oracle every query attack talks to.

A deployed model behind an API reveals only its output scores; a score-based query attack (SQA) is
measured by how many queries it needs. :class:`QueryOracle` is the only door an attack has to the
model: it answers a batch of inputs with **log-probabilities** (the information content of returned
probabilities, in a numerically stable form — margins on log-probabilities equal margins on logits),
detached, never gradients; it counts one query per row against the sample the row belongs to and
**raises** :class:`QueryBudgetExceeded` *before* evaluating any batch that would take a sample past its
budget. So an attack that miscounts fails loudly instead of reporting inflated success.

The whole batch is forwarded in one call by default, because batch-dependent defences (UniG) answer
per batch, exactly as the reference attacks query them with all still-unbroken images at once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class QueryBudgetExceeded(RuntimeError):  # noqa: N818 - named like StopIteration: an event
    """An attack tried to spend more queries on a sample than its budget allows."""


class QueryOracle:
    """Score-only access to ``model`` for ``n`` attacked samples, each with ``budget`` queries.

    Args:
        model: the (possibly defended, possibly randomised) classifier; called under ``no_grad``.
        n: number of attacked samples (query rows are attributed with indices in ``[0, n)``).
        budget: maximum queries per sample.
        chunk_size: forward at most this many rows at once (``None`` = the whole batch in one call).
    """

    def __init__(self, model: nn.Module, n: int, budget: int, *, chunk_size: int | None = None) -> None:
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        if budget < 1:
            raise ValueError(f"the query budget must be >= 1, got {budget}")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError("chunk_size must be >= 1")
        self._model = model
        self.n = n
        self.budget = int(budget)
        self.chunk_size = chunk_size
        self.counts = torch.zeros(n, dtype=torch.long)
        self.total_queries = 0
        self.calls = 0

    def remaining(self, idx: torch.Tensor | None = None) -> torch.Tensor:
        """Queries left per sample (for ``idx``, or all samples)."""
        left = self.budget - self.counts
        return left if idx is None else left[idx.cpu()]

    def can_query(self, idx: torch.Tensor, times: int = 1) -> torch.Tensor:
        """Boolean mask over ``idx``: which samples can still afford ``times`` queries."""
        return self.remaining(idx) >= times

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Log-probabilities (rows × classes) for inputs ``x``; row ``r`` is charged to sample ``idx[r]``."""
        idx = torch.as_tensor(idx, dtype=torch.long).cpu().reshape(-1)
        if x.shape[0] != idx.shape[0]:
            raise ValueError(f"oracle: {x.shape[0]} inputs but {idx.shape[0]} sample indices")
        if idx.numel() == 0:
            raise ValueError("oracle: empty query")
        if int(idx.min()) < 0 or int(idx.max()) >= self.n:
            raise IndexError(f"oracle: sample index outside [0, {self.n})")
        if not torch.isfinite(x).all():
            raise ValueError("oracle: query contains NaN/Inf")
        new_counts = self.counts + torch.bincount(idx, minlength=self.n)
        if int(new_counts.max()) > self.budget:
            worst = int(new_counts.argmax())
            raise QueryBudgetExceeded(f"sample {worst} would use {int(new_counts[worst])} queries; "
                                      f"budget is {self.budget}")
        self.counts = new_counts
        self.total_queries += int(idx.numel())
        self.calls += 1
        if self.chunk_size is None or x.shape[0] <= self.chunk_size:
            logits = self._model(x)
        else:
            logits = torch.cat([self._model(c) for c in x.split(self.chunk_size)], 0)
        if logits.ndim != 2 or logits.shape[0] != x.shape[0]:
            raise ValueError(f"oracle: model returned shape {tuple(logits.shape)} for {x.shape[0]} inputs")
        return F.log_softmax(logits.detach().float(), dim=1)
