"""Process-group set-up from ``torchrun``'s environment, and the few collectives shieldkit needs.

``torchrun --nproc_per_node=N -m shieldkit <command>`` starts N processes with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` set. :func:`init_distributed`
reads them and initialises ``torch.distributed`` with ``gloo`` on CPU and ``nccl`` on CUDA (one
GPU per local rank); run without torchrun it is a no-op and every helper degrades to the
single-process answer, so the same code path serves 1 and N processes.

Timeouts: collectives wait for the slowest rank. Synthesis shards are distributed round-robin, so a
rank can finish a whole shard (minutes for a WRN-28-10) after the others; the default timeout is
therefore generous (``SHIELDKIT_DIST_TIMEOUT_MIN``, default 360 minutes) instead of torch's default.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as tdist

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
DEFAULT_TIMEOUT_MIN = 360


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job (``world_size == 1`` when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    """True when the torchrun environment variables are present (WORLD_SIZE alone is not enough)."""
    return all(v in os.environ for v in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def is_initialized() -> bool:
    return tdist.is_available() and tdist.is_initialized()


def rank() -> int:
    return tdist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return tdist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def choose_backend(device: str | torch.device) -> str:
    """``nccl`` for CUDA devices (when built with NCCL), ``gloo`` otherwise."""
    dev = torch.device(device) if str(device) != "auto" else torch.device(
        "cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda" and tdist.is_nccl_available():
        return "nccl"
    return "gloo"


def init_distributed(device: str | torch.device = "auto", backend: str | None = None,
                     timeout_minutes: float | None = None) -> DistInfo:
    """Initialise the default process group from torchrun's env vars (no-op if not launched by torchrun).

    Returns a :class:`DistInfo` whose ``device`` is the one this rank must use: on CUDA the GPU
    ``LOCAL_RANK`` (so ``--device cuda`` means "my GPU" under torchrun), else the requested device.
    Calling it again after initialisation returns the current state.
    """
    from shieldkit.utils.device import resolve_device

    dev = resolve_device(device)
    if not launched_by_torchrun():
        if is_initialized():  # initialised by the caller (e.g. tests with mp.spawn)
            return DistInfo(tdist.get_rank(), tdist.get_world_size(), tdist.get_rank(), tdist.get_backend(), dev)
        return DistInfo(device=dev)
    r, w = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", r))
    if dev.type == "cuda":
        if local >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} CUDA devices visible; "
                               f"use --nproc_per_node ≤ the number of GPUs")
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    backend = backend or choose_backend(dev)
    if backend == "nccl" and dev.type != "cuda":
        raise ValueError("the nccl backend needs CUDA devices; use gloo on CPU")
    if not is_initialized():
        minutes = timeout_minutes if timeout_minutes is not None else float(
            os.environ.get("SHIELDKIT_DIST_TIMEOUT_MIN", DEFAULT_TIMEOUT_MIN))
        kw = {"device_id": dev} if backend == "nccl" else {}
        tdist.init_process_group(backend=backend, rank=r, world_size=w, timeout=timedelta(minutes=minutes), **kw)
    return DistInfo(r, w, local, backend, dev)


def cleanup() -> None:
    """Tear the process group down (safe to call when none exists)."""
    if is_initialized():
        tdist.destroy_process_group()


def barrier() -> None:
    if is_initialized() and world_size() > 1:
        tdist.barrier()


def _comm_device() -> torch.device:
    """Tensors handed to NCCL must live on the GPU; gloo works on CPU tensors."""
    if is_initialized() and tdist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum_(tensors: list[torch.Tensor]) -> None:
    """In-place SUM all-reduce of a list of tensors, coalesced into one flat buffer per dtype.

    One collective instead of one per tensor (hundreds for a ResNet), which is what DDP's gradient
    buckets achieve too. Every rank ends with bit-identical sums.
    """
    if not (is_initialized() and world_size() > 1) or not tensors:
        return
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in tensors:
        by_dtype.setdefault(t.dtype, []).append(t)
    dev = _comm_device()
    for group in by_dtype.values():
        flat = torch.cat([t.reshape(-1) for t in group]).to(dev)
        tdist.all_reduce(flat, op=tdist.ReduceOp.SUM)
        offset = 0
        for t in group:
            n = t.numel()
            t.copy_(flat[offset:offset + n].view_as(t))
            offset += n


def broadcast_(tensors: list[torch.Tensor], src: int = 0) -> None:
    """In-place broadcast from ``src`` (used to start every rank from rank 0's weights)."""
    if not (is_initialized() and world_size() > 1):
        return
    dev = _comm_device()
    for t in tensors:
        buf = t.detach().to(dev)
        tdist.broadcast(buf, src=src)
        t.data.copy_(buf)


def all_gather_object(obj: object) -> list[object]:
    """Every rank's ``obj`` (picklable), indexed by rank; ``[obj]`` when not distributed."""
    if not (is_initialized() and world_size() > 1):
        return [obj]
    out: list[object] = [None] * world_size()
    tdist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: object, src: int = 0) -> object:
    if not (is_initialized() and world_size() > 1):
        return obj
    box = [obj if rank() == src else None]
    tdist.broadcast_object_list(box, src=src)
    return box[0]


def same_on_all_ranks(obj: object) -> bool:
    """True iff ``obj`` pickles identically on every rank (a cheap consistency check)."""
    blobs = all_gather_object(pickle.dumps(obj))
    return all(b == blobs[0] for b in blobs)
