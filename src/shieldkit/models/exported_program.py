"""``torch.export`` archives (``.pt2``, written by ``torch.export.save``) as eager modules.

``torch.export.load(path).module()`` gives an FX ``GraphModule`` in which every layer is an ATen op
(``aten.conv2d``, ``aten.batch_norm``, ``aten.linear`` …) on lifted parameters: no ``nn.BatchNorm2d``
module to hook (DSS synthesis reads BN statistics through forward hooks on BN modules), no ``nn.Linear``
head to discover, and ``.train()`` raises ``NotImplementedError``.

:func:`eager_exported` therefore **rebuilds an eager module** (it does not read BN statistics from the graph
at synthesis time): every ``aten.batch_norm`` node becomes a call to a real ``nn.BatchNorm{1,2,3}d``
(dimension from the node's recorded input shape) holding that node's weight, bias, running mean/var, eps
and momentum; every ``aten.linear`` node becomes a real ``nn.Linear``; the graph is recompiled, and
``train()`` / ``eval()`` are the ordinary ``nn.Module`` ones again (so the BN layers switch to batch
statistics in train mode, like the original model). The other ops stay as they are. Other BN variants
(``_native_batch_norm_legit*``, seen in graphs lowered further than ``torch.export.export``'s default) are
left as ops: the model then imports without BatchNorm (a warning says synthesis will refuse it).

The archive keeps the shapes it was exported with: export with a dynamic batch dimension
(``dynamic_shapes=({0: torch.export.Dim("batch")},)``), or every batch must have the exported size.
The file is the user's own model, trusted like a TorchScript archive.
"""

from __future__ import annotations

import types
from pathlib import Path

import torch
from torch import nn

from shieldkit.errors import CorruptFileError, MissingInputError

_BN_BY_NDIM = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}


def is_exported_program_file(path: str | Path) -> bool:
    return Path(path).suffix == ".pt2"


def load_exported(path: str | Path) -> nn.Module:
    """``torch.export.load`` + :func:`eager_exported`, with clear errors for a missing or unreadable file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingInputError(f"{path}: no such torch.export archive", hint="check the path")
    try:
        ep = torch.export.load(str(path))
    except Exception as exc:  # noqa: BLE001 - whatever the deserialiser raises
        first = (str(exc).strip().splitlines() or [""])[0]
        raise CorruptFileError(f"{path}: not a readable torch.export archive ({type(exc).__name__}: {first})"[:300],
                               hint="write it with torch.export.save(torch.export.export(model, args), FILE)"
                               ) from exc
    return eager_exported(ep.module())


def eager_exported(m: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Replace ``aten.batch_norm`` / ``aten.linear`` nodes by real modules (see the module docstring)."""
    g = m.graph
    tensors = {**dict(m.named_parameters()), **dict(m.named_buffers())}

    def attr(node: object) -> torch.Tensor | None:
        if node is None:
            return None
        if getattr(node, "op", None) != "get_attr" or node.target not in tensors:
            raise ValueError(f"expected a parameter, got {node}")
        return tensors[node.target]

    counts = {"bn": 0, "fc": 0}
    for node in list(g.nodes):
        if node.op != "call_function":
            continue
        if node.target == torch.ops.aten.batch_norm.default:
            x, w, b, rm, rv, _training, momentum, eps = node.args[:8]
            val = x.meta.get("val") if hasattr(x, "meta") else None
            rmt = attr(rm)
            if val is None or val.ndim not in _BN_BY_NDIM or rmt is None:
                continue
            layer = _BN_BY_NDIM[val.ndim](rmt.shape[0], eps=float(eps), momentum=float(momentum),
                                          affine=w is not None)
            with torch.no_grad():
                if w is not None:
                    layer.weight.copy_(attr(w))
                    layer.bias.copy_(attr(b))
                layer.running_mean.copy_(rmt)
                layer.running_var.copy_(attr(rv))
            name, args = f"bn{counts['bn']}", (x,)
            counts["bn"] += 1
        elif node.target == torch.ops.aten.linear.default:
            x, w = node.args[:2]
            b = node.args[2] if len(node.args) > 2 else None
            wt = attr(w)
            layer = nn.Linear(wt.shape[1], wt.shape[0], bias=b is not None)
            with torch.no_grad():
                layer.weight.copy_(wt)
                if b is not None:
                    layer.bias.copy_(attr(b))
            name, args = f"fc{counts['fc']}", (x,)
            counts["fc"] += 1
        else:
            continue
        m.add_module(name, layer.train(False))
        with g.inserting_before(node):
            new = g.call_module(name, args)
        node.replace_all_uses_with(new)
        g.erase_node(node)
    g.eliminate_dead_code()
    m.delete_all_unused_submodules()
    m.recompile()
    m.train = types.MethodType(nn.Module.train, m)  # ExportedProgram modules refuse train()
    m.eval = types.MethodType(nn.Module.eval, m)
    return m.train(False)

