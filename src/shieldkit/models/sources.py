"""Where an imported model comes from (:func:`resolve_source`): the routes of
:func:`shieldkit.models.importers.import_model` — an architecture by name (torchvision / timm / pytorchcv /
shieldkit registry, weights from a state_dict or the local pytorchcv cache), a TorchScript file (rebuilt
eagerly, :mod:`shieldkit.models.unscript`), a ``torch.export`` archive (:mod:`shieldkit.models.exported_program`)
or a Python class (:mod:`shieldkit.models.pysource`) — each returning the eager network, the provenance
spec recorded on the card, and a label. The import errors live here too, below every route."""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path

import torch
from torch import nn

from shieldkit.errors import CorruptFileError, IncompatibleError, InputError, MissingInputError
from shieldkit.models.exported_program import is_exported_program_file, load_exported
from shieldkit.models.pysource import build_from_file, parse_init_args, split_class_spec, verify_sha256
from shieldkit.models.registry import MODELS
from shieldkit.models.unscript import _script_original_name, unscript
from shieldkit.utils.io import load_tensors, safe_torch_load

SOURCES = ("torchvision", "timm", "pytorchcv", "torchscript", "python", "export", "shieldkit")
PYTORCHCV_CACHE = Path("~/.torch/models")


class ModelImportError(InputError):
    """A model could not be imported as asked; the message says what is missing and which option fixes it.

    A :class:`~shieldkit.errors.InputError` (hence a ``ValueError``): the CLI prints it in ≤ 3 lines, exit 2."""


class WeightsMismatchError(ModelImportError, IncompatibleError):
    """A state_dict that does not fit the architecture (missing / unexpected keys, wrong shapes)."""


class NoFeaturesError(ModelImportError, IncompatibleError):
    """A features/head-based method was asked of a model imported for evaluation only."""


def _mismatch(what: str, missing: list[str], unexpected: list[str], shapes: list[str]) -> WeightsMismatchError:
    parts = [f"{len(missing)} missing key(s) {missing[:4]}" if missing else "",
             f"{len(unexpected)} unexpected key(s) {unexpected[:4]}" if unexpected else "",
             f"wrong shapes {shapes[:3]}" if shapes else ""]
    return WeightsMismatchError(f"{what}: " + ", ".join(p for p in parts if p),
                                hint="is it the state_dict of this architecture (same class, --init-args and "
                                     "num_classes)?")


# ----------------------------------------------------------------------------- building architectures
def parse_arch(arch: str) -> tuple[str, str]:
    """``"timm:resnet18"`` → ``("timm", "resnet18")``; a bare registry name → ``("shieldkit", name)``."""
    if ":" in arch:
        source, name = arch.split(":", 1)
        if source not in SOURCES:
            raise ModelImportError(f"unknown model source {source!r} in {arch!r}; use one of {', '.join(SOURCES)}")
        return source, name
    return "shieldkit", arch


def build_architecture(arch: str, num_classes: int | None = None, in_channels: int | None = None) -> nn.Module:
    """Instantiate ``arch`` with random weights (never downloads anything)."""
    source, name = parse_arch(arch)
    kw = {} if num_classes is None else {"num_classes": num_classes}
    if source == "torchvision":
        import torchvision

        try:
            return torchvision.models.get_model(name, weights=None, **kw)
        except ValueError as exc:
            raise ModelImportError(f"torchvision has no architecture {name!r} ({exc})") from exc
    if source == "timm":
        import timm

        if not timm.is_model(name):
            raise ModelImportError(f"timm has no architecture {name!r}; see timm.list_models('{name[:4]}*')")
        return timm.create_model(name, pretrained=False, **kw, **({} if in_channels is None
                                                                   else {"in_chans": in_channels}))
    if source == "pytorchcv":
        from pytorchcv.model_provider import get_model

        try:
            return get_model(name, pretrained=False, **kw)
        except ValueError as exc:
            raise ModelImportError(f"pytorchcv has no architecture {name!r} ({exc})") from exc
    if source == "shieldkit":
        if name not in MODELS:
            raise ModelImportError(f"unknown architecture {arch!r}: not a shieldkit registry model; prefix it with "
                                   f"its library, e.g. 'torchvision:{name}' or 'timm:{name}'")
        return MODELS[name](num_classes=num_classes or 10, in_channels=in_channels or 3, image_size=32)
    raise ModelImportError(f"{arch!r}: a TorchScript model is a file — pass its path, not an architecture name")


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state_dict from ``.safetensors`` or a ``torch.save`` file (``weights_only=True``), unwrapping the
    usual ``{"state_dict": …}`` / ``{"model": …}`` nesting and DataParallel's ``module.`` prefix."""
    path = Path(path).expanduser()
    if not path.exists():
        raise MissingInputError(f"{path}: weights file does not exist", hint="check --weights")
    sd = load_tensors(path) if path.suffix == ".safetensors" else safe_torch_load(path)
    for key in ("state_dict", "model_state_dict", "model", "net"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CorruptFileError(f"{path}: not a state_dict (a mapping of parameter names to tensors)",
                               hint="save the weights with torch.save(model.state_dict(), FILE) or safetensors")
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def _load_lenient(net: nn.Module, sd: dict[str, torch.Tensor]) -> tuple[list[str], list[str], list[str]]:
    """Load what fits; return (missing, unexpected, wrong-shape) key lists for one clear error message."""
    own = net.state_dict()
    shapes = [f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in sd.items()
              if k in own and own[k].shape != v.shape]
    fitting = {k: v for k, v in sd.items() if k not in own or own[k].shape == v.shape}
    missing, unexpected = net.load_state_dict(fitting, strict=False)
    return list(missing), list(unexpected), shapes


def pytorchcv_cached_weights(name: str, cache: str | Path | None = None) -> Path | None:
    """The user's already-downloaded pytorchcv weight file for ``name`` (``<name>-<err>-<sha>.pth``), if any."""
    d = Path(cache if cache is not None else PYTORCHCV_CACHE).expanduser()
    hits = sorted(d.glob(f"{name}-*.pth")) if d.is_dir() else []
    return hits[-1] if hits else None


def is_torchscript_file(path: str | Path) -> bool:
    """TorchScript archives are zip files with a ``code/`` directory (``torch.save`` zips have none)."""
    try:
        with zipfile.ZipFile(path) as zf:
            return any("/code/" in n or n.startswith("code/") for n in zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


# ----------------------------------------------------------------------------- TorchScript files
def load_torchscript(path: str | Path, arch: str | None = None, num_classes: int | None = None,
                     in_channels: int | None = None, image_size: int | None = None) -> tuple[nn.Module, str]:
    """Load a TorchScript file as an eager module; returns (module, how) with ``how`` one of
    ``"arch"`` (state_dict into ``arch``), ``"unscripted"`` or ``"scripted"`` (no BN hooks possible)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise MissingInputError(f"{path}: TorchScript file does not exist", hint="check the path")
    ts = torch.jit.load(str(path), map_location="cpu")
    if arch is not None:
        net = build_architecture(arch, num_classes, in_channels)
        missing, unexpected, shapes = _load_lenient(net, ts.state_dict())
        if missing or unexpected or shapes:
            err = _mismatch(f"{path}: its state_dict does not fit {arch!r}", missing, unexpected, shapes)
            err.hint = "drop --arch to import the TorchScript module itself"
            raise err
        return net, "arch"
    try:
        eager = unscript(ts)
        if image_size is not None:
            c = _first_conv_in_channels(ts) or in_channels or 3
            probe = torch.rand(2, c, image_size, image_size, generator=torch.Generator().manual_seed(0))
            ts.eval()
            eager.eval()
            with torch.no_grad():
                a, b = ts(probe), eager(probe)
            if not torch.allclose(a, b, rtol=1e-4, atol=1e-5):
                raise RuntimeError(f"outputs differ (max |Δ| = {(a - b).abs().max().item():.3g})")
        return eager, "unscripted"
    except Exception as exc:  # noqa: BLE001 - any failure falls back to the compiled module, loudly
        warnings.warn(f"{path}: could not rebuild an eager module from the TorchScript code ({exc}). Using it "
                      f"compiled: evaluation works, but synthesis (BN hooks) and train-mode BN do not. Pass "
                      f"--arch NAME (e.g. torchvision:resnet18) to load its weights into an eager architecture.",
                      stacklevel=2)
        return ts, "scripted"


# ----------------------------------------------------------------------------- the backbone adapter


def _load_weights(net: nn.Module, weights: str | Path, what: str) -> None:
    sd = load_state_dict_file(weights)
    missing, unexpected, shapes = _load_lenient(net, sd)
    if missing or unexpected or shapes:
        raise _mismatch(f"{weights} does not fit {what}", missing, unexpected, shapes)

def _first_conv_in_channels(model: nn.Module) -> int | None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
        if _script_original_name(m) == "Conv2d":
            return int(m.weight.shape[1]) * int(getattr(m, "groups", 1))
    return None


# ----------------------------------------------------------------------------------------- the routes
def _from_python_class(src: str, class_spec: tuple[str, str], weights: str | Path | None, init_args: dict | str | None,
                       expected_sha256: str | None) -> tuple[nn.Module, dict, str]:
    file = Path(class_spec[0]).expanduser()
    digest = verify_sha256(file, expected_sha256) if file.is_file() else None
    kwargs = parse_init_args(init_args)
    net = build_from_file(file, class_spec[1], kwargs)
    if weights is None:
        warnings.warn(f"{src}: no --weights given, the model has random (untrained) weights", stacklevel=4)
    else:
        _load_weights(net, weights, src)
    spec = {"source": "python", "path": str(file.resolve()), "class": class_spec[1], "init_args": kwargs,
            "arch_sha256": digest, "imported_from": str(file.resolve()), "weights": str(weights) if weights else None}
    return net, spec, f"{file.name}:{class_spec[1]}"


def _from_export(path: Path, expected_sha256: str | None) -> tuple[nn.Module, dict, str]:
    digest = verify_sha256(path, expected_sha256)
    spec = {"source": "export", "path": str(path.resolve()), "how": "export-eager", "arch_sha256": digest,
            "imported_from": str(path.resolve())}
    return load_exported(path), spec, path.name


def _from_torchscript(path: Path, arch: str | None, num_classes: int | None, in_channels: int | None,
                      image_size: int, expected_sha256: str | None) -> tuple[nn.Module, dict, str]:
    digest = verify_sha256(path, expected_sha256)
    net, how = load_torchscript(path, arch, num_classes, in_channels, image_size)
    spec = {"source": "torchscript", "path": str(path.resolve()), "how": how, "arch": arch, "arch_sha256": digest,
            "imported_from": str(path.resolve())}
    return net, spec, arch or path.name


def _from_arch_name(src: str, weights: str | Path | None, num_classes: int | None,
                    in_channels: int | None) -> tuple[nn.Module, dict, str]:
    net = build_architecture(src, num_classes, in_channels)
    src_kind, name = parse_arch(src)
    if weights is None and src_kind == "pytorchcv":
        weights = pytorchcv_cached_weights(name)
        if weights is None:
            warnings.warn(f"no cached pytorchcv weights for {name!r} under {PYTORCHCV_CACHE} (shieldkit never "
                          f"downloads): the model has random weights; pass --weights FILE", stacklevel=4)
    elif weights is None:
        warnings.warn(f"{src}: no --weights given, the model has random (untrained) weights", stacklevel=4)
    if weights is not None:
        _load_weights(net, weights, src)
    return net, {"source": src_kind, "arch": src, "weights": str(weights) if weights else None}, src


def resolve_source(source: str | Path, *, arch: str | None, weights: str | Path | None, num_classes: int | None,
                   in_channels: int | None, image_size: int, init_args: dict | str | None,
                   expected_sha256: str | None) -> tuple[nn.Module, dict, str]:
    """The eager network for ``source`` (see :func:`~shieldkit.models.importers.import_model`), the spec the
    card records (``extra["import"]``) and a label for the card's arch name."""
    src = str(source)
    path = Path(src).expanduser()
    class_spec = split_class_spec(src) if not path.exists() else None
    if class_spec is not None:
        if arch is not None:
            raise ModelImportError(f"--arch is for TorchScript files only, not for a Python class ({src})")
        return _from_python_class(src, class_spec, weights, init_args, expected_sha256)
    if path.exists() and is_exported_program_file(path):
        if arch is not None:
            raise ModelImportError(f"--arch is for TorchScript files only, not for a torch.export archive ({src})")
        return _from_export(path, expected_sha256)
    if path.exists() and is_torchscript_file(path):
        return _from_torchscript(path, arch, num_classes, in_channels, image_size, expected_sha256)
    if path.exists():
        raise ModelImportError(f"{path} is a file but not a TorchScript archive; for a state_dict pass the "
                               f"architecture name as the source and the file as weights (e.g. "
                               f"`shieldkit import-model timm:resnet18 --weights {path}`)",
                               hint="for a Python class pass FILE.py:ClassName --weights W")
    if arch is not None:
        raise ModelImportError(f"arch= is for TorchScript files only, but {src!r} is not an existing file; for an "
                               f"architecture by name pass it as the source (e.g. 'timm:resnet18')")
    return _from_arch_name(src, weights, num_classes, in_channels)


__all__ = ["PYTORCHCV_CACHE", "SOURCES", "ModelImportError", "NoFeaturesError", "WeightsMismatchError",
           "build_architecture", "load_state_dict_file", "load_torchscript", "parse_arch", "resolve_source"]
