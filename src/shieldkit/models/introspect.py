"""Finding the parts of a model that methods need (BatchNorm layers for synthesis)."""

from __future__ import annotations

from torch import nn

_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def bn_layers(model: nn.Module) -> list[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    """All BatchNorm layers that carry running statistics, in registration order."""
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, _BN_TYPES) and m.track_running_stats and m.running_mean is not None]


def require_batchnorm(model: nn.Module, why: str = "L_feature matches BatchNorm running statistics") -> list:
    layers = bn_layers(model)
    if not layers:
        raise ValueError(
            f"the model has no BatchNorm layer with running statistics, but {why}. DataFreeShield's "
            f"synthesis (Eq 4) needs a teacher with BatchNorm (e.g. a registry model such as mnist_cnn or "
            f"resnet20); for a model without BN use a generator-based baseline instead.")
    return layers
