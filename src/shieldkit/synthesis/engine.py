"""Run driver for synthesis: :func:`synthesize` with any method of :data:`METHODS` (``cfg.method``).

Work is split into shards of one batch; shard i's randomness (its DSS coefficients, labels, noise and jitter)
comes only from ``derive_seed(seed, "shard", i)``, so a resumed run, or shards made by different processes
(``rank``/``world_size``, method "dss" only), reproduce the single uninterrupted run exactly. Shards are written
atomically as they are made; a killed run resumes at the first shard its method needs.

Integrity: the folder's ``fingerprints.json`` pins the teacher (weights + card), the synthesis config, the class
count / image shape and the shieldkit version; a resume with other inputs is refused (``overwrite=True`` starts
afresh). A non-finite teacher is refused before any work, a batch with a non-finite loss, image or logit aborts
before its shard is written, and ``manifest.json`` (with every shard's sha256) is written only when all shards
exist.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from shieldkit.errors import IntegrityError
from shieldkit.models.checks import check_finite_weights
from shieldkit.synthesis.base import SynthesisContext, SynthesisMethod
from shieldkit.synthesis.config import SynthesisConfig, batch_draws
from shieldkit.synthesis.dss import DSSMethod
from shieldkit.synthesis.fast import FastMethod
from shieldkit.synthesis.losses import BNStatistics
from shieldkit.synthesis.store import MANIFEST, shard_path, verify_shard, write_manifest, write_shard
from shieldkit.utils.fingerprint import RunManifest, fingerprint_model
from shieldkit.utils.io import load_tensors, read_json
from shieldkit.utils.progress import progress_bar

METHODS: dict[str, Callable[[SynthesisContext], SynthesisMethod]] = {"dss": DSSMethod, "fast": FastMethod}


def synthesize(teacher: nn.Module, out_dir: str | Path, cfg: SynthesisConfig, *, num_classes: int | None = None,
               image_shape: tuple[int, int, int] | None = None, device: str | torch.device = "cpu",
               rank: int = 0, world_size: int = 1, progress: bool = True, overwrite: bool = False) -> Path:
    """Synthesise ``cfg.n_samples`` images from ``teacher`` into shards under ``out_dir`` (resumable).

    ``teacher`` is a :class:`~shieldkit.models.NormalizedClassifier` (or any [0,1]-input module with
    BatchNorm; pass ``num_classes``/``image_shape`` and it is assumed to normalise with mean 0, std 1).
    Returns ``out_dir``.
    """
    out = Path(out_dir)
    device = torch.device(device)
    card = getattr(teacher, "card", None)
    num_classes = num_classes or (card.num_classes if card else None)
    image_shape = image_shape or ((card.in_channels, card.image_size, card.image_size) if card else None)
    if num_classes is None or image_shape is None:
        raise ValueError("pass num_classes and image_shape for a teacher without a shieldkit ModelCard")
    BNStatistics(teacher)  # fail fast, before any work, on a model without BatchNorm
    mean = getattr(teacher, "mean", torch.zeros(1, image_shape[0], 1, 1)).to(device)
    std = getattr(teacher, "std", torch.ones(1, image_shape[0], 1, 1)).to(device)

    check_finite_weights(teacher, "teacher")
    manifest = {"config": cfg.to_dict(), "num_classes": num_classes, "image_shape": list(image_shape),
                "teacher": card.to_dict() if card else None, "num_shards": cfg.num_shards}
    fps = {"teacher": fingerprint_model(teacher), "synthesis": cfg.to_dict(), "num_classes": num_classes,
           "image_shape": list(image_shape)}
    status = _check_fingerprints(out, fps, overwrite, rank, world_size)
    ctx = SynthesisContext(teacher, out, cfg, num_classes, tuple(image_shape), mean, std, device)
    try:
        _synthesize_shards(ctx, manifest, rank, world_size, progress)
    except BaseException:
        if status == "fresh" and rank == 0:
            RunManifest.discard_if_unused(out)
        raise
    return out


def _check_fingerprints(out: Path, fps: dict, overwrite: bool, rank: int, world_size: int) -> str:
    """Rank 0 checks (or writes) ``fingerprints.json``; with several ranks the others wait for it, then
    check it too, so all fail together on a mismatch."""
    import torch.distributed as tdist

    many = world_size > 1 and tdist.is_available() and tdist.is_initialized()
    status, error = "resume", None
    if rank == 0:
        try:
            status = RunManifest.check_or_init(out, fps, overwrite)
        except IntegrityError as exc:
            error = exc
    if many:
        tdist.barrier()  # reached by rank 0 even on a mismatch, so no rank waits forever
    if error is not None:
        raise error
    if rank != 0:
        status = RunManifest.check_or_init(out, fps, False)
    return status


def _check_existing_shard(out: Path, i: int, manifest_on_disk: dict | None) -> None:
    if manifest_on_disk is not None:
        verify_shard(out, i, manifest_on_disk)
        return
    if not shard_path(out, i).exists():
        raise IntegrityError(f"{shard_path(out, i)}: missing, though the run's saved state says it was written",
                             hint="use a new --out or add --overwrite to start afresh")
    t = load_tensors(shard_path(out, i))  # atomically written: complete, or a CorruptFileError
    if not all(bool(torch.isfinite(v).all()) for v in t.values() if torch.is_floating_point(v)):
        raise IntegrityError(f"{shard_path(out, i)}: contains NaN or Inf values",
                             hint="use a new --out or add --overwrite to start afresh")


def _synthesize_shards(ctx: SynthesisContext, manifest: dict, rank: int, world_size: int, progress: bool) -> None:
    cfg, out, teacher = ctx.cfg, ctx.out, ctx.teacher
    mpath = out / MANIFEST
    on_disk = read_json(mpath) if mpath.exists() else None
    method = METHODS[cfg.method](ctx)
    mine = list(range(rank, cfg.num_shards, world_size))
    todo = method.plan(mine, world_size)
    for i in mine:
        if i not in todo:
            _check_existing_shard(out, i, on_disk)
    was_training = teacher.training
    flags = [p.requires_grad for p in teacher.parameters()]
    teacher.eval().to(ctx.device)
    for p in teacher.parameters():
        p.requires_grad_(False)
    if ctx.channels_last:
        teacher.to(memory_format=torch.channels_last)
    done_before = sum(cfg.shard_size(i) for i in mine if i not in todo)
    total = sum(cfg.shard_size(i) for i in mine)
    try:
        if todo:
            method.prepare(progress)
        with progress_bar("synthesize", total=total, enabled=progress, unit="samples",
                          completed=done_before) as bar:
            for i in todo:
                size = cfg.shard_size(i)
                g, alphas, labels = batch_draws(cfg, "shard", i, size, ctx.num_classes)
                t0 = time.perf_counter()
                images, stats = method.make(i, labels, alphas, g)
                with torch.no_grad():
                    t_logits = teacher(images)
                if not (all(map(_finite, stats.values())) and bool(torch.isfinite(images).all())
                        and bool(torch.isfinite(t_logits).all())):
                    raise IntegrityError(f"{out}: shard {i}: non-finite synthesis loss, images or teacher logits "
                                         f"(losses {stats}); nothing written for this shard",
                                         hint="check the teacher (finite weights, BatchNorm statistics) or "
                                              "lower the synthesis lr")
                seconds = time.perf_counter() - t0
                write_shard(out, i, images=images, labels=labels, alphas=alphas, t_logits=t_logits,
                            info={**{f"loss_{k}": v for k, v in stats.items()}, "seconds": seconds,
                                  "samples_per_s": size / seconds, "steps_per_sample": cfg.steps_per_sample,
                                  "sample_iters_per_s": size * cfg.steps_per_sample / seconds})
                method.committed(i)
                bar.advance(size, ce=stats["class"], bn=stats["feature"])
    finally:
        teacher.to(memory_format=torch.contiguous_format)
        for p, f in zip(teacher.parameters(), flags, strict=True):
            p.requires_grad_(f)
        teacher.train(was_training)
    # The manifest (with every shard's sha256) is the completion marker: written once all shards exist.
    complete = all(shard_path(out, i).exists() for i in range(cfg.num_shards))
    if complete and (todo or on_disk is None):
        write_manifest(out, {**manifest, **method.summary()})


def _finite(v: float) -> bool:
    return v == v and v not in (float("inf"), float("-inf"))
