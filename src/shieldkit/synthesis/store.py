"""On-disk format of a synthetic set: ``manifest.json`` + one safetensors file per shard.

Each shard holds ``images`` ([0,1] float32), ``labels`` (assigned ŷ), ``alphas`` (the α's of Eq 8
used for that batch) and ``t_logits`` (teacher logits on the saved images — the soft labels that
L_DFShield trains on), plus per-shard timing/loss info in the safetensors metadata.

The manifest is written *last*, once every shard exists, and is the completion marker readers
require; it lists the sha256 of every shard file (``shards: [{"file", "sha256"}]``), which
:func:`load_synthetic` verifies, so a corrupted shard is refused rather than silently used.
The folder's ``fingerprints.json`` (see :mod:`shieldkit.utils.fingerprint`) pins its inputs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

from shieldkit.errors import IntegrityError
from shieldkit.utils.fingerprint import sha256_file
from shieldkit.utils.io import atomic_write_json, load_tensors, read_json, save_tensors

MANIFEST = "manifest.json"


def shard_path(out: Path, i: int) -> Path:
    return Path(out) / f"shard_{i:05d}.safetensors"


def write_manifest(out: Path, manifest: dict) -> None:
    """Write the manifest with the sha256 of every shard (all shards must exist)."""
    out = Path(out)
    shards = [{"file": shard_path(out, i).name, "sha256": sha256_file(shard_path(out, i))}
              for i in range(manifest["num_shards"])]
    atomic_write_json(out / MANIFEST, {**manifest, "shards": shards})


def verify_shard(out: Path, i: int, manifest: dict) -> None:
    """Raise :class:`IntegrityError` if shard ``i`` differs from the sha256 the manifest records."""
    recorded = (manifest.get("shards") or [None] * (i + 1))[i]
    if recorded is None:
        raise IntegrityError(f"{out}: manifest records no sha256 for shard {i} (written by an older shieldkit)",
                             hint="re-create the set: `shieldkit synthesize` with a new --out or --overwrite")
    actual = sha256_file(shard_path(out, i))
    if actual != recorded["sha256"]:
        raise IntegrityError(f"{shard_path(out, i)}: corrupt or replaced (sha256 {actual[:12]}… ≠ recorded "
                             f"{recorded['sha256'][:12]}…)",
                             hint="re-create the set: `shieldkit synthesize` with a new --out or --overwrite")


def write_shard(out: Path, i: int, *, images: torch.Tensor, labels: torch.Tensor, alphas: torch.Tensor,
                t_logits: torch.Tensor, info: dict) -> None:
    save_tensors(shard_path(out, i), {"images": images, "labels": labels, "alphas": alphas, "t_logits": t_logits},
                 metadata={"info": json.dumps(info)})


@dataclass
class SyntheticSet:
    x: torch.Tensor
    y: torch.Tensor
    t_logits: torch.Tensor
    alphas: torch.Tensor  # one row per sample (its batch's α's)
    manifest: dict
    shard_info: list[dict] = field(default_factory=list)
    shard_sizes: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def throughput(self) -> dict[str, float]:
        """Aggregate synthesis speed over the shards on disk, the fast path's generator warm-up included: the
        time a user waits for this set."""
        secs = sum(s["seconds"] for s in self.shard_info) + self.manifest.get("fast", {}).get("warmup_seconds", 0.0)
        it = self.manifest["config"]["iterations"]  # sets written before issue 17 lack steps_per_sample
        steps = sum(s.get("steps_per_sample", it) * n for s, n in zip(self.shard_info, self.shard_sizes, strict=True))
        return {"seconds": secs, "samples_per_s": len(self) / max(secs, 1e-9),
                "sample_iters_per_s": steps / max(secs, 1e-9)}


def load_synthetic(out_dir: str | Path, allow_partial: bool = False) -> SyntheticSet:
    out = Path(out_dir)
    if not (out / MANIFEST).exists():
        raise FileNotFoundError(f"{out}: no synthetic set here (missing {MANIFEST}); run `shieldkit synthesize`")
    manifest = read_json(out / MANIFEST)
    xs, ys, ts, als, infos, sizes = [], [], [], [], [], []
    missing = []
    for i in range(manifest["num_shards"]):
        p = shard_path(out, i)
        if not p.exists():
            missing.append(i)
            continue
        verify_shard(out, i, manifest)
        t = load_tensors(p)
        with safe_open(str(p), framework="pt") as fh:
            infos.append(json.loads(fh.metadata().get("info", "{}")))
        n = t["images"].shape[0]
        sizes.append(int(n))
        xs.append(t["images"])
        ys.append(t["labels"])
        ts.append(t["t_logits"])
        als.append(t["alphas"].view(1, -1).expand(n, -1))
    if missing and not allow_partial:
        shown = f"{missing[:5]}{'…' if len(missing) > 5 else ''}"
        raise FileNotFoundError(f"{out}: synthetic set incomplete — shards {shown} missing; rerun "
                                f"`shieldkit synthesize` with the same arguments to resume")
    if not xs:
        raise FileNotFoundError(f"{out}: no shards written yet")
    return SyntheticSet(torch.cat(xs), torch.cat(ys), torch.cat(ts), torch.cat(als), manifest, infos, sizes)
