"""Data-parallel robust training over ``torch.distributed`` ranks, GradRefine included.

How an update is split (this is the definition; the single-process run is its ``world_size = 1`` case)
------------------------------------------------------------------------------------------------------
One optimiser update consumes ``M`` minibatches of ``cfg.batch_size`` samples:

* with GradRefine (ℬ = ``cfg.grad_refine_batches`` > 1): ``M = ℬ``, the *global* number of aggregated
  minibatches; ℬ must be a multiple of the world size W and rank r computes minibatches
  b = r, r + W, r + 2W, … (ℬ/W each). Every rank accumulates the running sums of Eq 9-10
  (Σ sign g, Σ max(g, 0), Σ min(g, 0)) over *its* minibatches with the lead's
  :class:`~shieldkit.training.gradrefine.GradRefine`; the three sums (and the count) are then
  SUM-all-reduced, so the agreement score A_k (Eq 9) and the refined gradient g* (Eq 10) are
  computed over **all ℬ minibatches of all ranks** — the federated sign-agreement construction
  (Tenison et al. 2022, "Gradient Masked Averaging", which GradRefine cites) with ranks as clients.
  Sign sums are exact integers, so the mask Φ(A) is identical to the single-process one; the
  magnitude sums differ only by float summation order.
* without GradRefine (ℬ = 1): ``M = W`` by default (standard DDP: the global batch is
  W × ``batch_size``), and the gradient is the *mean* over the M minibatches (SUM all-reduce / M),
  i.e. the gradient of the mean loss. The lr is not rescaled automatically.

Minibatch b of update u draws its attack randomness from ``derive_seed(seed, "update", u, "minibatch", b)``
(``derive_seed(seed, "update", u)`` when M = 1, exactly as ``train_robust``), and its samples from the
epoch permutation ``derive_seed(seed, "epoch", e)`` shared by all ranks — so nothing depends on which
rank computes which minibatch, and W ranks reproduce the single-process update within float tolerance.

BatchNorm: no SyncBatchNorm, deliberately
-----------------------------------------
* A minibatch is never split across ranks, so the train-mode batch statistics of every forward pass
  are those of one ``batch_size`` minibatch — exactly what the paper's single-GPU training and its
  GradRefine (one backward per minibatch) use. SyncBN would instead normalise over W minibatches,
  changing the method with the number of GPUs (and costs one all-reduce per BN layer per forward, ×
  the 10+ forwards of every PGD step's outer loss). SyncBN is also CUDA-only.
* Running statistics (used by the eval-mode inner PGD maximisation) are handled as part of "the same
  weights": every minibatch of an update starts from the running statistics at the start of the
  update (snapshot/restore), and after the update they move by the *mean* of the M per-minibatch
  changes (SUM all-reduce of the changes / M; counters add up). Deviation: the reference code (and
  the single-process ``train_robust``) lets the ℬ minibatches update the running statistics one
  after another, so later minibatches see statistics moved by earlier ones; that sequential
  dependency cannot be parallelised, and the averaged update moves the statistics by one momentum
  step per forward pass per update instead of ℬ (they still track the synthetic data, ℬ× slower).

Why not the ``DistributedDataParallel`` wrapper: GradRefine needs per-minibatch sign statistics, not
the averaged gradient DDP produces; the inner PGD maximisation runs many forward/backward passes
through the student that must not trigger gradient synchronisation; and DDP's default buffer broadcast
from rank 0 at every forward would overwrite the per-minibatch BN statistics defined above. Explicit
coalesced collectives (one flat all-reduce per update) implement the same data parallelism with the
semantics above.

Resumability: rank 0 checkpoints atomically (same cadence as ``train_robust``); all ranks resume from
it. A checkpoint records M and refuses a resume that would change it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from shieldkit.distributed import dist
from shieldkit.training.gradrefine import GradRefine
from shieldkit.training.robust import RobustTrainConfig, UpdateSync, train_robust
from shieldkit.utils.seed import derive_seed, make_generator

CHECKPOINT = "checkpoint_dist.pt"


class DistributedGradRefine(GradRefine):
    """:class:`GradRefine` whose running sums are SUM-all-reduced over ranks before Eq 9-10 are applied."""

    @torch.no_grad()
    def synchronize(self) -> None:
        count = torch.tensor([float(self.count)], dtype=torch.float64)
        dist.all_reduce_sum_([*self._sign, *self._pos, *self._neg, count])
        self.count = int(round(count.item()))

    def apply(self) -> float:  # noqa: D102 - same contract as GradRefine.apply, over all ranks
        self.synchronize()
        return super().apply()


def minibatches_per_update(cfg: RobustTrainConfig, world_size: int, override: int | None = None) -> int:
    """M, the global number of minibatches per optimiser update (see the module docstring)."""
    if override is not None:
        m = int(override)
    elif cfg.grad_refine_batches > 1:
        m = cfg.grad_refine_batches
    else:
        m = world_size
    if m < 1 or m % world_size:
        what = f"GradRefine's ℬ = {m}" if cfg.grad_refine_batches > 1 else f"{m} minibatches per update"
        raise ValueError(f"{what} cannot be split evenly over {world_size} ranks: choose ℬ as a multiple of "
                         f"the number of processes (e.g. ℬ = {world_size * max(1, -(-m // world_size))})")
    return m


class DistributedSync(UpdateSync):
    """The update layout of the module docstring: M minibatches split over ranks, per-minibatch generators
    (when M > 1), BN statistics restored before each minibatch and moved by the mean change, gradients (or
    GradRefine's sums) SUM-all-reduced; rank 0 writes. ``minibatches`` overrides M."""

    pins_inputs = False  # every rank would race on fingerprints.json; the checkpoint records M and the config
    checkpoint_name = CHECKPOINT

    def __init__(self, cfg: RobustTrainConfig, minibatches: int | None = None) -> None:
        self.rank, self.world = dist.rank(), dist.world_size()
        self.m = minibatches_per_update(cfg, self.world, minibatches)
        self.writer = self.rank == 0
        self.label, self.where = f"×{self.world}", f" (rank {self.rank})"
        self.float_bufs: list[torch.Tensor] = []
        self.int_bufs: list[torch.Tensor] = []

    def minibatches(self, cfg: RobustTrainConfig) -> int:
        return self.m

    def mine(self, m: int) -> list[int]:
        return list(range(self.rank, m, self.world))

    def setup(self, params: list[nn.Parameter], buffers: list[torch.Tensor]) -> None:
        dist.broadcast_([*params, *buffers])  # every rank starts from rank 0's state
        self.float_bufs = [b for b in buffers if b.is_floating_point()]
        self.int_bufs = [b for b in buffers if not b.is_floating_point()]

    def refiner(self, params: list[nn.Parameter], m: int, tau: float) -> GradRefine:
        return DistributedGradRefine(params, m, tau)

    def generators(self, seed: int, step: int, m: int, device: torch.device) -> Callable[[int], torch.Generator]:
        if m == 1:
            return super().generators(seed, step, m, device)
        return lambda b: make_generator(derive_seed(seed, "update", step, "minibatch", b), device=device)

    def begin_update(self) -> None:
        bufs = self.float_bufs + self.int_bufs
        self.start = [b.detach().clone() for b in bufs]
        self.delta = [torch.zeros_like(b) for b in bufs]

    def before_minibatch(self) -> None:
        with torch.no_grad():
            for b, s in zip(self.float_bufs + self.int_bufs, self.start, strict=True):
                b.copy_(s)

    def after_minibatch(self) -> None:
        with torch.no_grad():
            for d, bnow, b0 in zip(self.delta, self.float_bufs + self.int_bufs, self.start, strict=True):
                d.add_(bnow - b0)

    def finish_update(self, params: list[nn.Parameter], refiner: GradRefine | None, losses: list[float],
                      history: dict) -> float:
        if refiner is not None:
            history["kept_fraction"].append(refiner.apply())  # all-reduces Eq 9-10's sums first
        else:
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
            dist.all_reduce_sum_(grads)
            for p, g in zip(params, grads, strict=True):
                p.grad = g.div_(self.m)
        loss_sum = torch.tensor([sum(losses)], dtype=torch.float64)
        dist.all_reduce_sum_([*self.delta, loss_sum])
        nf = len(self.float_bufs)
        with torch.no_grad():  # running statistics move by the mean change; counters add up
            for bcur, b0, d in zip(self.float_bufs, self.start[:nf], self.delta[:nf], strict=True):
                bcur.copy_(b0 + d / self.m)
            for bcur, b0, d in zip(self.int_bufs, self.start[nf:], self.delta[nf:], strict=True):
                bcur.copy_(b0 + d)
        return loss_sum.item() / self.m

    def history_extra(self, m: int) -> dict:
        return {"world_size": self.world, "minibatches": m}

    def barrier(self) -> None:
        dist.barrier()


def train_robust_distributed(student: nn.Module, x: torch.Tensor, cfg: RobustTrainConfig, *,
                             y: torch.Tensor | None = None, t_logits: torch.Tensor | None = None,
                             out_dir: str | Path | None = None, device: str | torch.device = "cpu",
                             progress: bool = True, stop_after_updates: int | None = None,
                             minibatches: int | None = None, tensorboard: bool = False) -> tuple[nn.Module, dict]:
    """Robust training (``cfg`` as for :func:`~shieldkit.training.robust.train_robust`) split over ranks:
    the one training loop with :class:`DistributedSync` as its update hook.

    Every rank passes the *whole* training set (``x`` and ``y``/``t_logits``; synthetic sets are small
    enough to replicate) and the same ``cfg``; ranks start from rank 0's weights. ``minibatches``
    overrides M (e.g. to run the single-process equivalent of a W-rank ℬ = 1 job). Returns the
    student (eval mode, identical on all ranks) and the history; only rank 0 writes files.
    """
    return train_robust(student, x, cfg, y=y, t_logits=t_logits, out_dir=out_dir, device=device, progress=progress,
                        stop_after_updates=stop_after_updates, sync=DistributedSync(cfg, minibatches),
                        tensorboard=tensorboard)


__all__ = ["DistributedGradRefine", "DistributedSync", "minibatches_per_update", "train_robust_distributed"]
