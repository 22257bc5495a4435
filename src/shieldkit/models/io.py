"""Weights as safetensors plus a JSON sidecar; loading never unpickles anything.

``save_model(model, "teacher")`` writes ``teacher.safetensors`` (the state dict, including the
normalisation buffers) and ``teacher.json`` (the :class:`ModelCard`). ``load_model`` rebuilds the
architecture from the card and loads the tensors strictly.

An imported model whose architecture is a file (TorchScript, torch.export ``.pt2``, a Python class) gets it
copied next to the weights (``teacher.arch.ts`` / ``.arch.pt2`` / ``.arch.py``, sha256 in the sidecar), so the
saved model never depends on a file outside its own folder: the folder can be moved or shipped whole.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from shieldkit.models.checks import check_finite_weights
from shieldkit.models.registry import create_model
from shieldkit.models.wrapper import ModelCard, NormalizedClassifier
from shieldkit.utils.io import atomic_write_json, load_tensors, read_json, save_tensors


@dataclass(frozen=True)
class ArchLoader:
    """How models of a non-registry architecture family (``card.arch`` starting with a prefix) are saved and
    loaded: ``bundle(card, weights) -> card dict`` copies what the architecture needs next to the weights;
    ``load(path, device) -> model`` rebuilds it."""

    bundle: Callable[..., dict]
    load: Callable[..., NormalizedClassifier]


ARCH_LOADERS: dict[str, ArchLoader] = {}
"""``card.arch`` prefix → loader; :mod:`shieldkit.models.bundle` registers ``"imported:"``."""


def register_arch_loader(prefix: str, *, bundle: Callable[..., dict],
                         load: Callable[..., NormalizedClassifier]) -> None:
    ARCH_LOADERS[prefix] = ArchLoader(bundle, load)


def _loader(arch: str) -> ArchLoader | None:
    return next((v for k, v in ARCH_LOADERS.items() if arch.startswith(k)), None)


def _paths(path: str | Path) -> tuple[Path, Path]:
    p = Path(path)
    stem = p.with_suffix("") if p.suffix in (".safetensors", ".json") else p
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")


def save_model(model: NormalizedClassifier, path: str | Path, **extra) -> Path:
    weights, sidecar = _paths(path)
    card = model.card
    card.extra.update(extra)
    card_dict = card.to_dict()
    if (loader := _loader(card.arch)) is not None:  # e.g. an imported file architecture: copied next to the weights
        card_dict = loader.bundle(card, weights)
    save_tensors(weights, model.state_dict(), metadata={"arch": card.arch})
    atomic_write_json(sidecar, card_dict)
    return weights


def load_model(path: str | Path, device: str = "cpu") -> NormalizedClassifier:
    weights, sidecar = _paths(path)
    for p in (weights, sidecar):
        if not p.exists():
            raise FileNotFoundError(f"{p}: missing — a shieldkit model is a .safetensors file with a .json "
                                    f"sidecar of the same name (written by `shieldkit teacher` or save_model)")
    card = ModelCard.from_dict(read_json(sidecar))
    if (loader := _loader(card.arch)) is not None:  # torchvision / timm / pytorchcv / TorchScript / … import
        imported = loader.load(path, device=device)
        check_finite_weights(imported, str(weights))
        return imported
    model = create_model(card.arch, num_classes=card.num_classes, in_channels=card.in_channels,
                         image_size=card.image_size, mean=card.mean, std=card.std, dataset=card.dataset,
                         classes=card.classes)
    model.card.extra = dict(card.extra)
    state = load_tensors(weights)
    check_finite_weights(state, str(weights))
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()
