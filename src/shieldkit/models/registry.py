"""timm-style registry: an architecture is one function decorated with ``@register_model``.

A registered builder takes ``(num_classes, in_channels, image_size)`` and returns a *backbone*
``nn.Module`` that exposes ``forward_features(x) -> (N, d)`` (penultimate features, after pooling and
flattening) and ``head`` (the final ``nn.Linear``); its ``forward`` must equal
``head(forward_features(x))``. That contract is what UniG (feature-space module) and the latent
attack rely on. :func:`create_model` wraps the backbone in :class:`NormalizedClassifier` so every
model shieldkit hands out takes images in [0, 1] and returns logits.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence

from torch import nn

MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    MODELS[fn.__name__] = fn
    return fn


def list_models(pattern: str = "*") -> list[str]:
    return sorted(n for n in MODELS if fnmatch.fnmatch(n, pattern))


def create_model(arch: str, *, num_classes: int = 10, in_channels: int = 1, image_size: int = 28,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None, dataset: str = "",
                 classes: Sequence[str] | None = None):
    """Build ``arch`` wrapped with input normalisation (defaults: mean 0.5, std 0.5 per channel)."""
    from shieldkit.models.wrapper import ModelCard, NormalizedClassifier

    if arch not in MODELS:
        raise KeyError(f"unknown architecture {arch!r}; available: {', '.join(list_models())}")
    net = MODELS[arch](num_classes=num_classes, in_channels=in_channels, image_size=image_size)
    card = ModelCard(arch=arch, num_classes=num_classes, in_channels=in_channels, image_size=image_size,
                     mean=list(mean) if mean is not None else [0.5] * in_channels,
                     std=list(std) if std is not None else [0.5] * in_channels, dataset=dataset,
                     classes=list(classes) if classes is not None else [str(i) for i in range(num_classes)])
    return NormalizedClassifier(net, card)
