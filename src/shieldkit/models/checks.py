"""Integrity checks run before any computation (issue 13): finite weights, model card vs dataset."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from shieldkit.errors import IncompatibleError, IntegrityError


def check_finite_weights(model_or_state: nn.Module | Mapping[str, torch.Tensor], source: str = "model") -> None:
    """Raise :class:`IntegrityError` when any floating tensor (parameter or buffer) holds NaN/Inf."""
    tensors = dict(model_or_state.state_dict()) if isinstance(model_or_state, nn.Module) else dict(model_or_state)
    floats = {k: t for k, t in tensors.items() if isinstance(t, torch.Tensor) and torch.is_floating_point(t)}
    bad = [k for k, t in floats.items() if t.numel() and not bool(torch.isfinite(t).all())]
    if bad:
        raise IntegrityError(
            f"{source}: weights contain NaN/Inf ({len(bad)} of {len(floats)} tensors, e.g. {bad[0]}); "
            "the model cannot be evaluated or shielded — re-export it",
            hint="re-train or re-export the model from a checkpoint without NaN/Inf",
        )


def check_num_classes(num_classes: int, source: str = "dataset") -> None:
    """A classification dataset needs at least two classes (accuracy is meaningless otherwise)."""
    if num_classes < 2:
        raise IncompatibleError(f"{source}: has {num_classes} class(es); at least two classes are needed",
                                hint="add a second class folder / use a dataset with ≥ 2 classes")


def check_model_data(card: object, dataset: object, source: str = "model") -> None:
    """Raise :class:`IncompatibleError` when the model card's classes / channels / image size do not fit
    ``dataset`` (an :class:`~shieldkit.data.base.ImageDataset`), or the dataset has fewer than two classes.

    ``card`` may be a :class:`~shieldkit.models.wrapper.ModelCard`, a model with a ``.card`` or ``None``
    (then only the dataset is checked)."""
    card = getattr(card, "card", card)
    dname = repr(getattr(dataset, "name", "dataset"))
    ncls = int(getattr(dataset, "num_classes", 0))
    check_num_classes(ncls, f"dataset {dname}")
    if card is None or not hasattr(card, "num_classes"):
        return
    c, h, w = tuple(dataset.image_shape)
    problems = []
    if int(card.num_classes) != ncls:
        problems.append(f"{card.num_classes} classes vs {ncls} in the dataset")
    if int(card.in_channels) != c:
        problems.append(f"{card.in_channels} input channels vs {c} in the dataset")
    size = int(getattr(card, "image_size", 0) or 0)
    if size and (h, w) != (size, size):
        problems.append(f"image size {size}×{size} vs {h}×{w} in the dataset")
    if problems:
        trained = f" (trained on {card.dataset!r})" if getattr(card, "dataset", "") else ""
        raise IncompatibleError(f"{source}{trained} does not fit dataset {dname}: " + "; ".join(problems),
                                hint="evaluate the model on the dataset it was trained for (or resize/convert "
                                     "the images to the model's input)")


__all__ = ["check_finite_weights", "check_model_data", "check_num_classes"]
