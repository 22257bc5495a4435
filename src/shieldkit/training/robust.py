"""Robust training of a student on (synthetic or real) data — DataFreeShield Algorithm 1 lines 11-22.

One loop serves every objective (``L_DFShield`` and the zoo): per update it draws ℬ minibatches,
back-propagates each at the same weights, combines them with GradRefine (ℬ > 1) or uses the single
gradient (ℬ = 1), and takes one optimiser step. BatchNorm running statistics update on every
minibatch (as the reference does; freezing them collapsed the student to chance in our prototype).

Data-free means data-free: nothing here looks at real images. There is no checkpoint selection on
a test set (the reference code's data leak); the final weights are returned.

Resumability: the state (student, optimiser, scheduler, position in the epoch) is checkpointed
atomically every ``checkpoint_every`` updates and at the end of every epoch. All randomness —
the epoch permutation and the attack's random start — is derived from ``(seed, epoch)`` and
``(seed, update)``, so a resumed run is bit-identical to an uninterrupted one.

Integrity: with ``out_dir`` the folder's ``fingerprints.json`` pins the inputs — ``inputs`` from the
caller first (e.g. ``teacher`` — the student's initial weights — and ``synthetic`` fingerprints), then
``data`` (digest of x / y / t_logits), ``training`` (the config) and ``version``;
a resume with other inputs is refused (``overwrite=True`` starts afresh). A non-finite loss, or
non-finite weights at a checkpoint, abort before that checkpoint is written.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from shieldkit.attacks.pgd import PGDConfig
from shieldkit.errors import IntegrityError
from shieldkit.training.gradrefine import GradRefine
from shieldkit.training.objectives import Batch, create_objective
from shieldkit.utils.fingerprint import RunManifest, sha256_tensor
from shieldkit.utils.io import atomic_torch_save, atomic_write_json, safe_torch_load
from shieldkit.utils.progress import progress_bar
from shieldkit.utils.seed import derive_seed, make_generator

CHECKPOINT = "checkpoint.pt"


@dataclass
class RobustTrainConfig:
    objective: str = "dfshield"
    objective_kwargs: dict = field(default_factory=dict)
    eps: float = 0.1
    norm: str = "linf"
    attack_steps: int = 10
    attack_alpha: float | None = None  # default ε/4 (App. A.3)
    attack_alpha_ratio: float | None = None  # α = ratio·ε when attack_alpha is None (follows --eps); None: ε/4
    attack_start: str = "normal"  # reference: x + 0.001·N(0,1)
    epochs: int = 10
    batch_size: int = 200
    lr: float = 0.01
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    schedule: str = "cosine"  # "cosine" | "constant" (reference: constant 1e-4 for 100-200 epochs)
    grad_refine_batches: int = 1  # ℬ; 1 disables GradRefine
    tau: float = 0.5
    lr_scale_with_batches: bool = False  # see training.gradrefine for why the default is False
    eps_warmup: float = 0.3  # fraction of updates over which ε ramps linearly from 0 (0 = off)
    grad_clip: float | None = 5.0  # clip the (refined) gradient's global ℓ2 norm (None = off)
    checkpoint_every: int = 20
    seed: int = 0

    def __post_init__(self) -> None:
        """Refuse a configuration that cannot train (issue 13), in the API as on the CLI: the same
        validators the flags go through, with the field name in the message."""
        from shieldkit.utils.validate import (
            check_eps,
            check_fraction,
            check_nonnegative_float,
            check_nonnegative_int,
            check_positive_float,
            check_positive_int,
        )

        self.eps = check_eps(self.eps, self.norm, flag="eps")
        for name in ("epochs", "batch_size", "grad_refine_batches", "checkpoint_every"):
            setattr(self, name, check_positive_int(getattr(self, name), name))
        self.attack_steps = check_nonnegative_int(self.attack_steps, "attack_steps")
        self.lr = check_positive_float(self.lr, "lr")
        self.weight_decay = check_nonnegative_float(self.weight_decay, "weight_decay")
        self.eps_warmup = check_fraction(self.eps_warmup, "eps_warmup", closed=True)
        if self.attack_alpha is not None:
            self.attack_alpha = check_positive_float(self.attack_alpha, "attack_alpha")
        if self.attack_alpha_ratio is not None:
            self.attack_alpha_ratio = check_positive_float(self.attack_alpha_ratio, "attack_alpha_ratio")
        if self.grad_clip is not None:
            self.grad_clip = check_positive_float(self.grad_clip, "grad_clip")

    def attack(self) -> PGDConfig:
        alpha = self.attack_alpha
        if alpha is None and self.attack_alpha_ratio is not None:
            alpha = self.attack_alpha_ratio * self.eps
        return PGDConfig(eps=self.eps, norm=self.norm, steps=self.attack_steps, alpha=alpha,
                         random_start=True, start=self.attack_start)

    def updates_per_epoch(self, n: int) -> int:
        return max(n // (self.batch_size * self.grad_refine_batches), 1)

    def to_dict(self) -> dict:
        return asdict(self)


class UpdateSync:
    """How one optimiser update's minibatches are laid out and combined: the hook through which the one
    training loop (:func:`train_robust`) also serves data-parallel training
    (:class:`shieldkit.distributed.training.DistributedSync` overrides it). This default is one process:

    * M = ℬ minibatches per update (``grad_refine_batches``), all computed here at the same weights;
    * one attack generator per update, ``derive_seed(seed, "update", u)``, drawn from by every minibatch;
    * BatchNorm running statistics move minibatch after minibatch (as the reference does);
    * the gradient is the sum of the ℬ backward passes (GradRefine refines it when ℬ > 1);
    * this process writes the checkpoints and pins the run's inputs (``fingerprints.json``).
    """

    writer = True  # writes checkpoints / history
    pins_inputs = True  # checks fingerprints.json against the inputs (RunManifest)
    checkpoint_name = CHECKPOINT
    label = ""  # progress-bar suffix
    where = ""  # error-message suffix (distributed: the rank)

    def minibatches(self, cfg: RobustTrainConfig) -> int:
        return cfg.grad_refine_batches

    def mine(self, m: int) -> list[int]:
        """The minibatches of an update this process computes."""
        return list(range(m))

    def setup(self, params: list[nn.Parameter], buffers: list[torch.Tensor]) -> None:
        """Called once before the first update (distributed: broadcast rank 0's weights)."""

    def refiner(self, params: list[nn.Parameter], m: int, tau: float) -> GradRefine:
        return GradRefine(params, m, tau)

    def generators(self, seed: int, step: int, m: int, device: torch.device) -> Callable[[int], torch.Generator]:
        gen = make_generator(derive_seed(seed, "update", step), device=device)
        return lambda b: gen

    def begin_update(self) -> None:
        """Before the update's first minibatch."""

    def before_minibatch(self) -> None:
        """Before each minibatch's forward passes (distributed: reset BN statistics to the update's start)."""

    def after_minibatch(self) -> None:
        """After each minibatch's backward (distributed: record its BN-statistics change)."""

    def finish_update(self, params: list[nn.Parameter], refiner: GradRefine | None, losses: list[float],
                      history: dict) -> float:
        """Combine the minibatches' gradients into ``p.grad``; return the update's mean loss."""
        if refiner is not None:
            history["kept_fraction"].append(refiner.apply())
        return sum(losses) / len(losses)

    def history_extra(self, m: int) -> dict:
        return {}

    def barrier(self) -> None:
        """Wait for every process (distributed); nothing to wait for here."""


def train_robust(student: nn.Module, x: torch.Tensor, cfg: RobustTrainConfig, *, y: torch.Tensor | None = None,
                 t_logits: torch.Tensor | None = None, out_dir: str | Path | None = None,
                 device: str | torch.device = "cpu", progress: bool = True,
                 stop_after_updates: int | None = None, inputs: dict | None = None,
                 overwrite: bool = False, sync: UpdateSync | None = None,
                 tensorboard: bool = False) -> tuple[nn.Module, dict]:
    """Adversarially train ``student`` (in place) on images ``x`` with labels ``y`` and/or teacher logits.

    ``out_dir`` enables checkpointing/resume. ``stop_after_updates`` stops early (used by tests to
    simulate a kill). ``inputs``: extra fingerprints that must match on resume (see the module doc).
    ``sync``: how an update's minibatches are split and combined (default: this process, :class:`UpdateSync`).
    Returns the student (eval mode) and a history dict.
    """
    device, sync = torch.device(device), sync or UpdateSync()
    n = check_training_inputs(x, y, t_logits)
    if out_dir is not None and sync.pins_inputs:
        _pin_inputs(out_dir, (x, y, t_logits), cfg, inputs, overwrite)
    objective = create_objective(cfg.objective, cfg.attack(), **cfg.objective_kwargs)
    m = sync.minibatches(cfg)
    per_epoch = max(n // (cfg.batch_size * m), 1)
    total = per_epoch * cfg.epochs
    lr = cfg.lr * (cfg.grad_refine_batches if cfg.lr_scale_with_batches else 1)
    student.to(device).train()
    params = [p for p in student.parameters() if p.requires_grad]
    sync.setup(params, [b for _, b in student.named_buffers()])
    opt, sched = make_optimizer(params, cfg, lr, total)
    refiner = sync.refiner(params, m, cfg.tau) if cfg.grad_refine_batches > 1 else None
    history: dict = {"loss": [], "kept_fraction": [], "epoch_seconds": [], **sync.history_extra(m)}
    ckpt = Path(out_dir) / sync.checkpoint_name if out_dir is not None else None
    step, history = _resume(ckpt, student, opt, sched, cfg, m, device, history)
    sync.barrier()
    tb = _tensorboard(out_dir, tensorboard and sync.writer)
    data = [None if t is None else t.to(device) for t in (x, y, t_logits)]
    with progress_bar(f"train[{cfg.objective}]{sync.label}", total=total, enabled=progress and sync.writer,
                      completed=step) as bar:
        t_epoch = time.perf_counter()
        while step < total:
            epoch, pos = divmod(step, per_epoch)
            perm = torch.randperm(n, generator=make_generator(derive_seed(cfg.seed, "epoch", epoch)))
            gens = sync.generators(cfg.seed, step, m, device)
            objective.attack.eps = cfg.eps * eps_schedule(step, total, cfg.eps_warmup)
            losses = []
            sync.begin_update()
            for b in sync.mine(m):
                sync.before_minibatch()
                idx = perm[(pos * m + b) * cfg.batch_size:(pos * m + b + 1) * cfg.batch_size].to(device)
                batch = Batch(*(None if t is None else t[idx] for t in data))
                loss, _ = objective(student, batch, gens(b))
                if not torch.isfinite(loss):
                    raise IntegrityError(f"non-finite training loss at update {step}{sync.where}; nothing saved "
                                         f"for this update", hint="lower --lr (or check the data for NaN/Inf)")
                loss.backward()
                if refiner is not None:
                    refiner.accumulate()
                losses.append(loss.item())
                sync.after_minibatch()
            history["loss"].append(sync.finish_update(params, refiner, losses, history))
            if cfg.grad_clip:  # on the combined gradient (identical on every rank)
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
            step += 1
            bar.advance(1, loss=history["loss"][-1])
            if tb is not None:
                tb.scalars(step, loss=history["loss"][-1], lr=sched.get_last_lr()[0], **_last(history, "kept_fraction"))
            if step % per_epoch == 0:
                history["epoch_seconds"].append(time.perf_counter() - t_epoch)
                t_epoch = time.perf_counter()
            if ckpt is not None and sync.writer and (step % per_epoch == 0 or step % cfg.checkpoint_every == 0
                                                     or step == total):
                _checkpoint(ckpt, student, opt, sched, step, history, cfg, m)
            if stop_after_updates is not None and step >= stop_after_updates:
                break
    if tb is not None:
        tb.close()
    if out_dir is not None and sync.writer:
        atomic_write_json(Path(out_dir) / "train_history.json", {"config": cfg.to_dict(), **history})
    sync.barrier()
    return student.eval(), history


def _last(history: dict, key: str) -> dict:
    return {key: history[key][-1]} if history.get(key) else {}


def _pin_inputs(out_dir: str | Path, data: tuple[torch.Tensor | None, ...], cfg: RobustTrainConfig,
                inputs: dict | None, overwrite: bool) -> None:
    """Check (or write) ``fingerprints.json``: the caller's inputs, the data digests, the config."""
    fps = {**(inputs or {}),
           "data": {k: None if t is None else sha256_tensor(t) for k, t in zip(("x", "y", "t_logits"), data,
                                                                               strict=True)},
           "training": _jsonable(cfg.to_dict())}
    RunManifest.check_or_init(out_dir, fps, overwrite)


def _resume(ckpt: Path | None, student: nn.Module, opt: torch.optim.Optimizer, sched: object, cfg: RobustTrainConfig,
            m: int, device: torch.device, history: dict) -> tuple[int, dict]:
    """Load a checkpoint written by the same configuration (and the same M); returns (step, history)."""
    if ckpt is None or not ckpt.exists():
        return 0, history
    state = safe_torch_load(ckpt, map_location=device)
    if state["config"] != _jsonable(cfg.to_dict()) or state.get("minibatches", m) != m:
        raise ValueError(f"{ckpt} was written with a different training configuration or number of minibatches "
                         f"per update (M = {state.get('minibatches')}, now {m}); use a new --out")
    student.load_state_dict(state["student"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])  # type: ignore[attr-defined]
    return int(state["step"]), state["history"]


def _checkpoint(ckpt: Path, student: nn.Module, opt: torch.optim.Optimizer, sched: object, step: int,
                history: dict, cfg: RobustTrainConfig, m: int) -> None:
    if not all(bool(torch.isfinite(p).all()) for p in student.parameters()):
        raise IntegrityError(f"non-finite weights after update {step}; checkpoint not written",
                             hint="lower --lr or enable grad_clip")
    atomic_torch_save(ckpt, {"student": student.state_dict(), "optimizer": opt.state_dict(),
                             "scheduler": sched.state_dict(), "step": step, "history": history,  # type: ignore[attr-defined]
                             "config": _jsonable(cfg.to_dict()), "minibatches": m})


def _tensorboard(out_dir: str | Path | None, enabled: bool):  # noqa: ANN202 - optional helper
    if not enabled or out_dir is None:
        return None
    from shieldkit.utils.tensorboard import TensorBoardLogger

    return TensorBoardLogger(Path(out_dir) / "tensorboard")


def check_training_inputs(x: torch.Tensor, y: torch.Tensor | None, t_logits: torch.Tensor | None) -> int:
    """Labels or teacher logits are required and must have one row per image; returns the image count."""
    n = x.shape[0]
    if y is None and t_logits is None:
        raise ValueError("need hard labels y or teacher logits t_logits to train on")
    for name, t in (("y", y), ("t_logits", t_logits)):
        if t is not None and t.shape[0] != n:
            raise ValueError(f"{name} has {t.shape[0]} rows but x has {n}")
    return n


def make_optimizer(params, cfg: RobustTrainConfig, lr: float, total: int):  # noqa: ANN001, ANN201
    """SGD (Nesterov momentum, weight decay) with cosine annealing over ``total`` updates or a constant lr."""
    opt = torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                          weight_decay=cfg.weight_decay)
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total) if cfg.schedule == "cosine"
             else torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0))
    return opt, sched


def eps_schedule(step: int, total: int, warmup: float) -> float:
    """Fraction of ε used at ``step``: a linear ramp over the first ``warmup``·total updates.

    Not in the paper (whose CIFAR ε = 4/255 is mild). At MNIST's ε = 0.2 the non-robust teacher is
    so confidently wrong on adversarial inputs that the first updates' KL gradients are 100-500× their
    later size and wreck the student (measured: ‖g‖ ≈ 520 → NaN at lr 0.01); ramping ε up — the
    curriculum of Cai et al. 2018 / IBP training — lets robustness grow from the teacher smoothly."""
    if warmup <= 0:
        return 1.0
    return min(1.0, (step + 1) / max(warmup * total, 1.0))


def init_student(teacher: nn.Module) -> nn.Module:
    """Algorithm 1 line 2: θ_S ← θ_T (a deep copy; the teacher stays untouched)."""
    student = copy.deepcopy(teacher)
    for p in student.parameters():
        p.requires_grad_(True)
    return student


def _jsonable(d: dict) -> dict:
    """Normalise a config dict to what survives a weights_only checkpoint round trip (no tuples)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out[k] = _jsonable(v)
        elif isinstance(v, tuple):
            out[k] = list(v)
        elif isinstance(v, float) and math.isinf(v):
            out[k] = str(v)
        else:
            out[k] = v
    return out
