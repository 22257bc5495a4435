"""Scaling shieldkit over processes with ``torchrun`` / ``torch.distributed`` (gloo on CPU, nccl on GPU).

* :mod:`~shieldkit.distributed.dist` — process-group set-up from torchrun's environment, collectives;
* :mod:`~shieldkit.distributed.synthesis` — DSS shards split over ranks, bit-identical to one process;
* :mod:`~shieldkit.distributed.training` — data-parallel robust training with GradRefine over all ranks;
* :mod:`~shieldkit.distributed.evaluation` — test points sharded over ranks, per-point results merged.
"""

from shieldkit.distributed.dist import DistInfo, barrier, cleanup, init_distributed, is_main, rank, world_size

__all__ = ["DistInfo", "barrier", "cleanup", "init_distributed", "is_main", "rank", "world_size"]
