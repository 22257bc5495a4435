"""A user's model defined as a plain Python class in a ``.py`` file: ``path/to/file.py:ClassName``.

The file is loaded by path with :mod:`importlib` under a module name derived from the file's sha256
(``shieldkit_user_<hash>``), so two different files that are both called ``model.py`` never collide and
re-loading the same content reuses the module. ``init_args`` (a JSON object on the command line) are the
keyword arguments of the class's constructor.

The file is executed: it is the user's own model code, the same trust level as ``import mynet`` in
their training script. Weights are never unpickled (``weights_only=True`` / safetensors).
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import inspect
import json
import sys
from pathlib import Path

from torch import nn

from shieldkit.errors import InputError, IntegrityError, MissingInputError


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_sha256(path: Path, expected: str | None) -> str:
    """The file's sha256; :class:`IntegrityError` if it differs from ``expected`` (when given)."""
    if not path.is_file():
        raise MissingInputError(f"{path}: architecture source missing (it belongs next to the model's weights)",
                                hint="copy the whole model folder, including the *.arch.* file")
    actual = sha256_file(path)
    if expected and actual != expected:
        raise IntegrityError(f"{path}: architecture source changed since import (sha256 {actual[:16]}… ≠ "
                             f"{expected[:16]}…)",
                             hint="restore the file, or re-import the model with `shieldkit import-model`")
    return actual


def split_class_spec(source: str) -> tuple[str, str] | None:
    """``"dir/mynet.py:Net"`` → ``("dir/mynet.py", "Net")``; ``None`` if ``source`` is not of that form."""
    if ":" not in source:
        return None
    file, cls = source.rsplit(":", 1)
    if not file.endswith(".py"):
        return None
    return file, cls


def parse_init_args(text: str | dict | None) -> dict:
    """``--init-args`` JSON → a kwargs dict (an object is required)."""
    if text is None:
        return {}
    if isinstance(text, dict):
        return dict(text)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"--init-args {text!r}: not valid JSON ({exc.msg} at character {exc.pos})",
                         hint="pass a JSON object, e.g. --init-args '{\"width\": 8}'") from exc
    if not isinstance(obj, dict):
        raise InputError(f"--init-args {text!r}: expected a JSON object (keyword arguments), got "
                         f"{type(obj).__name__}", hint="pass a JSON object, e.g. --init-args '{\"width\": 8}'")
    return obj


def load_module(path: str | Path):  # noqa: ANN201 - a module object
    """Import ``path`` under a content-derived module name (the same content → the same module)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingInputError(f"{path}: no such Python file", hint="check the path in FILE.py:ClassName")
    name = f"shieldkit_user_{sha256_file(path)[:24]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise InputError(f"{path}: cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - the user's code: any failure is reported as theirs
        del sys.modules[name]
        first = (str(exc).strip().splitlines() or [""])[0]
        raise InputError(f"{path}: importing it failed ({type(exc).__name__}: {first})"[:300],
                         hint=f"run `python {path}` to see the full error") from exc
    return module


def load_class(path: str | Path, cls_name: str) -> type[nn.Module]:
    """The ``nn.Module`` subclass ``cls_name`` defined in (or imported by) the file; close names suggested."""
    module = load_module(path)
    obj = getattr(module, cls_name, None)
    if obj is None:
        classes = [k for k, v in vars(module).items() if inspect.isclass(v) and issubclass(v, nn.Module)
                   and v.__module__ == module.__name__]
        close = difflib.get_close_matches(cls_name, classes, n=3, cutoff=0.5) or classes[:3]
        hint = (f"did you mean {' / '.join(f'{path}:{c}' for c in close)}?" if close
                else "the file defines no nn.Module subclass")
        raise InputError(f"{path} has no class {cls_name!r}", hint=hint)
    if not (inspect.isclass(obj) and issubclass(obj, nn.Module)):
        raise InputError(f"{path}:{cls_name} is not an nn.Module subclass ({type(obj).__name__})",
                         hint="point at the class of your network (a torch.nn.Module)")
    return obj


def build_from_file(path: str | Path, cls_name: str, init_args: dict | None = None) -> nn.Module:
    """``ClassName(**init_args)`` from the file, with the constructor's complaint as a clear error."""
    cls = load_class(path, cls_name)
    kwargs = dict(init_args or {})
    try:
        return cls(**kwargs)
    except TypeError as exc:
        try:
            sig = f"{cls_name}{inspect.signature(cls)}"
        except (TypeError, ValueError):
            sig = cls_name
        raise InputError(f"{cls_name}(**{json.dumps(kwargs)}) failed: {exc}"[:300],
                         hint=f"pass the constructor's keyword arguments with --init-args (signature: {sig})"[:200]
                         ) from exc
