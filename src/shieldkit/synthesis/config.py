"""What a synthesis run is asked to do: :class:`SynthesisConfig` (with :class:`FastConfig` for the generator
path) and the per-batch draws every synthesis method shares — the DSS coefficients (Eq 8), the label scheme
and the jitter. The methods themselves live in :mod:`~shieldkit.synthesis.dss` (image-space optimisation,
Algorithm 1) and :mod:`~shieldkit.synthesis.fast` (a meta-learned generator, FastDFKD-style); the run driver in
:mod:`~shieldkit.synthesis.engine` picks one by ``method`` from its registry.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field

import torch

from shieldkit.errors import InputError
from shieldkit.utils.seed import derive_seed, make_generator
from shieldkit.utils.validate import (
    check_choice,
    check_fraction,
    check_nonnegative_float,
    check_nonnegative_int,
    check_positive_float,
    check_positive_int,
)

TERMS = ("class", "feature", "prior")
METHODS = ("dss", "fast")


@dataclass
class FastConfig:
    """The generator path (``method="fast"``, :mod:`shieldkit.synthesis.fast`). Defaults are the settings measured
    in ``benchmarks/results/speed.json`` ``synthesis`` (issue 17). Found on the prototype: a cold generator at lr
    5e-3 / batch 200 stayed at CE 5.4 / BN 21 over 18 batches; lr 0.02 for the generator and 0.1 for z at batch
    50 learns (CE ≈ 0.25, BN ≈ 3-4 by batch 50). Warm-up 20 / 100 / 300 batches: 75.5 / 64.5 / 71.0 % downstream
    AutoAttack (n = 200, intervals ± 6-7 points: no measurable gain from a longer warm-up) for 37 / 87 / 214 s of
    synthesis, so 20 is the default."""

    nz: int = 256  # latent size (FastDFKD's CIFAR setting)
    ngf: int = 16  # generator width; a step costs 1.36× an image step at 16, 2.36× at 32 (batch 200, mnist_cnn)
    steps: int = 5  # inner steps per batch (FastDFKD's k)
    lr_generator: float = 0.02  # inner Adam lr of the generator copy; the meta Adam uses lr_generator × steps
    lr_z: float = 0.1  # inner Adam lr of the per-batch latent codes
    bn_momentum: float = 0.9  # blend of the current batch's BN statistics with earlier batches' (FastDFKD bn_mmt)
    warmup_batches: int = 20  # meta-learning batches made and discarded before the first kept shard
    # Samples per generator batch (warm-up batches and shards alike). The generator learns at 50 and not at 200
    # with the prototype's first settings (above); SynthesisConfig.batch_size stays the DSS batch.
    batch_size: int = 50

    def __post_init__(self) -> None:
        self.nz = check_positive_int(self.nz, "fast.nz")
        self.ngf = check_positive_int(self.ngf, "fast.ngf")
        self.steps = check_positive_int(self.steps, "fast.steps")
        self.lr_generator = check_positive_float(self.lr_generator, "fast.lr_generator")
        self.lr_z = check_positive_float(self.lr_z, "fast.lr_z")
        self.bn_momentum = check_fraction(self.bn_momentum, "fast.bn_momentum", closed=True)
        self.warmup_batches = check_nonnegative_int(self.warmup_batches, "fast.warmup_batches")
        self.batch_size = check_positive_int(self.batch_size, "fast.batch_size")


@dataclass
class SynthesisConfig:
    n_samples: int = 10_000
    batch_size: int = 200
    iterations: int = 2000  # per-batch image iterations of method "dss" (the fast path uses fast.steps)
    lr: float = 0.1
    coefficients: str = "dss"  # "dss" | "fixed"
    dss_terms: tuple[str, ...] = ("class", "feature")
    weights: tuple[float, float, float] = (1.0, 1.0, 2.5e-5)  # base weights for (class, feature, prior)
    jitter: int = 2
    labels: str = "balanced"  # "balanced" | "cycle" | "random"
    bn_norm: str = "unsquared"  # see synthesis.losses
    # Project the image onto the valid pixel range [0, 1] after every Adam step (issue 16). Measured at ε = 0.2
    # (benchmarks/results/recipe.md, 1,200 samples × 200 iterations, 300 updates): with clamping and random
    # labels the student reaches 86.6 % clean / 19.0 % PGD-20 on the mnist_cnn teacher (64.4 / 14.0 without)
    # and 87.8 / 28.2 on mnist_cnn5 (57.2 / 15.2 without), the training unchanged. Off by default until the demo's
    # ε = 0.1 budget has been re-measured with it on. (The fast path's sigmoid generator is always in range.)
    clamp: bool = False
    method: str = "dss"  # "dss": optimise each batch's images (Algorithm 1) | "fast": meta-learned generator
    fast: FastConfig = field(default_factory=FastConfig)
    seed: int = 0
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.dss_terms = tuple(self.dss_terms)
        self.weights = tuple(float(w) for w in self.weights)  # type: ignore[assignment]
        check_choice(self.coefficients, ("dss", "fixed"), "coefficients")
        check_choice(self.labels, ("balanced", "cycle", "random"), "labels")
        check_choice(self.method, METHODS, "--synthesis")
        if isinstance(self.fast, dict):  # from YAML or a manifest
            known = {f.name for f in dataclasses.fields(FastConfig)}
            if bad := sorted(set(self.fast) - known):
                raise InputError(f"synthesis.fast: unknown setting(s) {bad}", hint=f"valid: {sorted(known)}")
            self.fast = FastConfig(**self.fast)
        if bad := set(self.dss_terms) - set(TERMS):
            raise InputError(f"dss_terms {sorted(bad)}: unknown DSS terms", hint=f"choose from {TERMS}")
        self.n_samples = check_positive_int(self.n_samples, "n_samples")
        self.batch_size = check_positive_int(self.batch_size, "batch_size")
        self.iterations = check_nonnegative_int(self.iterations, "iterations")
        self.lr = check_positive_float(self.lr, "lr")
        self.jitter = check_nonnegative_int(self.jitter, "jitter")
        for i, w in enumerate(self.weights):
            check_nonnegative_float(w, f"weights[{i}]")

    @property
    def shard_batch(self) -> int:
        """Samples per shard: one batch of the method (``fast.batch_size`` for the generator path)."""
        return self.fast.batch_size if self.method == "fast" else self.batch_size

    @property
    def num_shards(self) -> int:
        return -(-self.n_samples // self.shard_batch)

    @property
    def steps_per_sample(self) -> int:
        """Teacher forward+backward passes each kept sample took (the sample-iterations of a throughput)."""
        return self.fast.steps if self.method == "fast" else self.iterations

    def shard_size(self, i: int) -> int:
        return min(self.shard_batch, self.n_samples - i * self.shard_batch)

    def to_dict(self) -> dict:
        """Plain form for manifests and fingerprints. The ``fast`` block is left out for ``method="dss"``, whose
        output it cannot change, so editing it never invalidates a DSS run."""
        d = asdict(self)
        d["dss_terms"] = list(self.dss_terms)
        d["weights"] = list(self.weights)
        if self.method != "fast":
            d.pop("fast")
        return d


def draw_alphas(cfg: SynthesisConfig, g: torch.Generator) -> torch.Tensor:
    """The per-batch coefficients α (Eq 8): U(0,1) for DSS terms, 1 otherwise (times base weights)."""
    u = torch.rand(len(TERMS), generator=g)
    if cfg.coefficients == "fixed":
        return torch.ones(len(TERMS))
    return torch.tensor([float(u[i]) if t in cfg.dss_terms else 1.0 for i, t in enumerate(TERMS)])


def assign_labels(cfg: SynthesisConfig, shard: int, size: int, num_classes: int, g: torch.Generator) -> torch.Tensor:
    if cfg.labels == "cycle":
        return torch.full((size,), shard % num_classes, dtype=torch.long)
    if cfg.labels == "random":
        return torch.randint(0, num_classes, (size,), generator=g)
    base = torch.arange(size) % num_classes
    return base[torch.randperm(size, generator=g)]


def batch_draws(cfg: SynthesisConfig, stream: str, i: int, size: int,
                num_classes: int) -> tuple[torch.Generator, torch.Tensor, torch.Tensor]:
    """Batch ``i`` of ``stream`` ("shard", or the fast path's "fast-warmup"): its generator — seeded from
    ``derive_seed(seed, stream, i)`` alone, so any process or a resumed run makes the same batch — and the α's and
    labels drawn from it first."""
    g = make_generator(derive_seed(cfg.seed, stream, i))
    alphas = draw_alphas(cfg, g)
    return g, alphas, assign_labels(cfg, i, size, num_classes, g)


def roll_jitter(x: torch.Tensor, jitter: int, g: torch.Generator) -> torch.Tensor:
    """The reference's jitter: one random ``torch.roll`` of up to ±``jitter`` pixels per axis (no flips)."""
    if jitter <= 0:
        return x
    dx, dy = (torch.randint(-jitter, jitter + 1, (2,), generator=g)).tolist()
    return torch.roll(x, shifts=(dx, dy), dims=(2, 3))
