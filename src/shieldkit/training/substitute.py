"""The substitute model of a transfer attack (Papernot et al. 2017): a classifier trained on images labelled
by the target's predictions. Training is this layer's job; :func:`shieldkit.attacks.transfer.transfer_attack`
then attacks the target with examples crafted on the substitute."""

from __future__ import annotations

import torch
from torch import nn

from shieldkit.attacks.library import predict
from shieldkit.data.base import ImageDataset
from shieldkit.models import create_model
from shieldkit.training.standard import StandardTrainConfig, train_classifier


def train_substitute(
    target: nn.Module,
    data: ImageDataset,
    *,
    arch: str | None = None,
    epochs: int = 2,
    seed: int = 0,
    device: str | torch.device = "cpu",
    max_images: int | None = 4000,
) -> nn.Module:
    """Train a substitute on ``data`` images labelled by ``target``'s predictions (no true labels)."""
    if max_images is not None and len(data) > max_images:
        data = data.subset(max_images, seed=seed)
    was = target.training
    target.eval()
    labels = predict(target, data.x, device=device)
    target.train(was)
    c, h, _ = data.image_shape
    card = getattr(target, "card", None)
    arch = arch or (card.arch if card is not None else "mnist_cnn")
    n_classes = int(labels.max()) + 1 if card is None else card.num_classes
    sub = create_model(
        arch,
        num_classes=n_classes,
        in_channels=c,
        image_size=h,
        mean=card.mean if card is not None else None,
        std=card.std if card is not None else None,
    )
    queried = ImageDataset(data.x, labels, data.classes, name=f"{data.name}-substitute", meta=dict(data.meta))
    train_classifier(sub, queried, StandardTrainConfig(epochs=epochs, seed=seed), device)
    return sub.eval()
