"""Importing a user's classifier: torchvision / timm / pytorchcv by name, TorchScript files, state_dicts.

Everything shieldkit does expects a :class:`~shieldkit.models.NormalizedClassifier`: [0, 1] images in,
logits out, normalisation inside, ``.features(x)`` (penultimate features) and ``.head`` (the final
``nn.Linear``). :func:`import_model` turns a user's model into one:

* **architecture by name** — ``"torchvision:resnet18"``, ``"timm:resnet18"``, ``"pytorchcv:resnet20_cifar10"``
  (or a shieldkit registry name). Built with random weights (``weights=None`` / ``pretrained=False``:
  nothing is ever downloaded), then loaded from ``weights`` if given — a ``.safetensors`` file or a
  ``torch.save``'d state_dict read with ``weights_only=True``. pytorchcv names without ``weights`` load
  from the user's pytorchcv cache (``~/.torch/models/<name>-*.pth``) when the file is there.
* **TorchScript file** (``torch.jit.load``). Synthesis needs forward hooks on BatchNorm layers and
  training needs train-mode BN, neither of which a ScriptModule offers (hooks cannot be registered,
  and a *traced* BN is frozen in eval mode). :func:`~shieldkit.models.unscript.unscript` rebuilds an eager
  module: every BatchNorm becomes a real ``nn.BatchNorm*d`` with the same parameters and statistics, every
  container that holds one is re-created from its TorchScript code (the code TorchScript prints is
  Python), and BN-free sub-trees stay compiled. The result is checked against the TorchScript
  module's outputs; if anything fails it says so and, if an architecture name is also given, the
  file's state_dict is loaded into that eager architecture instead (the most robust route).

* **torch.export archive** (``.pt2``, :mod:`shieldkit.models.exported_program`): rebuilt as an eager
  module — its ``aten.batch_norm`` / ``aten.linear`` nodes become real ``nn.BatchNorm*d`` / ``nn.Linear``
  modules (BN statistics copied from the graph's buffers), so hooks, head discovery and train-mode BN work.
* **Python class** — ``"path/to/file.py:ClassName"`` (:mod:`shieldkit.models.pysource`): the file is
  imported by path under a module name derived from its sha256, ``ClassName(**init_args)`` is built
  (``init_args``: a JSON object on the command line) and ``weights`` (state_dict, as above) loaded strictly;
  a key mismatch names the missing / unexpected keys.

Self-contained saving: for the file routes (TorchScript, torch.export, Python class) the card records the
file's sha256 and :func:`shieldkit.models.save_model` copies the file next to the weights (``OUT.arch.ts`` /
``OUT.arch.pt2`` / ``OUT.arch.py``, ``extra["import"]["arch_file"]`` relative to the sidecar); loading uses
that copy and refuses it (``IntegrityError``) if its sha256 changed
(:mod:`shieldkit.models.bundle`). The folder can be moved or shipped whole.
Sidecars written before this (an absolute ``path``, no hash) load as they did.

Discovery (with a clear error naming what is missing and how to point at it):
* the **head** = the last ``nn.Linear`` whose ``out_features`` equals the number of classes
  (``head_layer=`` / ``--head-layer NAME`` overrides); the **features** = the head's input, read by a
  forward pre-hook (``features_layer=`` / ``--features-layer NAME`` takes a layer's flattened output
  instead). The contract ``model(x) == head(features(x))`` is verified on a probe batch.
* if no head is discoverable (and neither ``--head-layer`` nor ``--features-layer`` was given), the
  model is imported **for evaluation only** with a warning: ``card.extra["features"] = False``, and
  ``.features`` / ``.head`` raise :class:`NoFeaturesError` naming the fix.
* **BatchNorm** layers via :func:`shieldkit.models.introspect.bn_layers` (reported, needed by DSS; a model
  without BN imports with a warning that DataFreeShield synthesis will refuse it).
* Input channels: a 3-channel model fed 1-channel data repeats the grey channel (``gray_to_rgb``).

Normalisation is declared once (``mean``/``std`` of the model's expected input, in [0, 1] pixel
units) and :func:`~shieldkit.models.normcheck.check_input_normalisation` catches a wrong declaration: it
compares clean accuracy (or, without labels, logit statistics) under the declared normalisation with common
alternatives and the data's own statistics.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from shieldkit.errors import IncompatibleError
from shieldkit.models.introspect import bn_layers
from shieldkit.models.sources import (  # re-exported: the errors and routes were defined here before
    PYTORCHCV_CACHE,
    SOURCES,
    ModelImportError,
    NoFeaturesError,
    WeightsMismatchError,
    _first_conv_in_channels,
    build_architecture,
    load_state_dict_file,
    load_torchscript,
    parse_arch,
    resolve_source,
)
from shieldkit.models.unscript import _script_original_name
from shieldkit.models.wrapper import ModelCard, NormalizedClassifier


def find_head(model: nn.Module, num_classes: int | None, head_layer: str | None = None) -> str:
    """Name of the final classifier ``nn.Linear`` (see module docstring); clear error if none fits."""
    modules = dict(model.named_modules())
    linears = [(n, m) for n, m in modules.items() if isinstance(m, nn.Linear)
               or _script_original_name(m) == "Linear"]
    if head_layer is not None:
        if head_layer not in dict(linears):
            what = "is not a layer of the model" if head_layer not in modules else "is not an nn.Linear"
            raise ModelImportError(f"--head-layer {head_layer!r} {what}; the model's Linear layers are: "
                                   f"{', '.join(n for n, _ in linears) or 'none'}")
        return head_layer
    fitting = [n for n, m in linears if num_classes is None or m.out_features == num_classes]
    if not fitting:
        found = ", ".join(f"{n} ({m.in_features}→{m.out_features})" for n, m in linears) or "none"
        raise ModelImportError(f"could not find the final nn.Linear producing {num_classes} logits (Linear layers "
                               f"found: "
                               f"{found}). Point at the classifier with --head-layer NAME (head_layer=...), or at the "
                               f"penultimate features with --features-layer NAME.")
    return fitting[-1]


class ImportedBackbone(nn.Module):
    """The registry's backbone contract (``forward_features`` → (N, d), ``head``) for any classifier.

    ``forward_features`` runs the model and reads the head's input with a forward pre-hook (or the
    flattened output of ``features_layer``), so it works for torchvision, timm and pytorchcv layouts
    alike and keeps the autograd graph (attacks and UniG differentiate through it).
    """

    def __init__(self, model: nn.Module, head_name: str | None, features_layer: str | None = None,
                 channel_repeat: int = 1) -> None:
        super().__init__()
        self.model = model
        self.head_name = head_name
        self.features_layer = features_layer
        self.channel_repeat = channel_repeat

    def __deepcopy__(self, memo: dict) -> ImportedBackbone:
        """Deep copy that keeps parameters leaf tensors. ``copy.deepcopy`` of a compiled TorchScript
        sub-module clones its parameters *with* autograd history (non-leaf: an optimiser refuses them);
        copying under ``no_grad`` and restoring the flags avoids it (``init_student`` deep-copies)."""
        flags = [p.requires_grad for p in self.parameters()]
        new = self.__class__.__new__(self.__class__)
        memo[id(self)] = new
        with torch.no_grad():
            new.__dict__.update(copy.deepcopy(self.__dict__, memo))
        for p, f in zip(new.parameters(), flags, strict=True):
            p.requires_grad_(f)
        return new

    def _expand(self, x: torch.Tensor) -> torch.Tensor:
        return x.repeat(1, self.channel_repeat, 1, 1) if self.channel_repeat > 1 else x

    @property
    def head(self) -> nn.Module:
        if self.head_name is None:
            raise NoFeaturesError("this imported model has no known classifier head (none was discoverable at "
                                  "import): it is for evaluation only; this method needs the head",
                                  hint="re-import it with `shieldkit import-model ... --head-layer NAME`")
        return _submodule(self.model, self.head_name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(self._expand(x))
        if not isinstance(out, torch.Tensor):
            raise ModelImportError(f"the model returned {type(out).__name__}, not a logits tensor (auxiliary "
                                   f"outputs?); "
                                   f"wrap it so forward returns logits only")
        return out

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self.features_layer is None and self.head_name is None:
            raise NoFeaturesError("this imported model has no known penultimate features (no classifier head was "
                                  "discoverable at import): it is for evaluation only; this method needs features",
                                  hint="re-import it with `shieldkit import-model ... --head-layer NAME` (or "
                                       "--features-layer NAME)")
        layer = _submodule(self.model, self.features_layer or self.head_name)
        if isinstance(layer, torch.jit.ScriptModule):
            raise ModelImportError("features of a compiled TorchScript layer cannot be read (no hooks on "
                                   "ScriptModules); "
                                   "import the model with --arch NAME so it is rebuilt as an eager module")
        box: list[torch.Tensor] = []
        if self.features_layer is None:
            handle = layer.register_forward_pre_hook(lambda _m, inp: box.append(inp[0]))
        else:
            handle = layer.register_forward_hook(lambda _m, _i, out: box.append(out))
        try:
            self.model(self._expand(x))
        finally:
            handle.remove()
        if not box:
            raise ModelImportError(f"layer {self.features_layer or self.head_name!r} was not called in forward; "
                                   f"point --features-layer / --head-layer at layers the model uses")
        return box[-1].flatten(1)


def import_model(source: str | Path, *, arch: str | None = None, weights: str | Path | None = None,
                 num_classes: int | None = None, in_channels: int | None = None, image_size: int = 32,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 head_layer: str | None = None, features_layer: str | None = None, dataset: str = "",
                 classes: Sequence[str] | None = None, require_bn: bool = False,
                 init_args: dict | str | None = None, expected_sha256: str | None = None) -> NormalizedClassifier:
    """Import a user's model as a :class:`NormalizedClassifier` (see the module docstring).

    ``source``: an architecture name (``"timm:resnet18"`` …), a TorchScript file path, or
    ``"path/to/file.py:ClassName"`` (a plain Python class, built as ``ClassName(**init_args)``; ``init_args``
    a dict or a JSON object string). ``arch`` with a TorchScript file loads the file's weights into that
    eager architecture. ``weights``: a state_dict file for an architecture name or a Python class.
    ``in_channels``/``image_size``: the *data's* image shape (a 3-channel model given 1-channel data repeats
    the channel). ``mean``/``std``: the normalisation the model expects, in [0, 1] units, one value or one
    per data channel (default 0 and 1: the model takes [0, 1] images as they are). ``require_bn`` raises
    now (instead of at synthesis) without BatchNorm. ``expected_sha256``: for a file source, refuse
    (``IntegrityError``) a file whose content changed (used when re-loading a saved model).

    For file sources (TorchScript, Python) the card records the file's sha256 and its current location
    (``extra["import"]["path"]``); :func:`shieldkit.models.save_model` copies the file next to the weights
    so that the saved model is self-contained.
    """
    net, spec, label = resolve_source(source, arch=arch, weights=weights, num_classes=num_classes,
                                      in_channels=in_channels, image_size=image_size, init_args=init_args,
                                      expected_sha256=expected_sha256)
    explicit = head_layer is not None or features_layer is not None
    try:
        head_name: str | None = find_head(net, num_classes, head_layer)
    except ModelImportError as exc:
        if explicit:
            raise
        head_name = None
        warnings.warn(f"{exc.message.split('. Point')[0]} — imported for evaluation only: methods that need the "
                      f"penultimate features or the head (UniG, latent attack, diversity metrics, ...) will refuse "
                      f"it; re-import with --head-layer NAME / --features-layer NAME to enable them", stacklevel=2)
    if head_name is not None:
        head = _submodule(net, head_name)
        num_classes = num_classes or int(head.out_features if hasattr(head, "out_features") else head.weight.shape[0])
    data_c, repeat = _channels(net, in_channels)
    if num_classes is None:
        num_classes = _probe_num_classes(net, data_c, image_size, repeat)
    mean_l = _per_channel(mean, 0.0, data_c, "mean")
    std_l = _per_channel(std, 1.0, data_c, "std")
    if any(s <= 0 for s in std_l):
        raise ModelImportError(f"std must be positive, got {std_l}")
    backbone = ImportedBackbone(net, head_name, features_layer, repeat)
    card = ModelCard(arch=f"imported:{label}", num_classes=num_classes,
                     in_channels=data_c, image_size=image_size, mean=mean_l, std=std_l, dataset=dataset,
                     classes=list(classes) if classes is not None else [str(i) for i in range(num_classes)],
                     extra={"import": {**spec, "head_layer": head_name, "features_layer": features_layer,
                                       "channel_repeat": repeat,
                                       "bn_layers": [n for n, _ in bn_layers(net)]}})
    model = NormalizedClassifier(backbone, card).eval()
    _verify_contract(model, backbone, card, data_c, image_size, num_classes, explicit)
    card.extra["features"] = backbone.head_name is not None or features_layer is not None
    card.extra["head"] = backbone.head_name is not None
    _check_batch_norm(model, spec, require_bn)
    return model


def _channels(net: nn.Module, in_channels: int | None) -> tuple[int, int]:
    """(data channels, channel repeat): a 3-channel model fed 1-channel data repeats the grey channel."""
    model_c = _first_conv_in_channels(net)
    data_c = in_channels or model_c or 3
    if model_c is None or model_c == data_c:
        return data_c, 1
    if data_c == 1:
        return data_c, model_c
    raise IncompatibleError(f"the model's first convolution takes {model_c} channels but the data has {data_c}",
                            hint="check --in-channels / --data")


def _verify_contract(model: NormalizedClassifier, backbone: ImportedBackbone, card: ModelCard, c: int, size: int,
                     num_classes: int, explicit: bool) -> None:
    """``model(x) == head(features(x))``; a *discovered* head that fails it downgrades to evaluation only."""
    if backbone.head_name is None and card.extra["import"]["features_layer"] is None:
        _check_contract(model, c, size, num_classes)
        return
    try:
        _check_contract(model, c, size, num_classes)
    except ModelImportError as exc:
        if explicit or "head(features" not in str(exc):
            raise
        head_name, backbone.head_name = backbone.head_name, None  # the head does not produce the logits
        card.extra["import"]["head_layer"] = None
        warnings.warn(f"the discovered head {head_name!r} does not produce the model's logits (something runs "
                      f"after it) — imported for evaluation only: methods that need the penultimate features "
                      f"or the head will refuse it; re-import with --head-layer / --features-layer", stacklevel=3)


def _check_batch_norm(model: nn.Module, spec: dict, require_bn: bool) -> None:
    if bn_layers(model):
        return
    if require_bn:
        raise ModelImportError("the imported model has no (eager) BatchNorm layer with running statistics, which "
                               "DSS synthesis needs (Eq 4); for a TorchScript file pass --arch so it loads eagerly")
    if spec.get("how") != "scripted":  # the compiled-TorchScript fallback already warned about this
        warnings.warn("the imported model has no BatchNorm layer with running statistics: DataFreeShield "
                      "synthesis (DSS, `shieldkit synthesize` / `shield`) needs BN statistics and will refuse "
                      "it; evaluation, attacks and training on real data work", stacklevel=3)


def _probe_num_classes(net: nn.Module, c: int, size: int, repeat: int) -> int:
    x = torch.rand(2, c, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        try:
            out = ImportedBackbone(net, None, None, repeat).eval()(x)
        except Exception as exc:
            raise ModelImportError(f"the imported model fails on a {x.shape[1]}×{size}×{size} input "
                                   f"({type(exc).__name__}: {exc})"[:300],
                                   hint="check --in-channels / --image-size") from exc
    if out.ndim != 2:
        raise ModelImportError(f"the model returns shape {tuple(out.shape)}, expected (N, num_classes) logits")
    return int(out.shape[1])


def _per_channel(v: Sequence[float] | float | None, default: float, c: int, what: str) -> list[float]:
    if v is None:
        return [default] * c
    vals = [float(v)] if isinstance(v, int | float) else [float(t) for t in v]
    if len(vals) == 1:
        return vals * c
    if len(vals) != c:
        raise ModelImportError(f"{what} has {len(vals)} values but the data has {c} channels")
    return vals


def _check_contract(model: NormalizedClassifier, c: int, size: int, num_classes: int) -> None:
    """``forward`` returns (N, num_classes) logits equal to ``head(features)``, checked on a probe batch."""
    x = torch.rand(2, c, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        try:
            logits = model(x)
        except Exception as exc:
            raise ModelImportError(f"the imported model fails on a {c}×{size}×{size} input "
                                   f"({type(exc).__name__}: {exc}); "
                                   f"check in_channels / image_size") from exc
        if logits.ndim != 2 or logits.shape[1] != num_classes:
            raise ModelImportError(f"the model returns shape {tuple(logits.shape)}, expected (N, {num_classes}) logits")
        try:
            feats = model.features(x)
        except ModelImportError:
            return  # compiled TorchScript: features unavailable, said clearly when asked for
        try:
            via_head = model.head(feats)
        except RuntimeError:
            via_head = None
        if (via_head is None or via_head.shape != logits.shape
                or not torch.allclose(via_head, logits, rtol=1e-4, atol=1e-5)):
            raise ModelImportError(f"model(x) != head(features(x)) with head {model.net.head_name!r}: something runs "
                                   f"after that layer. Point at the real classifier with --head-layer NAME and at the "
                                   f"penultimate features with --features-layer NAME.")


def _submodule(model: nn.Module, name: str) -> nn.Module:
    """``get_submodule`` that also works on (partly) compiled TorchScript modules."""
    mods = dict(model.named_modules())
    if name not in mods:
        raise ModelImportError(f"the model has no layer named {name!r}")
    return mods[name]


__all__ = ["PYTORCHCV_CACHE", "SOURCES", "ImportedBackbone", "ModelImportError", "NoFeaturesError",
           "WeightsMismatchError", "build_architecture", "find_head", "import_model", "load_state_dict_file",
           "load_torchscript", "parse_arch"]
