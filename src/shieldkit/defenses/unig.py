"""UniG — Unifying Gradients (Wu, Chen, Fang & Huang, ACM TIST 2023) against score-based query attacks.

A Hadamard module ``A`` (one row per sample, ``b × d``) sits between the penultimate features ``f`` and
the final linear layer ``L`` of a frozen classifier: ``logits = L(A ⊙ f)``. For every incoming batch,
``A`` is re-drawn from N(1, 0.5) and optimised for ``p`` steps (Algorithm 1) on the gradient-unification
loss of Eq. 4,

    l(A, x) = Σ_{j=1}^{b-1} ‖ĝ_j − ĝ_{j+1}‖₂ ,   ĝ_i = ∂ CE(L(A_i ⊙ f_i), ŷ_i) / ∂ f_i = A_i ⊙ g_i ,

with pseudo-labels ŷ = argmax L(f) (test data are unlabelled) and ĝ min-max normalised over the batch
with the min/max frozen at the first step (reference implementation). After each step A is clipped to
``[1 − δ, 1 + δ]`` (Algorithm 1 line 7). Outputs on clean data move only slightly, but the feature
gradients that an attacker mines from consecutive queries point in a shared, universal-perturbation-like
direction, which is a weak attack direction (§3.2).

Choices and deviations (each deliberate):

* **Norms.** Eq. 4 writes a squared difference; the reference code sums unsquared ℓ2 norms
  ``Σ_j ‖ĝ_j − ĝ_{j+1}‖₂``. We follow the reference (the brief asks for it). Eq. 4's constraint
  ``‖f̂ − f‖ ≤ δ`` is enforced, as in Algorithm 1, by the element-wise clip ``|A − 1| ≤ δ``.
* **Optimiser state.** The reference builds its SGD (momentum 0.9, weight decay 5e-4) once, so the
  momentum buffer of one query batch leaks into the next. We start a fresh optimiser for every batch:
  (i) an answer must not depend on what *other* callers asked before (that carry-over is a side channel
  between users and makes outputs order-dependent and irreproducible); (ii) batches of different sizes
  would give buffers of mismatching shape; (iii) with the paper's p = 1 a fresh SGD step equals plain
  gradient descent ``A ← A − α(∇l + λA)`` exactly as written in Algorithm 1 line 6. Momentum and weight
  decay still act within the ``p`` steps of one batch.
* **Randomness.** ``A`` is drawn from an explicit generator seeded at construction, so a run of the
  defence is reproducible; it advances on every call, so repeated queries still get fresh draws.
* **Single sample (§4.6).** With fewer than ``min_batch`` inputs the loss has no pairs. Reference images
  (the paper uses training images; shieldkit accepts DataFreeShield *synthetic* samples so deployment
  stays data-free) are appended, A is optimised over the joint batch, and only the caller's rows are
  returned. Without references, a single sample gets a zero loss, i.e. only the clipped random A.

MNIST defaults: δ = 0.1, α = 10, p = 1. Chosen on the MNIST-5k *train* split (``benchmarks/unig_sqa.py
--stage tune``), never on reported test points. The mnist_cnn head sees only d = 64 features (CIFAR's
PreResNet18: 512), so each feature carries more of the logit: the paper's CIFAR δ = 0.5 moved the
logits by ~4.3 (ℓ2) — three times RND's ~1.5 — and gave *less* Square robustness than δ = 0.1, which
keeps clean accuracy within 0.1 pt and the logit difference (~1.0) below RND's. α = 10 (paper's CIFAR
value) minimised the unification loss best after one step (α = 100 overshoots into the clip); p = 1 as in
the paper (one step already cuts the loss ~6×, Fig. 2a). See ``benchmarks/results/unig_sqa.md``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from shieldkit.defenses.base import Defense
from shieldkit.models.protocol import FeatureModel
from shieldkit.utils.seed import derive_seed

FeaturesFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class UniGConfig:
    """Hyperparameters of Algorithm 1 (names as in the paper)."""

    delta: float = 0.1  # δ: clip |A − 1| ≤ δ (paper: 0.5 CIFAR-10, 0.1 ImageNet; 0.1 chosen for MNIST)
    lr: float = 10.0  # α (paper: 10 CIFAR-10, 1 ImageNet)
    steps: int = 1  # p (paper: 1)
    init_mean: float = 1.0  # A ~ N(1, 0.5)
    init_std: float = 0.5
    momentum: float = 0.9  # reference SGD
    weight_decay: float = 5e-4  # reference SGD
    min_batch: int = 2  # below this, reference samples are appended (§4.6)

    def __post_init__(self) -> None:
        if self.delta < 0:
            raise ValueError(f"delta must be >= 0, got {self.delta}")
        if self.lr < 0 or self.steps < 0:
            raise ValueError("lr and steps must be non-negative")
        if self.init_std < 0:
            raise ValueError("init_std must be >= 0")
        if self.min_batch < 1:
            raise ValueError("min_batch must be >= 1")


def feature_gradients(A: torch.Tensor, f: torch.Tensor, head: nn.Module, labels: torch.Tensor
                      ) -> torch.Tensor:
    """ĝ = ∂ CE(head(A ⊙ f), labels) / ∂ f  (= A ⊙ g with g the gradient at the modulated features),
    built with ``create_graph=True`` so that the unification loss can be differentiated w.r.t. A.

    The CE is summed, so each row is that sample's own gradient, independent of the batch size."""
    f = f.detach().requires_grad_(True)
    ce = F.cross_entropy(head(A * f), labels, reduction="sum")
    (g,) = torch.autograd.grad(ce, f, create_graph=True)
    return g


def unification_loss(grads: torch.Tensor, minmax: tuple[torch.Tensor, torch.Tensor] | None = None
                     ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Eq. 4 with the reference's normalisation: ``Σ_j ‖ĝ_j − ĝ_{j+1}‖₂`` over consecutive rows of the
    min-max normalised gradients ``(ĝ − min) / (max − min)`` (scalar min/max over the whole batch).

    ``minmax`` freezes the normalisation (the reference computes it at the first step only); it is
    returned, detached, so later steps can reuse it."""
    if minmax is None:
        minmax = (grads.min().detach(), grads.max().detach())
    lo, hi = minmax
    g = (grads - lo) / (hi - lo).clamp_min(1e-12)
    if g.shape[0] < 2:
        return g.sum() * 0.0, minmax
    return (g[:-1] - g[1:]).norm(p=2, dim=1).sum(), minmax


class UniG(Defense):
    """Plug-in UniG defence around a frozen classifier (Algorithm 1). Randomised (the draw of A);
    differentiable, so no BPDA surrogate.

    Args:
        model: the classifier to protect (kept frozen; put it in eval mode for deployment).
        config: :class:`UniGConfig`.
        features_fn / head: how to reach the penultimate features and the final linear layer. Found
            automatically for any model exposing ``.features(x)`` and ``.head`` (every shieldkit
            :class:`~shieldkit.models.NormalizedClassifier`); pass both explicitly for other models.
        references: images (N×C×H×W in the model's input space) used in single-sample mode; may be
            DataFreeShield synthetic samples. At most ``n_references`` are used.
        n_references: how many reference images to append (default 5, as the reference code).
        seed: seeds the generator of the random initialisation of A.
    """

    randomised = True

    def __init__(self, model: nn.Module, config: UniGConfig | None = None, *,
                 features_fn: FeaturesFn | None = None, head: nn.Module | None = None,
                 references: torch.Tensor | None = None, n_references: int = 5, seed: int = 0) -> None:
        super().__init__(model)
        self.config = config or UniGConfig()
        if features_fn is None and head is None:
            if not (isinstance(model, FeatureModel) and isinstance(model.head, nn.Module)):
                raise TypeError(
                    f"UniG cannot locate the penultimate features and final linear layer of "
                    f"{type(model).__name__}: it has no `.features(x)` method and `.head` module. Pass "
                    f"`features_fn=` (x -> (N, d) features) and `head=` (the last nn.Linear) explicitly.")
            features_fn, head = model.features, model.head
        elif features_fn is None or head is None:
            raise TypeError("pass both `features_fn` and `head`, or neither (automatic for shieldkit models)")
        self._features_fn = features_fn
        self.head = head
        if n_references < 0:
            raise ValueError("n_references must be >= 0")
        self.n_references = n_references
        if references is not None and references.ndim < 2:
            raise ValueError(f"references must be a batch of inputs, got shape {tuple(references.shape)}")
        self.register_buffer("references", None if references is None else
                             references[:n_references].detach().clone(), persistent=False)
        self.seed = seed
        self._generators: dict[str, torch.Generator] = {}
        self._warned_single = False
        self.last_loss: list[float] = []  # loss before each step and after the last (diagnostics / Fig. 2a)

    # -- randomness ---------------------------------------------------------------------------------
    def _generator(self, device: torch.device) -> torch.Generator:
        key = str(device)
        if key not in self._generators:
            g = torch.Generator(device=device)
            g.manual_seed(derive_seed(self.seed, "unig", key))
            self._generators[key] = g
        return self._generators[key]

    def reseed(self, seed: int | None) -> None:
        """Restart the initialisation stream (reproducible evaluations)."""
        self.seed = 0 if seed is None else seed
        self._generators.clear()

    def set_references(self, references: torch.Tensor | None) -> None:
        self.references = None if references is None else references[:self.n_references].detach().clone()

    # -- Algorithm 1 --------------------------------------------------------------------------------
    def init_modulation(self, n: int, d: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        cfg = self.config
        z = torch.randn((n, d), generator=self._generator(device), device=device, dtype=dtype)
        return cfg.init_mean + cfg.init_std * z

    def optimise_modulation(self, f: torch.Tensor, A0: torch.Tensor | None = None) -> torch.Tensor:
        """Lines 1-8 of Algorithm 1 on features ``f`` (N, d): returns the optimised, clipped A (detached)."""
        cfg = self.config
        f = f.detach()
        with torch.enable_grad():
            # pseudo-labels: the undefended model's prediction (Algorithm 1 line 3, y = L(f))
            labels = self.head(f).argmax(1).detach()
            A = (self.init_modulation(*f.shape, f.device, f.dtype) if A0 is None else A0.detach().clone())
            buf: torch.Tensor | None = None
            minmax = None
            self.last_loss = []
            for _ in range(cfg.steps):
                A.requires_grad_(True)
                loss, minmax = unification_loss(feature_gradients(A, f, self.head, labels), minmax)
                (grad,) = torch.autograd.grad(loss, A)
                self.last_loss.append(float(loss.detach()))
                with torch.no_grad():
                    # torch.optim.SGD(momentum, weight_decay, dampening=0) written out: fresh per batch
                    d_p = grad + cfg.weight_decay * A
                    buf = d_p if buf is None else cfg.momentum * buf + d_p
                    A = A.detach() - cfg.lr * buf
                    A = A.clamp(1.0 - cfg.delta, 1.0 + cfg.delta)  # Algorithm 1 line 7
            if cfg.steps == 0:
                A = A.clamp(1.0 - cfg.delta, 1.0 + cfg.delta)
            if self.last_loss:
                final, _ = unification_loss(feature_gradients(A, f, self.head, labels), minmax)
                self.last_loss.append(float(final.detach()))
        return A.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``L(A ⊙ f(x))`` with A optimised for this batch. Safe under ``torch.no_grad()`` and
        ``torch.inference_mode()`` (attackers and serving code call models that way)."""
        if torch.is_inference_mode_enabled():
            # inference tensors cannot enter autograd: step out of inference mode on a normal copy
            with torch.inference_mode(False), torch.no_grad():
                return self._forward(x.clone())
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        refs = None
        if n < self.config.min_batch:
            if self.references is not None and len(self.references):
                refs = self.references.to(device=x.device, dtype=x.dtype)
            elif not self._warned_single:
                warnings.warn("UniG got a batch smaller than min_batch and has no reference samples: the "
                              "unification loss has no pairs, so A stays a clipped random draw. Pass "
                              "`references=` (e.g. DataFreeShield synthetic images) for single-sample mode.",
                              stacklevel=2)
                self._warned_single = True
        inputs = x if refs is None else torch.cat([x, refs], 0)
        f = self._features_fn(inputs)
        A = self.optimise_modulation(f)
        return self.head(A[:n] * f[:n])

    def parameter_overhead(self, batch_size: int) -> int:
        """Transient parameters UniG adds for one batch (b × d; Table 7's 'Parameter')."""
        return batch_size * int(self.head.in_features)
