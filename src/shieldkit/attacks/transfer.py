"""Transfer attack from a substitute model (Papernot et al. 2017; "perform a transferability attack
using a similar substitute model", Carlini et al. 2019 checklist).

The substitute is trained *black-box*: on images the evaluator holds (the dataset's training split)
labelled by the **target model's own predictions** (hard labels), i.e. only queries to the target.
Adversarial examples are crafted with PGD (cross-entropy) on the substitute and then fed to the target.
A transfer attack beating the white-box attacks is a strong sign of gradient masking.
"""

from __future__ import annotations

import torch
from torch import nn

from shieldkit.attacks.library import predict
from shieldkit.attacks.pgd import PGDConfig, pgd
from shieldkit.data.base import ImageDataset


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
    from shieldkit.models import create_model
    from shieldkit.training.standard import StandardTrainConfig, train_classifier

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


def transfer_attack(
    substitute: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: PGDConfig,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """PGD on the substitute; the caller evaluates the examples on the target."""
    substitute.eval()
    return pgd(substitute, x, y, cfg, loss_fn="ce", generator=generator, track_best=False)
