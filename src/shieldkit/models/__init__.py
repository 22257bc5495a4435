"""Model registry, the [0,1]-input wrapper, and safe (safetensors + JSON) weight files."""

from shieldkit.models.registry import MODELS, create_model, list_models, register_model
from shieldkit.models.wrapper import ModelCard, NormalizedClassifier

# Architectures register themselves on import.
from shieldkit.models import small as _small  # noqa: E402,F401  isort: skip
from shieldkit.models import resnet_cifar as _resnet_cifar  # noqa: E402,F401  isort: skip
from shieldkit.models import wrn as _wrn  # noqa: E402,F401  isort: skip
from shieldkit.models import resnet_medmnist as _resnet_medmnist  # noqa: E402,F401  isort: skip

from shieldkit.models.io import load_model, save_model  # noqa: E402  isort: skip
from shieldkit.models.introspect import bn_layers, require_batchnorm  # noqa: E402  isort: skip
# registers the loader of imported architectures with models.io (save_model / load_model)
from shieldkit.models import bundle as _bundle  # noqa: E402,F401  isort: skip

__all__ = ["MODELS", "ModelCard", "NormalizedClassifier", "bn_layers", "create_model", "list_models",
           "load_model", "register_model", "require_batchnorm", "save_model"]
