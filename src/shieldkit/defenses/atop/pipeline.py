"""The AToP-defended classifier as one ``nn.Module``: transform → purifier → classifier (Eq 1, 6-8).

``PurificationPipeline(classifier, purifier, transform)(x)`` maps images in [0, 1] to logits:

    x_t = t(x; θ_t),   x̂ = g(x_t; θ_g),   y = F(x̂)                                   (Eq 1)

with RT3's aggregation ``x̂ = Σᵢ (1 − mᵢ) ⊙ g(mᵢ ⊙ (x + η))`` (Eq 4, 7). Every stage works in [0, 1]
(the reference code feeds a [−1, 1] generator output to a [0, 1] classifier during fine-tuning).

The pipeline is *randomised* (fresh masks and noise on every forward pass) and differentiable in
``x`` end to end, so white-box attacks must use EOT over the transforms
(:class:`shieldkit.attacks.adaptive.EOT`) — a single-sample gradient underestimates the attack.
Randomness is drawn from ``self.generator`` when a seed is given (reproducible; it advances on every
call, so repeated passes still differ), otherwise from the global torch RNG.

Checkpoints (:func:`save_purifier` / :func:`load_purifier`) hold the purifier (and discriminator)
weights with the purifier and transform configurations, written atomically and read with
``weights_only=True``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from shieldkit.defenses.atop.purifiers import PurifierConfig, build_purifier
from shieldkit.defenses.atop.transforms import RandomTransform, TransformConfig
from shieldkit.defenses.base import BaseModelAlias, Defense, Transform, identity
from shieldkit.utils.io import atomic_torch_save, safe_torch_load
from shieldkit.utils.seed import make_generator

_RANGE_TOL = 1e-5


@dataclass
class Purified:
    x_hat: torch.Tensor            # the purified image fed to the classifier
    stages: list[torch.Tensor]     # x̂ per generator stage (coarse, refine) — for L_df's ℓ1 term
    hole: torch.Tensor             # (n, 1, H, W): 1 where the purifier's output replaced pixels


class PurificationPipeline(Defense):
    """transform → purifier → classifier; inputs in [0, 1], outputs logits (see module docstring).

    ``base_model`` is the frozen classifier; randomised (masks and noise); the BPDA surrogate of
    :meth:`purify` is the identity (the BPDA+EOT evaluation of Lin et al.)."""

    randomised = True
    classifier = BaseModelAlias()  # old name, read by evaluation.atop

    def __init__(self, classifier: nn.Module, purifier: nn.Module, transform: RandomTransform | TransformConfig,
                 seed: int | None = None, check_range: bool = True) -> None:
        super().__init__(classifier)
        self.purifier = purifier
        self.transform = transform if isinstance(transform, RandomTransform) else RandomTransform(transform)
        self.generator = make_generator(seed) if seed is not None else None
        self.check_range = check_range

    def reseed(self, seed: int | None) -> None:
        """Restart (or drop, with ``None``) the pipeline's own random stream."""
        self.generator = make_generator(seed) if seed is not None else None

    def bpda_surrogate(self) -> Transform:
        return identity

    def _validate(self, x: torch.Tensor) -> None:
        if x.ndim != 4:
            raise ValueError(f"expected images N×C×H×W, got shape {tuple(x.shape)}")
        if self.check_range:
            lo, hi = float(x.detach().min()), float(x.detach().max())
            if lo < -_RANGE_TOL or hi > 1 + _RANGE_TOL:
                raise ValueError(f"pipeline inputs must lie in [0, 1], got range [{lo:.3f}, {hi:.3f}] "
                                 f"(is the data normalised or in [−1, 1]?)")

    def purify(self, x: torch.Tensor, return_details: bool = False) -> torch.Tensor | Purified:
        """x̂ = g(t(x)) (Eq 2, 3) or Σᵢ (1 − mᵢ) ⊙ g(mᵢ ⊙ (x + η)) for RT3 (Eq 4)."""
        self._validate(x)
        tr = self.transform(x, generator=self.generator)
        per_mask = [self.purifier(m * tr.base, m, return_stages=True) for m in tr.masks]
        n_stages = len(per_mask[0])
        if tr.aggregate:
            stages = [sum((1.0 - m) * outs[s] for m, outs in zip(tr.masks, per_mask, strict=True))
                      for s in range(n_stages)]
            hole = sum(1.0 - m for m in tr.masks).clamp(max=1.0)
        else:
            stages = list(per_mask[0])
            hole = 1.0 - tr.masks[0]
        if not return_details:
            return stages[-1]
        return Purified(stages[-1], stages, hole)  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_model(self.purify(x))  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------- checkpoints
def save_purifier(path: str | Path, purifier: nn.Module, purifier_cfg: PurifierConfig,
                  transform_cfg: TransformConfig, discriminator: nn.Module | None = None,
                  meta: dict | None = None) -> None:
    """Atomically write the purifier (+ optional D) with its configs to ``path`` (a ``.pt`` state file)."""
    obj = {"purifier": purifier.state_dict(), "purifier_cfg": purifier_cfg.to_dict(),
           "transform_cfg": transform_cfg.to_dict(), "meta": dict(meta or {})}
    if discriminator is not None:
        obj["discriminator"] = discriminator.state_dict()
    atomic_torch_save(path, obj)


def load_purifier(path: str | Path, device: str | torch.device = "cpu"
                  ) -> tuple[nn.Module, PurifierConfig, TransformConfig, dict]:
    """Inverse of :func:`save_purifier`: ``(purifier, purifier_cfg, transform_cfg, checkpoint)``."""
    ck = safe_torch_load(path, map_location=device)
    if not isinstance(ck, dict) or "purifier" not in ck or "purifier_cfg" not in ck:
        raise ValueError(f"{path}: not an AToP purifier checkpoint (expected keys purifier, purifier_cfg)")
    pcfg = PurifierConfig(**ck["purifier_cfg"])
    tcfg = TransformConfig(**ck["transform_cfg"])
    net = build_purifier(pcfg).to(device)
    net.load_state_dict(ck["purifier"])
    return net.eval(), pcfg, tcfg, ck


def load_pipeline(path: str | Path, classifier: nn.Module, device: str | torch.device = "cpu",
                  seed: int | None = None) -> PurificationPipeline:
    net, _, tcfg, _ = load_purifier(path, device)
    return PurificationPipeline(classifier.to(device).eval(), net, tcfg, seed=seed).eval()
