"""The model contract, as ``typing.Protocol`` s, so callers check a type instead of probing attributes.

* :class:`Classifier` — what every shieldkit model offers (:func:`~shieldkit.models.create_model`,
  :func:`~shieldkit.models.load_model`, the importers): ``model(x)`` maps images N×C×H×W in [0, 1] to
  logits N×K (normalisation inside), and carries its ``card`` (:class:`~shieldkit.models.ModelCard`)
  and the ``mean`` / ``std`` buffers it normalises with.
* :class:`FeatureModel` — the optional part: penultimate ``features(x)`` (N, d) and the final ``head``
  with ``head(features(x)) == model(x)`` (UniG, the latent attack, MMC heads need it).
* :class:`Wrapped` — anything around a classifier that names it ``base_model`` (every
  :class:`~shieldkit.defenses.base.Defense`); :func:`unwrap` / :func:`card_of` follow that chain.

The protocols are ``runtime_checkable``: ``isinstance(m, Classifier)`` checks that the members exist.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch
from torch import nn

if TYPE_CHECKING:
    from shieldkit.models.wrapper import ModelCard


@runtime_checkable
class Classifier(Protocol):
    """A shieldkit model: [0, 1] images → logits, with its card and normalisation constants."""

    card: ModelCard
    mean: torch.Tensor
    std: torch.Tensor

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class FeatureModel(Protocol):
    """A model whose logits are ``head(features(x))`` (penultimate features, final layer)."""

    head: nn.Module

    def features(self, x: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class Wrapped(Protocol):
    """A wrapper (defence) around the classifier ``base_model``."""

    base_model: nn.Module


def unwrap(model: nn.Module) -> nn.Module:
    """The innermost classifier under a chain of :class:`Wrapped` defences (``model`` if none)."""
    seen = 0
    while isinstance(model, Wrapped) and seen < 64:
        model, seen = model.base_model, seen + 1
    return model


def card_of(model: nn.Module) -> ModelCard | None:
    """The :class:`~shieldkit.models.ModelCard` of ``model`` or of the classifier it wraps (None if the
    model is not a shieldkit :class:`Classifier`)."""
    while True:
        if isinstance(model, Classifier):
            return model.card
        if not isinstance(model, Wrapped):
            return None
        model = model.base_model


def has_linear_head(model: nn.Module) -> bool:
    """True for a :class:`FeatureModel` whose ``head`` is an ``nn.Linear`` (UniG, MMC, distillation)."""
    return isinstance(model, FeatureModel) and isinstance(model.head, nn.Linear)


def replace_head(model: nn.Module, head: nn.Module) -> None:
    """Swap the final layer of a :class:`FeatureModel` (in place), wherever the model keeps it."""
    if not isinstance(model, FeatureModel):
        raise TypeError(f"{type(model).__name__} has no `.features(x)` / `.head`: cannot replace its head")
    from shieldkit.models.wrapper import NormalizedClassifier

    if isinstance(model, NormalizedClassifier):
        model.net.head = head  # ``head`` is the backbone's (read-only property on the wrapper)
    else:
        model.head = head
