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

import time
from pathlib import Path

import torch
from torch import nn

from shieldkit.distributed import dist
from shieldkit.training.gradrefine import GradRefine
from shieldkit.training.objectives import Batch, create_objective
from shieldkit.training.robust import (
    RobustTrainConfig,
    _jsonable,
    check_training_inputs,
    eps_schedule,
    make_optimizer,
)
from shieldkit.utils.io import atomic_torch_save, atomic_write_json, safe_torch_load
from shieldkit.utils.progress import progress_bar
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


def _minibatch_seed(seed: int, step: int, b: int, m: int) -> int:
    return derive_seed(seed, "update", step) if m == 1 else derive_seed(seed, "update", step, "minibatch", b)


def train_robust_distributed(student: nn.Module, x: torch.Tensor, cfg: RobustTrainConfig, *,
                             y: torch.Tensor | None = None, t_logits: torch.Tensor | None = None,
                             out_dir: str | Path | None = None, device: str | torch.device = "cpu",
                             progress: bool = True, stop_after_updates: int | None = None,
                             minibatches: int | None = None, tensorboard: bool = False) -> tuple[nn.Module, dict]:
    """Robust training (``cfg`` as for :func:`~shieldkit.training.robust.train_robust`) split over ranks.

    Every rank passes the *whole* training set (``x`` and ``y``/``t_logits``; synthetic sets are small
    enough to replicate) and the same ``cfg``; ranks start from rank 0's weights. ``minibatches``
    overrides M (e.g. to run the single-process equivalent of a W-rank ℬ = 1 job). Returns the
    student (eval mode, identical on all ranks) and the history; only rank 0 writes files.
    """
    device = torch.device(device)
    r, w = dist.rank(), dist.world_size()
    n = check_training_inputs(x, y, t_logits)
    M = minibatches_per_update(cfg, w, minibatches)
    mine = list(range(r, M, w))
    objective = create_objective(cfg.objective, cfg.attack(), **cfg.objective_kwargs)
    use_refine = cfg.grad_refine_batches > 1
    per_epoch = max(n // (cfg.batch_size * M), 1)
    total = per_epoch * cfg.epochs
    lr = cfg.lr * (cfg.grad_refine_batches if (use_refine and cfg.lr_scale_with_batches) else 1)

    student.to(device).train()
    params = [p for p in student.parameters() if p.requires_grad]
    buffers = [b for _, b in student.named_buffers()]
    dist.broadcast_([*params, *buffers])  # every rank starts from rank 0's state
    opt, sched = make_optimizer(params, cfg, lr, total)
    refiner = DistributedGradRefine(params, M, cfg.tau) if use_refine else None
    history: dict = {"loss": [], "kept_fraction": [], "epoch_seconds": [], "world_size": w, "minibatches": M}
    step = 0
    ckpt = Path(out_dir) / CHECKPOINT if out_dir is not None else None
    if ckpt is not None and ckpt.exists():
        state = safe_torch_load(ckpt, map_location=device)
        if state["config"] != _jsonable(cfg.to_dict()) or state.get("minibatches") != M:
            raise ValueError(f"{ckpt} was written with a different configuration or number of minibatches per "
                             f"update (M = {state.get('minibatches')}, now {M}); use a new --out")
        student.load_state_dict(state["student"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        step = int(state["step"])
        history = state["history"]
    dist.barrier()
    tb = _tensorboard(out_dir, tensorboard and r == 0)

    x_dev = x.to(device)
    y_dev = y.to(device) if y is not None else None
    t_dev = t_logits.to(device) if t_logits is not None else None
    float_bufs = [b for b in buffers if b.is_floating_point()]
    int_bufs = [b for b in buffers if not b.is_floating_point()]
    with progress_bar(f"train[{cfg.objective}]×{w}", total=total, enabled=progress and r == 0,
                      completed=step) as bar:
        t_epoch = time.perf_counter()
        while step < total:
            epoch, pos = divmod(step, per_epoch)
            perm = torch.randperm(n, generator=make_generator(derive_seed(cfg.seed, "epoch", epoch)))
            start_f = [b.detach().clone() for b in float_bufs]
            start_i = [b.detach().clone() for b in int_bufs]
            d_f = [torch.zeros_like(b) for b in float_bufs]
            d_i = [torch.zeros_like(b) for b in int_bufs]
            loss_sum = torch.zeros(1, dtype=torch.float64)
            objective.attack.eps = cfg.eps * eps_schedule(step, total, cfg.eps_warmup)  # as train_robust
            for b in mine:
                _restore(float_bufs, start_f)
                _restore(int_bufs, start_i)
                idx = perm[(pos * M + b) * cfg.batch_size:(pos * M + b + 1) * cfg.batch_size].to(device)
                batch = Batch(x_dev[idx], None if y_dev is None else y_dev[idx], None if t_dev is None else t_dev[idx])
                gen = make_generator(_minibatch_seed(cfg.seed, step, b, M), device=device)
                loss, _ = objective(student, batch, gen)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"non-finite training loss at update {step} (rank {r}); lower --lr")
                loss.backward()
                if refiner is not None:
                    refiner.accumulate()
                loss_sum += loss.item()
                with torch.no_grad():
                    for d, bnow, b0 in zip(d_f + d_i, float_bufs + int_bufs, start_f + start_i, strict=True):
                        d.add_(bnow - b0)
            # --- synchronise: gradients (or GradRefine sums), buffer changes, loss -------------------
            if refiner is not None:
                history["kept_fraction"].append(refiner.apply())
            else:
                grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
                dist.all_reduce_sum_(grads)
                for p, g in zip(params, grads, strict=True):
                    p.grad = g.div_(M)
            if cfg.grad_clip:  # on the synchronised gradient: identical on every rank
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            dist.all_reduce_sum_([*d_f, *d_i, loss_sum])
            with torch.no_grad():
                for bcur, b0, d in zip(float_bufs, start_f, d_f, strict=True):
                    bcur.copy_(b0 + d / M)
                for bcur, b0, d in zip(int_bufs, start_i, d_i, strict=True):
                    bcur.copy_(b0 + d)
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
            step += 1
            history["loss"].append(loss_sum.item() / M)
            bar.advance(1, loss=history["loss"][-1])
            if tb is not None:
                tb.scalars(step, loss=history["loss"][-1], lr=sched.get_last_lr()[0],
                           **({"kept_fraction": history["kept_fraction"][-1]} if refiner is not None else {}))
            end_of_epoch = step % per_epoch == 0
            if end_of_epoch:
                history["epoch_seconds"].append(time.perf_counter() - t_epoch)
                t_epoch = time.perf_counter()
            if (ckpt is not None and r == 0
                    and (end_of_epoch or step % cfg.checkpoint_every == 0 or step == total)):
                atomic_torch_save(ckpt, {"student": student.state_dict(), "optimizer": opt.state_dict(),
                                         "scheduler": sched.state_dict(), "step": step, "history": history,
                                         "config": _jsonable(cfg.to_dict()), "minibatches": M})
            if stop_after_updates is not None and step >= stop_after_updates:
                break
    if tb is not None:
        tb.close()
    if out_dir is not None and r == 0:
        atomic_write_json(Path(out_dir) / "train_history.json", {"config": cfg.to_dict(), **history})
    dist.barrier()
    return student.eval(), history


def _restore(bufs: list[torch.Tensor], saved: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for b, s in zip(bufs, saved, strict=True):
            b.copy_(s)


def _tensorboard(out_dir: str | Path | None, enabled: bool):  # noqa: ANN202 - optional helper
    if not enabled or out_dir is None:
        return None
    from shieldkit.utils.tensorboard import TensorBoardLogger

    return TensorBoardLogger(Path(out_dir) / "tensorboard")
