"""TorchScript → eager (:func:`unscript`): synthesis needs forward hooks on BatchNorm layers and training needs
train-mode BN, neither of which a ScriptModule offers, so every BatchNorm becomes a real ``nn.BatchNorm*d``
with the same parameters and statistics, every container that holds one is re-created from its TorchScript
code (the code TorchScript prints is Python) and BN-free sub-trees stay compiled. Used by
:func:`shieldkit.models.importers.load_torchscript`, which checks the result against the compiled module.
"""

from __future__ import annotations
import __future__

import importlib
import re

import torch
from torch import nn

_BN_EAGER = {"BatchNorm1d": nn.BatchNorm1d, "BatchNorm2d": nn.BatchNorm2d, "BatchNorm3d": nn.BatchNorm3d}


def _script_original_name(m: nn.Module) -> str | None:
    return getattr(m, "original_name", None) if isinstance(m, torch.jit.ScriptModule) else None


def _contains_bn(m: nn.Module) -> bool:
    return any(_script_original_name(s) in _BN_EAGER or isinstance(s, nn.modules.batchnorm._BatchNorm)
               for s in m.modules())


def _eager_bn(m: torch.jit.ScriptModule) -> nn.Module:
    weight = getattr(m, "weight", None)
    rm = getattr(m, "running_mean", None)
    num = int((weight if weight is not None else rm).shape[0])
    eps = getattr(m, "eps", None)
    momentum = getattr(m, "momentum", None)
    if eps is None or momentum is None:  # traced BN: the constants are literals in its code
        nums = re.findall(r"batch_norm\([^)]*?,\s*(?:False|True),\s*([0-9.e+-]+),\s*([0-9.e+-]+)", m.code)
        momentum, eps = (float(nums[0][0]), float(nums[0][1])) if nums else (0.1, 1e-5)
    bn = _BN_EAGER[m.original_name](num, eps=float(eps), momentum=float(momentum), affine=weight is not None,
                                    track_running_stats=rm is not None)
    with torch.no_grad():
        for name, t in list(m.named_parameters(recurse=False)) + list(m.named_buffers(recurse=False)):
            getattr(bn, name).copy_(t)
    return bn.train(m.training)


class _QualifiedName:
    """Resolves TorchScript's ``__torch__.torch.nn.functional.relu`` (and mangled names) to Python objects."""

    def __init__(self, path: tuple[str, ...] = ()) -> None:
        self._path = path

    def __getattr__(self, part: str) -> object:
        if part.startswith("___torch_mangle"):
            return self
        path = (*self._path, part)
        for i in range(len(path), 0, -1):
            try:
                obj = importlib.import_module(".".join(path[:i]))
            except ImportError:
                continue
            for p in path[i:]:
                if not hasattr(obj, p):
                    return _QualifiedName(path)
                obj = getattr(obj, p)
            return obj
        return _QualifiedName(path)


class _TorchShim:
    """``torch`` as TorchScript prints it: in-place functions such as ``torch.add_(a, b)`` are methods."""

    def __getattr__(self, name: str) -> object:
        if hasattr(torch, name):
            return getattr(torch, name)
        if name.endswith("_"):
            return lambda t, *a, **k: getattr(t, name)(*a, **k)
        raise AttributeError(f"torch.{name}")


def _namespace(constants: dict) -> dict:
    import typing

    class _Consts:
        def __getattr__(self, k: str) -> object:
            return constants[k]

    return {"torch": _TorchShim(), "__torch__": _QualifiedName(), "ops": torch.ops, "Tensor": torch.Tensor,
            "annotate": lambda _t, v: v, "uninitialized": lambda _t: None, "unchecked_cast": lambda _t, v: v,
            "CONSTANTS": _Consts(), "List": typing.List, "Optional": typing.Optional,  # noqa: UP006
            "Tuple": typing.Tuple, "Dict": typing.Dict, "NoneType": type(None), "math": __import__("math")}  # noqa: UP006


def unscript(m: nn.Module) -> nn.Module:
    """An eager copy of a TorchScript module in which BatchNorm layers are real ``nn.BatchNorm*d``.

    ``nn.Linear`` layers are made eager too (the head's input is read by a hook). Sub-trees without
    either stay compiled (callable, trainable, their parameters shared with the
    result's state_dict under the same names). Raises if a container's code cannot be run as Python.
    """
    name = _script_original_name(m)
    if name is None:
        return m
    if name in _BN_EAGER:
        return _eager_bn(m)
    if name == "Linear":  # eager, so that the head's input (the features) can be read by a hook
        lin = nn.Linear(m.weight.shape[1], m.weight.shape[0], bias=getattr(m, "bias", None) is not None)
        with torch.no_grad():
            lin.load_state_dict(m.state_dict())
        return lin
    if not _contains_bn(m) and not any(_script_original_name(s) == "Linear" for s in m.modules()):
        return m
    methods: dict[str, object] = {}
    names = [n for n in m._c._method_names() if not n.startswith("__")]  # dunders (__len__) are not needed
    for meth in names:
        code, consts = getattr(m, meth).code_with_constants
        ns = _namespace(dict(getattr(consts, "const_mapping", consts)))
        code = re.sub(r"\)\.forward\(", ")(", code)  # call modules, not .forward: hooks must fire
        exec(compile(code, f"<torchscript {name}.{meth}>", "exec",  # noqa: S102 - code of the user's own model
                     flags=__future__.annotations.compiler_flag, dont_inherit=True), ns)
        methods[meth] = ns[meth]
    cls = type(f"Unscripted{name}", (nn.Module,), methods)
    eager = cls()
    for cname, child in m.named_children():
        eager.add_module(cname, unscript(child))
    for pname, p in m.named_parameters(recurse=False):
        eager.register_parameter(pname, nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad))
    for bname, b in m.named_buffers(recurse=False):
        eager.register_buffer(bname, b.detach().clone())
    code = "\n".join(getattr(m, meth).code for meth in names)
    for attr in set(re.findall(r"self\.([A-Za-z_]\w*)", code)) - {"training"}:
        if attr not in eager._modules and attr not in eager._parameters and attr not in eager._buffers:
            try:
                setattr(eager, attr, getattr(m, attr))
            except AttributeError:
                continue
    return eager.train(m.training)
