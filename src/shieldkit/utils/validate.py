"""Input validation shared by the Python API and the CLI (issue 13).

Every validator is pure (it never creates files or touches the network), returns the parsed value and
raises :class:`~shieldkit.errors.InputError` (or :class:`~shieldkit.errors.DependencyError` for a device
that is not there) with a message that names the flag, so the CLI's top-level handler can print it as
1-3 lines. The API functions call the same validators with their own argument names as ``flag``.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from shieldkit.errors import DependencyError, InputError

NORMS = ("linf", "l2")
DEVICE_HELP = "use --device auto, cpu, cuda, cuda:N or mps"


def _suggest(value: str, choices: Iterable[str]) -> str:
    choices = list(choices)
    close = difflib.get_close_matches(str(value), choices, n=1)
    return f"did you mean {close[0]!r}?" if close else f"choose from {', '.join(choices)}"


def check_choice(value: str, choices: Iterable[str], flag: str) -> str:
    """``value`` must be one of ``choices`` (suggests the closest one)."""
    choices = tuple(choices)
    if value not in choices:
        raise InputError(f"{flag} {value}: must be one of {', '.join(choices)}", hint=_suggest(value, choices))
    return value


def check_norm(norm: str, flag: str = "--norm") -> str:
    return check_choice(norm, NORMS, flag)


def parse_eps(text: str | float | int, flag: str = "--eps") -> float:
    """Parse ε given as a number or a fraction such as ``8/255`` (finite, else :class:`InputError`)."""
    if isinstance(text, bool):
        raise InputError(f"{flag} {text}: not a number", hint=f"give e.g. {flag} 8/255 or {flag} 0.03")
    if isinstance(text, int | float):
        value = float(text)
    else:
        s = str(text).strip()
        try:
            if "/" in s:
                num, den = s.split("/", 1)
                value = float(num) / float(den)
            else:
                value = float(s)
        except ZeroDivisionError:
            raise InputError(f"{flag} {text}: division by zero", hint=f"give e.g. {flag} 8/255") from None
        except ValueError:
            raise InputError(f"{flag} {text}: not a number or a fraction",
                             hint=f"give e.g. {flag} 8/255 or {flag} 0.03") from None
    if not math.isfinite(value):
        raise InputError(f"{flag} {text}: must be a finite number", hint=f"give e.g. {flag} 8/255")
    return value


def check_eps(eps: str | float, norm: str = "linf", dim: int | None = None, flag: str = "--eps") -> float:
    """ε for the threat model on [0,1] images: ℓ∞ 0 < ε ≤ 1; ℓ2 0 < ε ≤ √d (d = input dimension, if known)."""
    value = parse_eps(eps, flag)
    norm = check_norm(norm)
    if value <= 0:
        raise InputError(f"{flag} {eps}: must be > 0", hint=f"give e.g. {flag} 8/255")
    if norm == "linf" and value > 1:
        raise InputError(f"{flag} {eps}: ℓ∞ budget must be ≤ 1 (pixels are in [0, 1])",
                         hint=f"give e.g. {flag} 8/255 (written as a fraction of the pixel range)")
    if norm == "l2" and dim is not None and value > math.sqrt(dim):
        raise InputError(f"{flag} {eps}: ℓ2 budget must be ≤ √d = {math.sqrt(dim):.4g} for {dim}-d inputs in [0, 1]",
                         hint=f"give a smaller {flag}, e.g. {flag} 0.5")
    return value


def _number(value: Any, flag: str, kind: type) -> Any:
    if isinstance(value, bool):
        raise InputError(f"{flag} {value}: not a number")
    if isinstance(value, str):
        try:
            value = kind(value.strip())
        except ValueError:
            raise InputError(f"{flag} {value}: not {'an integer' if kind is int else 'a number'}") from None
    if kind is int:
        if isinstance(value, float):
            if not value.is_integer():
                raise InputError(f"{flag} {value}: must be a whole number")
            value = int(value)
        if not isinstance(value, int):
            raise InputError(f"{flag} {value!r}: must be an integer")
        return value
    if not isinstance(value, int | float):
        raise InputError(f"{flag} {value!r}: must be a number")
    value = float(value)
    if not math.isfinite(value):
        raise InputError(f"{flag} {value}: must be a finite number")
    return value


def check_positive_int(value: Any, flag: str) -> int:
    """A count (samples, points, epochs, steps, batch size): an integer ≥ 1."""
    v = _number(value, flag, int)
    if v < 1:
        raise InputError(f"{flag} {value}: must be a positive integer (≥ 1)")
    return v


def check_nonnegative_int(value: Any, flag: str) -> int:
    """A count where 0 means "off" (e.g. ``--eval-n 0``)."""
    v = _number(value, flag, int)
    if v < 0:
        raise InputError(f"{flag} {value}: must be ≥ 0 (0 turns it off)")
    return v


def check_positive_float(value: Any, flag: str) -> float:
    """σ, radii, learning rates, temperatures: a finite number > 0."""
    v = _number(value, flag, float)
    if v <= 0:
        raise InputError(f"{flag} {value}: must be > 0")
    return v


def check_nonnegative_float(value: Any, flag: str) -> float:
    v = _number(value, flag, float)
    if v < 0:
        raise InputError(f"{flag} {value}: must be ≥ 0")
    return v


def check_fraction(value: Any, flag: str, closed: bool = False) -> float:
    """A probability/fraction: 0 < value < 1, or 0 ≤ value ≤ 1 with ``closed=True``."""
    v = _number(value, flag, float)
    ok = (0 <= v <= 1) if closed else (0 < v < 1)
    if not ok:
        raise InputError(f"{flag} {value}: must be {'in [0, 1]' if closed else 'strictly between 0 and 1'}")
    return v


def check_num_classes(value: Any, flag: str = "--num-classes") -> int:
    v = _number(value, flag, int)
    if v < 2:
        raise InputError(f"{flag} {value}: a classifier needs at least two classes")
    return v


def parse_int_list(text: str, flag: str) -> list[int]:
    """Comma-separated positive integers → sorted unique list (e.g. ``--budgets 100,2500``)."""
    try:
        out = sorted({int(b) for b in str(text).split(",") if b.strip()})
    except ValueError:
        raise InputError(f"{flag} {text}: must be comma-separated integers",
                         hint=f"give e.g. {flag} 100,2500") from None
    if not out or out[0] <= 0:
        raise InputError(f"{flag} {text}: must be positive integers", hint=f"give e.g. {flag} 100,2500")
    return out


def parse_float_list(text: str, flag: str, positive: bool = True) -> list[float]:
    """Comma-separated finite numbers (> 0 with ``positive``), e.g. ``--radii 0.25,0.5``."""
    try:
        out = [float(t) for t in str(text).split(",") if t.strip()]
    except ValueError:
        raise InputError(f"{flag} {text}: must be comma-separated numbers", hint=f"give e.g. {flag} 0.25,0.5") from None
    if not out or not all(math.isfinite(v) for v in out) or (positive and min(out) <= 0):
        raise InputError(f"{flag} {text}: must be {'positive ' if positive else ''}finite numbers",
                         hint=f"give e.g. {flag} 0.25,0.5")
    return out


def _check_parent_writable(path: Path, flag: str) -> None:
    anc = path.parent if not path.exists() else path
    while not anc.exists():
        if anc == anc.parent:
            break
        anc = anc.parent
    if anc.exists() and not anc.is_dir():
        raise InputError(f"{flag} {path}: {anc} is a file, so the folder cannot be created",
                         hint=f"choose another {flag} path")
    if anc.exists() and not os.access(anc, os.W_OK | os.X_OK):
        raise InputError(f"{flag} {path}: {anc} is not writable", hint=f"choose a {flag} you can write to")


def check_out_dir(path: str | Path | None, flag: str = "--out") -> Path | None:
    """An output *folder*: not an existing file; it or its nearest existing ancestor is a writable folder.
    Nothing is created."""
    if path is None:
        return None
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise InputError(f"{flag} {p}: is an existing file, not a folder", hint=f"give a folder path for {flag}")
    _check_parent_writable(p, flag)
    return p


def check_out_file(path: str | Path | None, flag: str = "--out") -> Path | None:
    """An output *file* (or a path prefix such as weights without extension): not an existing folder and
    its folder creatable/writable. Nothing is created."""
    if path is None:
        return None
    p = Path(path).expanduser()
    if p.is_dir():
        raise InputError(f"{flag} {p}: is an existing folder, a file path is expected",
                         hint=f"give a file path for {flag}, e.g. {p / 'results.json'}")
    _check_parent_writable(p, flag)
    return p


def check_existing_file(path: str | Path | None, flag: str) -> Path | None:
    """An input file that must exist (a folder or a missing path is an error naming the flag)."""
    from shieldkit.errors import MissingInputError

    if path is None:
        return None
    p = Path(path).expanduser()
    if not p.exists():
        raise MissingInputError(f"{flag} {p}: no such file", hint=f"check the {flag} path")
    return p


def check_existing_dir(path: str | Path | None, flag: str) -> Path | None:
    from shieldkit.errors import MissingInputError

    if path is None:
        return None
    p = Path(path).expanduser()
    if not p.exists():
        raise MissingInputError(f"{flag} {p}: no such folder", hint=f"check the {flag} path")
    if not p.is_dir():
        raise InputError(f"{flag} {p}: is a file, a folder is expected")
    return p


_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda)(:(\d+))?$")


def resolve_device(name: Any = "auto", flag: str = "--device"):  # noqa: ANN201 - torch.device (lazy torch import)
    """``auto | cpu | cuda | cuda:N | mps`` → ``torch.device``; an unavailable device is a
    :class:`DependencyError` naming the flag, an unknown name an :class:`InputError`."""
    import torch

    if name is None:
        name = "auto"
    if isinstance(name, torch.device):
        name = str(name)
    text = str(name).strip().lower()
    m = _DEVICE_RE.match(text)
    if not m or (m.group(1) in ("auto", "cpu") and m.group(2)):
        raise InputError(f"{flag} {name}: unknown device", hint=DEVICE_HELP)
    kind, index = m.group(1), m.group(3)
    if kind == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cpu":
        return torch.device("cpu")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise DependencyError(f"{flag} {name}: CUDA is not available on this machine; use --device cpu or auto")
        if index is not None and int(index) >= torch.cuda.device_count():
            raise DependencyError(f"{flag} {name}: only {torch.cuda.device_count()} CUDA device(s) on this machine",
                                  hint=f"use --device cuda:0 … cuda:{torch.cuda.device_count() - 1}, or auto")
        return torch.device(text)
    mps = getattr(torch.backends, "mps", None)
    if mps is None or not mps.is_available():
        raise DependencyError(f"{flag} {name}: MPS (Apple GPU) is not available on this machine; "
                              "use --device cpu or auto")
    return torch.device(text)


def check_model_path(path: str | Path | None, flag: str = "--model") -> Path | None:
    """A shieldkit model: ``X.safetensors`` with its ``X.json`` sidecar (path given with or without the
    extension). Only existence is checked here; the file's contents are checked when it is read."""
    from shieldkit.errors import MissingInputError

    if path is None:
        return None
    p = Path(path).expanduser()
    stem = p.with_suffix("") if p.suffix in (".safetensors", ".json") else p
    weights, sidecar = stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")
    if p.suffix not in ("", ".safetensors", ".json") and p.is_file():
        raise InputError(f"{flag} {p}: a shieldkit model is a .safetensors file with a .json sidecar",
                         hint="import other weights with `shieldkit import-model ... --weights FILE`")
    for f in (weights, sidecar):
        if not f.exists():
            raise MissingInputError(f"{flag} {p}: {f} is missing",
                                    hint="a model is X.safetensors + its X.json sidecar (written by "
                                         "`shieldkit teacher`, `train-synthetic` or `import-model`)")
    return p


def check_model_fits_data(model: Any, dataset: Any, model_flag: str = "--model", data_flag: str = "--data",
                          data_name: str | None = None) -> None:
    """The model card's input channels, image size and classes match the dataset's (else an
    :class:`~shieldkit.errors.IncompatibleError` instead of a long convolution traceback)."""
    from shieldkit.errors import IncompatibleError

    card = getattr(model, "card", None)
    shape = tuple(getattr(dataset, "image_shape", ()) or ())
    if card is None or len(shape) != 3:
        return
    name = data_name or getattr(dataset, "name", data_flag)
    # image size is not checked: architectures with adaptive pooling accept other sizes
    checks = [("input channels", getattr(card, "in_channels", None), shape[0])]
    ncls = getattr(dataset, "num_classes", None)
    checks.append(("classes", getattr(card, "num_classes", None), ncls))
    for what, have, want in checks:
        if have is not None and want is not None and int(have) != int(want):
            raise IncompatibleError(f"{model_flag}: the model takes {have} {what} but {data_flag} {name} has {want}",
                                    hint=f"use a model trained for {name}, or another {data_flag}")
