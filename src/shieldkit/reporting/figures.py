"""DataFreeShield figures: synthetic sample grids, loss surfaces (Fig 4/6/7) and feature PCA (Fig 8).

* :func:`sample_grid` — one row per class of synthetic (or real) images, so a user can eyeball what the
  teacher "dreams" for each class (DataFreeShield Fig 10-12 style).
* :func:`loss_surface` / :func:`plot_loss_surfaces` — the loss landscape of a trained student around its
  weights, along two random directions that are *filter-normalised* (Li et al. 2018, "Visualizing the
  Loss Landscape of Neural Nets", §4): each random direction is rescaled filter by filter to the norm of
  the corresponding filter of the weights, which removes the scale invariance of ReLU networks so flatness
  is comparable between two models. DataFreeShield Fig 4/6/7 compare students trained with and without
  GradRefine this way.
* :func:`plot_feature_pca` — PCA (fitted on the real features) of the teacher's penultimate features of real
  vs synthetic samples (Fig 8: fixed coefficients vs DSS, high vs low ``L_class``).

Matplotlib runs with the non-interactive ``Agg`` backend: figures are written to files, never shown.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from shieldkit.data.base import validate_images  # noqa: E402

__all__ = [
    "filter_normalized_direction",
    "loss_surface",
    "plot_feature_pca",
    "plot_loss_surfaces",
    "sample_grid",
]


def sample_grid(
    images: torch.Tensor, labels: torch.Tensor, classes: list[str], path: str | Path, per_class: int = 8
) -> Path:
    """Write a PNG grid with one row per class and up to ``per_class`` images of that class per row.

    Images are ``N×C×H×W`` in [0, 1] (1 or 3 channels). A class with fewer images than ``per_class``
    leaves the rest of its row blank (so a class the synthesiser never produced is visible as an empty
    row rather than silently missing). Returns the written path.
    """
    validate_images(images, what="sample_grid images")
    if images.shape[1] not in (1, 3):
        raise ValueError(f"sample_grid: expected 1 or 3 channels, got {images.shape[1]}")
    labels = torch.as_tensor(labels).long().cpu()
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"sample_grid: need one label per image, got {tuple(labels.shape)} labels for "
            f"{images.shape[0]} images"
        )
    if not classes:
        raise ValueError("sample_grid: classes must be a non-empty list of names")
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= len(classes)):
        raise ValueError(f"sample_grid: labels outside [0, {len(classes) - 1}]")
    if per_class < 1:
        raise ValueError(f"sample_grid: per_class must be >= 1, got {per_class}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    imgs = images.detach().float().cpu().clamp(0, 1)
    n_cls = len(classes)
    cell = 0.9
    fig, axes = plt.subplots(n_cls, per_class, figsize=(per_class * cell + 1.2, n_cls * cell), squeeze=False)
    for c in range(n_cls):
        idx = torch.nonzero(labels == c).flatten()[:per_class]
        for j in range(per_class):
            ax = axes[c, j]
            ax.set_xticks([])
            ax.set_yticks([])
            for s in ax.spines.values():
                s.set_visible(False)
            if j < len(idx):
                im = imgs[int(idx[j])]
                if im.shape[0] == 1:
                    ax.imshow(im[0].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
                else:
                    ax.imshow(im.permute(1, 2, 0).numpy(), interpolation="nearest")
        axes[c, 0].set_ylabel(str(classes[c]), rotation=0, ha="right", va="center", fontsize=8)
    fig.subplots_adjust(
        left=1.0 / (per_class * cell + 1.2), right=0.99, top=0.99, bottom=0.01, wspace=0.05, hspace=0.05
    )
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path



def _save_titled(fig, path: Path, title: str) -> Path:
    """Suptitle (if any), tight layout, save at 90 dpi and close: the tail every multi-panel figure shares."""
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path

# ---------------------------------------------------------------------------------------------- loss surface
def filter_normalized_direction(
    model: nn.Module, generator: torch.Generator | None = None, ignore_bias_bn: bool = True
) -> list[torch.Tensor]:
    """A random Gaussian direction with each filter rescaled to the norm of the model's filter.

    Li et al. 2018 §4: ``d_{i,j} ← d_{i,j} / ||d_{i,j}|| · ||θ_{i,j}||`` for filter ``j`` of layer ``i``
    (a "filter" is one output unit: a row of a Linear weight, an output channel of a conv). 1-D parameters
    (biases, BN affine) are zeroed as in the paper's default ("ignore biasbn"), since perturbing them would
    dominate the picture without telling anything about flatness.
    """
    direction = []
    for p in model.parameters():
        d = torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device)
        if p.dim() <= 1:
            d = torch.zeros_like(p) if ignore_bias_bn else d * p.detach().abs().max()
        else:
            d_flat = d.reshape(d.shape[0], -1)
            p_flat = p.detach().reshape(p.shape[0], -1)
            scale = p_flat.norm(dim=1, keepdim=True) / (d_flat.norm(dim=1, keepdim=True) + 1e-10)
            d = (d_flat * scale).reshape(p.shape)
        direction.append(d)
    return direction


@torch.no_grad()
def loss_surface(
    model: nn.Module, loss_fn: Callable[[nn.Module], float], steps: int = 11, span: float = 1.0, seed: int = 0
) -> dict:
    """Evaluate ``loss_fn(model')`` on a ``steps × steps`` grid ``θ + a·d1 + b·d2``, ``a, b ∈ [-span, span]``.

    ``loss_fn`` receives a perturbed *copy* of the model (in eval mode) and returns a float, e.g. the
    robust loss on a fixed batch of real test images. Directions are filter-normalised
    (:func:`filter_normalized_direction`) and seeded, so two models evaluated with the same seed share the
    random draw (up to their own filter norms), which is what a with/without-GradRefine comparison needs.
    Returns ``{"alphas": [...], "betas": [...], "loss": steps×steps list}``.
    """
    if steps < 2:
        raise ValueError(f"loss_surface: steps must be >= 2, got {steps}")
    g = torch.Generator().manual_seed(seed)
    d1 = filter_normalized_direction(model, g)
    d2 = filter_normalized_direction(model, g)
    probe = copy.deepcopy(model).eval()
    base = [p.detach().clone() for p in probe.parameters()]
    coords = torch.linspace(-span, span, steps)
    grid = np.zeros((steps, steps))
    for i, a in enumerate(coords):
        for j, b in enumerate(coords):
            for p, p0, u, v in zip(probe.parameters(), base, d1, d2, strict=True):
                p.copy_(p0 + a * u + b * v)
            with torch.enable_grad():  # loss_fn may run an attack (needs input gradients)
                grid[i, j] = float(loss_fn(probe))
    return {"alphas": coords.tolist(), "betas": coords.tolist(), "loss": grid.tolist()}


def plot_loss_surfaces(surfaces: dict[str, dict], path: str | Path, title: str = "") -> Path:
    """Side-by-side 3-D surfaces (DataFreeShield Fig 4/6/7), one panel per ``{label: loss_surface(...)}``.

    All panels share one z-range so flatness is visually comparable.
    """
    if not surfaces:
        raise ValueError("plot_loss_surfaces: no surfaces given")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    zmin = min(float(np.min(s["loss"])) for s in surfaces.values())
    zmax = max(float(np.max(s["loss"])) for s in surfaces.values())
    fig = plt.figure(figsize=(4.2 * len(surfaces), 3.8))
    for k, (label, s) in enumerate(surfaces.items()):
        ax = fig.add_subplot(1, len(surfaces), k + 1, projection="3d")
        a, b = np.meshgrid(s["alphas"], s["betas"], indexing="ij")
        ax.plot_surface(a, b, np.asarray(s["loss"]), cmap="viridis", linewidth=0, antialiased=True)
        ax.set_zlim(zmin, zmax)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("d1")
        ax.set_ylabel("d2")
    return _save_titled(fig, path, title)


# ---------------------------------------------------------------------------------------------- PCA (Fig 8)
def plot_feature_pca(
    real: torch.Tensor,
    synthetic: dict[str, torch.Tensor],
    path: str | Path,
    title: str = "",
    max_points: int = 1000,
) -> Path:
    """Scatter real vs each synthetic feature set on the top-2 principal axes of the *real* features.

    Fitting the PCA on real data only (not on the union) keeps the axes fixed across panels, so a set that
    collapses onto a few modes (fixed coefficients, low ``L_class``) is visibly narrower than one that
    spreads like the real data (DSS) — the point of DataFreeShield Fig 8.
    """
    if real.ndim != 2 or any(f.ndim != 2 or f.shape[1] != real.shape[1] for f in synthetic.values()):
        raise ValueError("plot_feature_pca: features must be 2-D (N, d) with the same d")
    if not synthetic:
        raise ValueError("plot_feature_pca: no synthetic feature sets given")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    r = real.detach().double().cpu()[:max_points]
    mu = r.mean(0, keepdim=True)
    _, _, v = torch.linalg.svd(r - mu, full_matrices=False)
    axes2 = v[:2].T

    def proj(f: torch.Tensor) -> np.ndarray:
        return ((f.detach().double().cpu()[:max_points] - mu) @ axes2).numpy()

    pr = proj(r)
    fig, axs = plt.subplots(1, len(synthetic), figsize=(3.6 * len(synthetic), 3.4), squeeze=False)
    for ax, (label, f) in zip(axs[0], synthetic.items(), strict=True):
        ps = proj(f)
        ax.scatter(pr[:, 0], pr[:, 1], s=4, alpha=0.4, c="tab:blue", label="real")
        ax.scatter(ps[:, 0], ps[:, 1], s=4, alpha=0.5, c="tab:red", label="synthetic")
        ax.set_title(label, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    axs[0, 0].legend(fontsize=7, loc="best")
    return _save_titled(fig, path, title)
