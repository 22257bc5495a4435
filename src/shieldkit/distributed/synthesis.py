"""Distributed DSS synthesis: ``torchrun --nproc_per_node=N -m shieldkit synthesize …``.

The work unit is the shard (one batch) of :func:`shieldkit.synthesis.synthesize`; shard ``i`` is
made by rank ``i mod N`` from the seed ``derive_seed(seed, "shard", i)`` alone, so the set written by
N ranks is bit-identical to the single-process one (same seed, same device type) and a killed job
resumes per shard with any N. Ranks never exchange tensors: each writes its shards atomically into
the shared output directory (it must be visible to all ranks — one machine, or a shared filesystem).
After a final barrier rank 0 checks the complete set (:func:`verify_synthetic_set`) and shares the
summary with every rank.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from shieldkit.distributed import dist
from shieldkit.synthesis import SynthesisConfig, load_synthetic, synthesize
from shieldkit.synthesis.store import MANIFEST
from shieldkit.utils.io import read_json


def synthesize_distributed(teacher: nn.Module, out_dir: str | Path, cfg: SynthesisConfig, *,
                           num_classes: int | None = None, image_shape: tuple[int, int, int] | None = None,
                           device: str | torch.device = "cpu", progress: bool = True,
                           verify: bool = True) -> dict:
    """Run this rank's share of the synthesis; every rank returns rank 0's verification summary.

    Works unchanged without torchrun (world size 1). Call :func:`shieldkit.distributed.dist.init_distributed`
    first when launched by torchrun.
    """
    r, w = dist.rank(), dist.world_size()
    out = Path(out_dir)
    # Every rank checks an existing manifest against cfg (so all fail together on a mismatch);
    # rank 0 writes it for a new set. Shards are disjoint, so ranks never write the same file.
    synthesize(teacher, out, cfg, num_classes=num_classes, image_shape=image_shape, device=device,
               rank=r, world_size=w, progress=progress and r == 0)
    dist.barrier()
    summary = verify_synthetic_set(out, cfg) if (verify and r == 0) else {"verified": False}
    return dist.broadcast_object(summary)  # type: ignore[return-value]


def verify_synthetic_set(out_dir: str | Path, cfg: SynthesisConfig | None = None) -> dict:
    """Check a finished set: manifest present (and matching ``cfg``), every shard present with the
    right size, images finite and in [0, 1], labels in range. Raises ``ValueError`` on any defect."""
    out = Path(out_dir)
    manifest = read_json(out / MANIFEST)
    if cfg is not None and manifest["config"] != cfg.to_dict():
        raise ValueError(f"{out}: manifest configuration differs from the requested one")
    syn = load_synthetic(out)  # raises, naming the missing shards, if any is absent
    mcfg = SynthesisConfig(**{k: v for k, v in manifest["config"].items()})
    expected = [mcfg.shard_size(i) for i in range(manifest["num_shards"])]
    if len(syn) != sum(expected):
        raise ValueError(f"{out}: {len(syn)} samples on disk, expected {sum(expected)}")
    if not torch.isfinite(syn.x).all() or syn.x.min() < 0 or syn.x.max() > 1:
        raise ValueError(f"{out}: images are not finite values in [0, 1]")
    if syn.y.min() < 0 or syn.y.max() >= manifest["num_classes"]:
        raise ValueError(f"{out}: labels outside [0, {manifest['num_classes']})")
    if not torch.isfinite(syn.t_logits).all():
        raise ValueError(f"{out}: non-finite teacher logits")
    return {"verified": True, "n_samples": len(syn), "num_shards": manifest["num_shards"],
            "world_size": dist.world_size(), **syn.throughput()}
