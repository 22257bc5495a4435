"""The early inference-time defences from the lecture, each an ``nn.Module`` taking [0, 1] images.

They are here to be *broken*: each was claimed robust against attacks that did not adapt to it, and
:mod:`shieldkit.evaluation.breaks` reproduces both the naive attack and the adaptive one that defeats it.

============================  ==========================================  ===================================
defence                       paper                                       why naive gradient attacks fail
============================  ==========================================  ===================================
:class:`FeatureSqueezing`     Xu, Evans & Qi 2018 (NDSS), §3-4             detector; non-differentiable
                                                                           squeezers (He et al. 2017 break it)
:class:`ThermometerEncoded`   Buckman et al. 2018 (ICLR), Eq 1             discretisation: zero gradients
:func:`jpeg_defense` / …      Guo et al. 2018 (ICLR); Das et al. 2017     non-differentiable / random
:class:`KWTA` (swap)          Xiao, Zhong & Zheng 2020 (ICLR), Eq 1        discontinuous activation pattern
:class:`MixupInference`       Pang, Xu & Zhu 2020 (ICLR), Algorithm 1      randomised averaging
============================  ==========================================  ===================================

Gradient masking is modelled faithfully: a non-differentiable transform's forward output is attached
to the graph with a zero Jacobian (``t(x).detach() + 0·x``), so a naive attacker's autograd returns the
all-zero gradient it would get from rounding / JPEG / TV solvers — not an error. The adaptive attacker
uses :func:`shieldkit.attacks.adaptive.bpda` (identity or a smooth surrogate) and :class:`EOT`.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from shieldkit.data.base import validate_images
from shieldkit.defenses.base import BaseModelAlias, Defense, Transform, identity


def zero_jacobian(fn: Transform) -> Transform:
    """``x ↦ fn(x)`` whose input gradient is exactly zero — what autograd gives through a quantiser."""
    def wrapped(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out = fn(x)
        return out.detach() + 0.0 * x.sum()  # shapes may differ (thermometer): a scalar zero link
    return wrapped


# ------------------------------------------------------------------------------------------ transforms
def bit_depth_reduce(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Xu et al. 2018 §4.1: quantise each pixel to 2^bits levels, round((2^b − 1)·x)/(2^b − 1)."""
    if not 1 <= bits <= 16:
        raise ValueError(f"bits must be in [1, 16], got {bits}")
    levels = 2 ** bits - 1
    return torch.round(x.clamp(0, 1) * levels) / levels


def median_filter(x: torch.Tensor, size: int = 2) -> torch.Tensor:
    """Xu et al. 2018 §4.2 local smoothing: per-channel median over a size×size window (SciPy/TF
    convention for even sizes: the window reaches one pixel further down/right), reflect padding."""
    if size < 1:
        raise ValueError("median window size must be ≥ 1")
    if size == 1:
        return x
    top = (size - 1) // 2
    pad = (top, size - 1 - top, top, size - 1 - top)
    patches = F.pad(x, pad, mode="reflect").unfold(2, size, 1).unfold(3, size, 1)
    flat = patches.contiguous().flatten(-2)
    # for even windows torch.median returns the lower of the two middle values (deterministic)
    return flat.median(dim=-1).values


def jpeg_compress(x: torch.Tensor, quality: int = 75) -> torch.Tensor:
    """JPEG round trip at ``quality`` (Das et al. 2017; Guo et al. 2018) through Pillow, per image."""
    import numpy as np
    from PIL import Image  # torchvision depends on Pillow

    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be in [1, 100], got {quality}")
    out = torch.empty_like(x)
    arr = (x.detach().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    for i in range(x.shape[0]):
        img = arr[i].permute(1, 2, 0).numpy()
        pil = Image.fromarray(img[..., 0] if img.shape[2] == 1 else img)
        buf = io.BytesIO()
        pil.save(buf, format="JPEG", quality=quality)
        dec = np.asarray(Image.open(io.BytesIO(buf.getvalue())), dtype=np.float32) / 255.0
        dec_t = torch.from_numpy(dec)
        out[i] = (dec_t.unsqueeze(0) if dec_t.ndim == 2 else dec_t.permute(2, 0, 1)).to(x.device, x.dtype)
    return out


def tv_minimize(x: torch.Tensor, keep_prob: float = 0.5, weight: float = 0.03, iterations: int = 40,
                lr: float = 0.1, generator: torch.Generator | None = None) -> torch.Tensor:
    """Total-variation minimisation (Guo et al. 2018 §3.2, Eq 3; Rudin et al. 1992): drop pixels at random
    (Bernoulli mask X with P(keep) = ``keep_prob``), then reconstruct

        z* = argmin_z ‖X ⊙ (z − x)‖²₂ + λ_TV · TV(z)

    Guo et al. solve it with a special-purpose solver; we take ``iterations`` Adam steps from x (the
    objective is convex, and the number of steps is recorded), anisotropic ℓ1 TV, clipped to [0, 1].
    The mask makes the defence random: an attacker needs EOT as well as BPDA.
    """
    if not 0 < keep_prob <= 1:
        raise ValueError("keep_prob must be in (0, 1]")
    mask = (torch.rand(x.shape, generator=generator, device=x.device) < keep_prob).to(x.dtype)
    x = x.detach()
    z = x.clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    for _ in range(iterations):
        with torch.enable_grad():
            fid = (mask * (z - x)).pow(2).flatten(1).sum(1)
            tv = (z[..., 1:, :] - z[..., :-1, :]).abs().flatten(1).sum(1) + \
                 (z[..., :, 1:] - z[..., :, :-1]).abs().flatten(1).sum(1)
            loss = (fid + weight * tv).sum()
            opt.zero_grad()
            loss.backward()
        opt.step()
        with torch.no_grad():
            z.clamp_(0, 1)
    return z.detach()


class SeededTransform:
    """A random transform ``fn(x, generator)`` with its own seeded stream, advancing per call (so repeated
    passes differ) and restartable with :meth:`reseed` (so an evaluation is reproducible)."""

    def __init__(self, fn: Callable[[torch.Tensor, torch.Generator], torch.Tensor], seed: int = 0) -> None:
        self.fn = fn
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        mask_seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))
        return self.fn(x, torch.Generator(device=x.device).manual_seed(mask_seed))


class InputTransformDefense(Defense):
    """``base_model(t(x))`` for a preprocessing ``t`` that is non-differentiable (and possibly random).

    ``forward`` masks gradients as the real pipeline would (zero Jacobian through ``t``;
    ``mask_gradients=False`` lets them flow as ``t`` says, for a differentiable preprocess); the break is
    ``BPDAWrapper(defense.transform, defense.base_model, defense.bpda_surrogate())`` (+ ``EOT`` when
    ``randomised``). A random ``t`` that should be reproducible is a :class:`SeededTransform`.
    """

    model = BaseModelAlias()  # old name, read by evaluation.breaks and the bpda-pgd attack

    def __init__(self, model: nn.Module, transform: Transform, name: str, random: bool = False, *,
                 mask_gradients: bool = True) -> None:
        super().__init__(model)
        self.transform, self.name, self.randomised = transform, name, random
        self._masked = zero_jacobian(transform) if mask_gradients else transform

    @property
    def random(self) -> bool:
        """Old name of ``randomised`` (read by :mod:`shieldkit.evaluation.breaks`)."""
        return self.randomised

    def reseed(self, seed: int | None) -> None:
        if isinstance(self.transform, SeededTransform):
            self.transform.reseed(0 if seed is None else seed)

    def bpda_surrogate(self) -> Transform:
        return identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_model(self._masked(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The base model's penultimate features of the transformed input (latent attacks)."""
        return self.base_model.features(self._masked(x))


def jpeg_defense(model: nn.Module, quality: int = 75) -> InputTransformDefense:
    return InputTransformDefense(model, lambda x: jpeg_compress(x, quality), f"jpeg(q={quality})")


def bit_depth_defense(model: nn.Module, bits: int = 1) -> InputTransformDefense:
    return InputTransformDefense(model, lambda x: bit_depth_reduce(x, bits), f"bit_depth({bits})")


def tvm_defense(model: nn.Module, keep_prob: float = 0.5, weight: float = 0.03, iterations: int = 40,
                seed: int = 0) -> InputTransformDefense:
    """TVM with its own generator (seeded, advancing per call; ``reseed`` restarts it)."""
    t = SeededTransform(lambda x, g: tv_minimize(x, keep_prob, weight, iterations, generator=g), seed)
    return InputTransformDefense(model, t, f"tvm(p={keep_prob},λ={weight})", random=True)


# --------------------------------------------------------------------------------- feature squeezing
class FeatureSqueezing(Defense):
    """Xu, Evans & Qi 2018: a detector that compares the prediction on x with those on squeezed copies.

    score(x) = max_s ‖softmax(f(x)) − softmax(f(s(x)))‖₁ over squeezers s (bit depth, median filter;
    MNIST: 1-bit depth and 2×2 median, their Table 3 best joint detector). x is flagged adversarial when
    score > threshold, the threshold set for a 5 % false-positive rate on clean images (:meth:`calibrate`).
    ``forward`` returns the undefended logits f(x): the defence acts through :meth:`detect`; a point is
    defended if it is classified correctly *or* flagged (:meth:`defended`).
    """

    model = BaseModelAlias()  # old name, read by evaluation.breaks

    def __init__(self, model: nn.Module, bits: int = 1, median_size: int = 2, threshold: float | None = None
                 ) -> None:
        super().__init__(model)
        self.bits, self.median_size, self.threshold = bits, median_size, threshold

    def squeezers(self) -> list[Transform]:
        return [lambda x: bit_depth_reduce(x, self.bits), lambda x: median_filter(x, self.median_size)]

    @torch.no_grad()
    def score(self, x: torch.Tensor) -> torch.Tensor:
        p = F.softmax(self.base_model(x), dim=1)
        return torch.stack([(p - F.softmax(self.base_model(s(x)), dim=1)).abs().sum(1)
                            for s in self.squeezers()]).amax(0)

    def calibrate(self, x_clean: torch.Tensor, fpr: float = 0.05) -> float:
        """Set the threshold to the (1 − fpr) quantile of clean scores (Xu et al. §5.1)."""
        validate_images(x_clean)
        self.threshold = float(torch.quantile(self.score(x_clean), 1 - fpr))
        return self.threshold

    def detect(self, x: torch.Tensor) -> torch.Tensor:
        if self.threshold is None:
            raise RuntimeError("FeatureSqueezing has no threshold: call calibrate(x_clean) first")
        return self.score(x) > self.threshold

    @torch.no_grad()
    def defended(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per point: correct prediction or detection (the detector-aware robust accuracy)."""
        return (self.base_model(x).argmax(1) == y) | self.detect(x)


# ------------------------------------------------------------------------------ thermometer encoding
def thermometer_encode(x: torch.Tensor, levels: int = 16) -> torch.Tensor:
    """Buckman et al. 2018 Eq 1: τ(x)_k = 1[x > k/l], k = 1…l; (N, C, H, W) → (N, C·l, H, W) channel-major."""
    ks = torch.arange(1, levels + 1, device=x.device, dtype=x.dtype) / levels
    enc = (x.unsqueeze(2) > ks.view(1, 1, -1, 1, 1)).to(x.dtype)
    return enc.flatten(1, 2)


def soft_thermometer(x: torch.Tensor, levels: int = 16) -> torch.Tensor:
    """A differentiable surrogate of τ for BPDA (Athalye et al. 2018 §5.2 use the same kind of ramp):
    τ̂(x)_k = clip(l·x − k + 1, 0, 1) — equals τ(x)_k away from the thresholds, linear in between."""
    ks = torch.arange(1, levels + 1, device=x.device, dtype=x.dtype)
    return (levels * x.unsqueeze(2) - ks.view(1, 1, -1, 1, 1) + 1).clamp(0, 1).flatten(1, 2)


class ThermometerEncoded(Defense):
    """``model(τ(x))`` where ``model`` takes C·levels input channels (train it on encoded inputs); the BPDA
    surrogate is the soft thermometer τ̂."""

    model = BaseModelAlias()  # old name, read by evaluation.breaks

    def __init__(self, model: nn.Module, levels: int = 16) -> None:
        super().__init__(model)
        self.levels = levels
        self._masked = zero_jacobian(self.encode)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return thermometer_encode(x, self.levels)

    def surrogate(self, x: torch.Tensor) -> torch.Tensor:
        return soft_thermometer(x, self.levels)

    def bpda_surrogate(self) -> Transform:
        return self.surrogate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_model(self._masked(x))


# --------------------------------------------------------------------------------------------- k-WTA
class KWTA(nn.Module):
    """k-Winners-Take-All (Xiao et al. 2020 Eq 1): per sample keep the k = ⌈γ·d⌉ largest activations of the
    layer (over all C·H·W units) and zero the rest. Replaces ReLU; γ = ``ratio`` (paper: 0.1 ~ 0.2)."""

    def __init__(self, ratio: float = 0.2) -> None:
        super().__init__()
        if not 0 < ratio <= 1:
            raise ValueError("k-WTA ratio must be in (0, 1]")
        self.ratio = ratio

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        k = max(1, int(round(self.ratio * flat.shape[1])))
        thresh = flat.topk(k, dim=1).values[:, -1:]
        return (flat * (flat >= thresh).to(flat.dtype)).view_as(x)


def swap_relu_for_kwta(model: nn.Module, ratio: float = 0.2) -> int:
    """Replace every ``nn.ReLU`` in ``model`` by :class:`KWTA` (in place); returns how many were swapped."""
    count = 0
    for name, child in list(model.named_children()):
        if isinstance(child, nn.ReLU):
            setattr(model, name, KWTA(ratio))
            count += 1
        else:
            count += swap_relu_for_kwta(child, ratio)
    return count


# ------------------------------------------------------------------------------------ Mixup Inference
class MixupInference(Defense):
    """Pang, Xu & Zhu 2020, Algorithm 1: F_MI(x) = (1/N) Σ_k F(λx + (1 − λ)x_{s,k}), F = softmax(f).

    x_s are drawn from a pool of clean images (``pool_x``, ``pool_y``): "pl" (predicted label, MI-PL) draws
    them from the class f predicts for x, "ol" (other labels, MI-OL) from any other class. Returns
    log F_MI(x) so downstream code sees logits whose softmax is the MI average. Random by design: attack
    it through EOT (Tramèr et al. 2020 App. K).
    """

    randomised = True
    model = BaseModelAlias()  # old name, read by evaluation.breaks

    def __init__(self, model: nn.Module, pool_x: torch.Tensor, pool_y: torch.Tensor, lam: float = 0.6,
                 samples: int = 20, mode: str = "ol", seed: int = 0) -> None:
        super().__init__(model)
        if mode not in ("pl", "ol"):
            raise ValueError("mixup inference mode must be 'pl' or 'ol'")
        if not 0 < lam <= 1 or samples < 1:
            raise ValueError("need 0 < lam ≤ 1 and samples ≥ 1")
        validate_images(pool_x)
        self.lam, self.samples, self.mode = lam, samples, mode
        self.register_buffer("pool_x", pool_x)
        self.register_buffer("pool_y", pool_y)
        self.reseed(seed)

    def reseed(self, seed: int | None) -> None:
        self.generator = torch.Generator().manual_seed(0 if seed is None else seed)

    def _draw(self, pred: torch.Tensor) -> torch.Tensor:
        """One pool image per input: of the predicted class (PL) or of another class (OL)."""
        pool_y = self.pool_y.to(pred.device)
        ok = pool_y.view(1, -1) == pred.view(-1, 1)
        if self.mode == "ol":
            ok = ~ok
        weights = ok.float().cpu()
        weights[weights.sum(1) == 0] = 1.0  # class absent from the pool: draw uniformly
        idx = torch.multinomial(weights, 1, generator=self.generator).squeeze(1)
        return self.pool_x[idx.to(self.pool_x.device)].to(pred.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            pred = self.base_model(x).argmax(1)
        probs = torch.zeros(x.shape[0], 0, device=x.device)
        for _ in range(self.samples):
            xs = self._draw(pred).to(x.dtype)
            p = F.softmax(self.base_model(self.lam * x + (1 - self.lam) * xs), dim=1)
            probs = p if probs.shape[1] == 0 else probs + p
        return torch.log(probs / self.samples + 1e-12)
