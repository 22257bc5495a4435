"""Incremental evaluation of images that differ from cached ones in one small window (item 3 of
:mod:`shieldkit.attacks.fast_autoattack`): the model is traced with ``torch.fx``; its leading convolution /
pooling / point-wise layers are recomputed only on the tile a changed window can reach, from cached maps,
and the rest runs in full — giving the same floats as a full forward on CPU (re-checked at run time)."""

from __future__ import annotations

import math
import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from shieldkit.attacks.fast_kernels import _pair, fast_max_pool

# ------------------------------------------------------------------------------ incremental evaluation
Region = tuple[int, int, int, int]  # rows [r0, r1) × cols [c0, c1) of a feature map


class _MismatchError(RuntimeError):
    """An incremental evaluation differed from the full forward."""


_POINTWISE_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardtanh, nn.Identity, nn.Dropout, nn.Dropout2d,
                      nn.BatchNorm2d)
_POINTWISE_FUNCS = {operator.add, operator.sub, operator.mul, operator.truediv, torch.add, torch.sub, torch.mul,
                    torch.div, torch.relu, F.relu}


class _Node:
    __slots__ = ("arg_nodes", "call", "kind", "name", "pad_value", "params", "shape")

    def __init__(self, name: str, kind: str) -> None:
        self.name, self.kind = name, kind
        self.arg_nodes: list[str] = []  # local tensor inputs
        self.call: Any = None  # how to compute the node from its inputs' tensors
        self.params: tuple = ()  # window ops: (kernel, stride, padding, dilation)
        self.pad_value = 0.0
        self.shape: tuple[int, int] = (0, 0)


class PatchEvaluator:
    """Logits of images that differ from cached "base" images only inside a small window.

    ``prime(x)`` evaluates the batch in full and caches, per image ("slot"), the feature maps of the
    model's *local prefix*: the traced nodes, in order, that are NCHW convolutions (zero padding),
    max-pools (no ceil mode) or point-wise ops (eval batch-norm, ReLU-like clamps, arithmetic with
    per-channel constants), fed only by the input or by such nodes. ``query(slots, x_new)`` recomputes
    each local node only on the rows/columns the changed pixels can reach (a bounding box, grown by
    each window op's receptive field), from the cached maps with the new values pasted in; the nodes
    after the prefix run in full on the patched maps. ``commit(rows)`` makes queried images the new
    bases of their slots. Unsupported models raise ``ValueError`` at construction.
    """

    def __init__(self, model: nn.Module) -> None:
        import torch.fx

        if model.training:
            raise ValueError("model is in training mode")
        try:
            gm = torch.fx.symbolic_trace(model)
        except Exception as exc:  # noqa: BLE001 - any tracing failure means "not supported"
            raise ValueError(f"torch.fx cannot trace the model: {exc}") from exc
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.nodes: dict[str, _Node] = {}
        self.order: list[str] = []
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        if len(placeholders) != 1:
            raise ValueError("model must take exactly one input")
        self.input = placeholders[0].name
        consts: dict[str, torch.Tensor] = {}
        for n in gm.graph.nodes:
            if n.op == "placeholder":
                self._add(_Node(n.name, "input"))
            elif n.op == "get_attr":
                consts[n.name] = _fetch_attr(gm, n.target)
            else:
                node = self._classify(n, consts)
                if node is not None:
                    self._add(node)
        self.fx_nodes = {n.name: n for n in gm.graph.nodes}
        users = {name: [u for u in self.fx_nodes[name].users] for name in self.order}
        # nodes read from the cache: inputs of window / binary ops, and the frontier (read by the rest)
        self.frontier = [name for name in self.order if any(u.name not in self.nodes for u in users[name])]
        self.cached = set(self.frontier)
        for name in self.order:
            nd = self.nodes[name]
            if nd.kind == "window" or len(nd.arg_nodes) > 1:
                self.cached.update(nd.arg_nodes)
        self.cached.add(self.input)
        self.stem = self._find_stem(users)
        self.cached.difference_update(self.stem)
        # cached maps are stored with a border ring of their consumers' padding (zeros for convolutions, -inf
        # for padded max-pools), so that every tile is a plain slice; (ring width, value) per cached node
        self.ring: dict[str, tuple[int, float]] = {}
        for name in self.cached:
            pads = {(max(self.nodes[u.name].params[2]), self.nodes[u.name].pad_value)
                    for u in users[name] if u.name in self.nodes and self.nodes[u.name].kind == "window"}
            pads = {(p, v) for p, v in pads if p > 0}
            self.ring[name] = next(iter(pads)) if len(pads) == 1 else (0, 0.0)
        # an in-place point-wise op must not overwrite a map that is cached or read by another node
        self.shared = {name for name in self.order if name in self.cached or len(users[name]) > 1}
        self.rest = self._build_rest()
        if not any(self.nodes[n].kind == "window" for n in self.order):
            raise ValueError("no convolution / pooling layers before the first global op")
        self.cache: dict[str, torch.Tensor] = {}
        self.max_fraction = 0.2  # bounding boxes larger than this share of the image are evaluated in full
        self._pending: tuple | None = None

    # -------------------------------------------------------------------------------- graph analysis
    def _find_stem(self, users: dict[str, list]) -> list[str]:
        """The chain input → point-wise ops → the first window op → point-wise ops that ends where the second
        window op reads it, every node with a single user: its tiles are recomputed from the queried images
        (cheap: the first layer has few input channels) instead of being cut from cached maps."""
        chain: list[str] = []
        cur, windows = self.input, 0
        while True:
            nxt = [u.name for u in users[cur] if u.name in self.nodes]
            if len(nxt) != 1 or self.nodes[nxt[0]].arg_nodes != [cur]:
                return []
            nd = self.nodes[nxt[0]]
            if nd.kind == "window" and windows == 1:  # the second window op: the stem ends at ``cur``
                return chain if cur != self.input and cur not in self.frontier else []
            if cur != self.input and (len(users[cur]) != 1 or cur in self.frontier):
                return []
            windows += nd.kind == "window"
            chain.append(nd.name)
            cur = nd.name

    def _add(self, node: _Node) -> None:
        self.nodes[node.name] = node
        self.order.append(node.name)

    def _classify(self, n: Any, consts: dict[str, torch.Tensor]) -> _Node | None:
        import torch.fx

        tensor_args = [a for a in (*n.args, *n.kwargs.values()) if isinstance(a, torch.fx.Node)]
        local = [a.name for a in tensor_args if a.name in self.nodes]
        if not local or len(local) + sum(a.name in consts for a in tensor_args) != len(tensor_args):
            return None  # reads something global
        for a in tensor_args:
            if a.name in consts and not _broadcasts_per_channel(consts[a.name]):
                return None
        node = _Node(n.name, "pointwise")
        node.arg_nodes = local
        if n.op == "call_module":
            mod = self.modules[n.target]
            if isinstance(mod, nn.Conv2d) and type(mod) is nn.Conv2d and len(n.args) == 1 and not n.kwargs:
                if mod.padding_mode != "zeros" or isinstance(mod.padding, str):
                    return None
                node.kind = "window"
                node.params = (_pair(mod.kernel_size), _pair(mod.stride), _pair(mod.padding), _pair(mod.dilation))
                w, b, g, st, dil = mod.weight, mod.bias, mod.groups, node.params[1], node.params[3]
                node.call = lambda t, w=w, b=b, st=st, dil=dil, g=g: F.conv2d(t, w, b, st, 0, dil, g)
                return node
            if type(mod) is nn.MaxPool2d and len(n.args) == 1 and not n.kwargs:
                if mod.ceil_mode or mod.return_indices:
                    return None
                node.kind, node.pad_value = "window", -math.inf
                node.params = (_pair(mod.kernel_size), _pair(mod.stride or mod.kernel_size), _pair(mod.padding),
                               _pair(mod.dilation))
                k, st, dil = node.params[0], node.params[1], node.params[3]
                node.call = lambda t, k=k, st=st, dil=dil: fast_max_pool(t, k, st, 0, dil)
                return node
            if isinstance(mod, _POINTWISE_MODULES) and len(n.args) == 1 and not n.kwargs:
                if isinstance(mod, nn.BatchNorm2d) and (mod.training or mod.running_mean is None):
                    return None
                if isinstance(mod, nn.Dropout | nn.Dropout2d) and mod.training:
                    return None
                inplace = bool(getattr(mod, "inplace", False))
                node.call = _module_call(mod, inplace)
                return node
            return None
        if n.op == "call_function" and n.target in _POINTWISE_FUNCS:
            node.call = _function_call(n, consts)
            return node
        if n.op == "call_method" and n.target == "relu" and len(n.args) == 1:
            node.call = _function_call(n, consts, fn=torch.relu)
            return node
        return None

    def _build_rest(self) -> nn.Module:
        """A GraphModule of the nodes after the local prefix: ``rest(x, *frontier maps) → logits``."""
        import torch.fx

        g = torch.fx.Graph()
        env: dict = {self.fx_nodes[self.input]: g.placeholder("x")}
        self.rest_inputs = [f for f in self.frontier if f != self.input]
        for f in self.rest_inputs:
            env[self.fx_nodes[f]] = g.placeholder(f"frontier_{f}")
        for n in self.gm.graph.nodes:
            if n.name in self.nodes:
                continue
            env[n] = g.node_copy(n, lambda a: env[a])
        return torch.fx.GraphModule(self.gm, g)

    # ------------------------------------------------------------------------------------- evaluation
    def _run_rest(self, x: torch.Tensor, frontier: dict[str, torch.Tensor]) -> torch.Tensor:
        """The nodes after the local prefix, run on the given frontier maps."""
        return self.rest(x, *[frontier[f] for f in self.rest_inputs])

    def _full(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Full evaluation of ``x``; the cached nodes' maps and the logits."""
        vals: dict[str, torch.Tensor] = {self.input: x}
        keep: dict[str, torch.Tensor] = {self.input: x}
        for name in self.order[1:]:
            nd = self.nodes[name]
            args = [vals[a] for a in nd.arg_nodes]
            if nd.kind == "window":
                out = self._module_of(name)(args[0])
            else:
                args = [a.clone() if nd.call.inplace and a_name in self.shared else a
                        for a, a_name in zip(args, nd.arg_nodes, strict=True)]
                out = nd.call(*args)
            vals[name] = out
            nd.shape = (int(out.shape[-2]), int(out.shape[-1]))
            if name in self.cached:
                keep[name] = out
        self.nodes[self.input].shape = (int(x.shape[-2]), int(x.shape[-1]))
        logits = self._run_rest(x, {f: vals[f] for f in self.frontier})
        return logits, keep

    def _module_of(self, name: str) -> nn.Module:
        return self.modules[self.fx_nodes[name].target]

    def prime(self, x: torch.Tensor) -> torch.Tensor:
        """Evaluate ``x`` in full and make its images the bases of slots 0..n-1."""
        with torch.no_grad():
            logits, keep = self._full(x)
        self.cache = {k: self._store(k, v) for k, v in keep.items()}
        self.active = torch.arange(len(x))
        self._pending = None
        return logits

    def _compact(self, slots: torch.Tensor) -> None:
        """Keep only the rows of ``slots`` (a subset of the active slots, in order) in the cache."""
        if len(slots) == len(self.active) and torch.equal(slots, self.active):
            return
        lut = torch.full((int(self.active.max()) + 1,), -1, dtype=torch.long)
        lut[self.active] = torch.arange(len(self.active))
        if int(slots.max()) >= len(lut) or bool((lut[slots] < 0).any()):
            raise ValueError("queried slots are not among the cached ones")
        pos = lut[slots]
        self.cache = {k: v.index_select(0, pos) for k, v in self.cache.items()}
        self.active = slots.clone()

    def query(self, slots: torch.Tensor, x_new: torch.Tensor) -> torch.Tensor:
        """Logits of ``x_new`` (row i differs from the base of ``slots[i]`` only inside a window)."""
        with torch.no_grad():
            self._compact(slots)
            base = self._view(self.input)
            changed = (x_new != base).any(dim=1).any(dim=0)
            H, W = self.nodes[self.input].shape
            rows, cols = changed.any(dim=1).nonzero(), changed.any(dim=0).nonzero()
            region = (None if len(rows) == 0 else
                      (int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1))
            if region is not None and (region[1] - region[0]) * (region[3] - region[2]) > self.max_fraction * H * W:
                logits, keep = self._full(x_new)
                full = {k: (v, (0, v.shape[-2], 0, v.shape[-1])) for k, v in keep.items()}
                self._pending = full
                return logits
            new: dict[str, tuple[torch.Tensor, Region] | None] = {
                self.input: None if region is None else (x_new[:, :, region[0]:region[1], region[2]:region[3]], region)}
            for name in self.order[1:]:
                new[name] = self._stem_region(name, new) if name in self.stem else self._local(name, new, x_new)
            frontier = {f: self._materialise(f, new[f]) for f in self.frontier}
            logits = self._run_rest(x_new, frontier)
            self._pending = {k: v for k, v in new.items() if k in self.cached and v is not None}
            return logits

    def commit(self, rows: torch.Tensor) -> None:
        """Rows (of the last query) whose images become their slots' new bases."""
        if self._pending is None:
            return
        new = self._pending
        self._pending = None
        if not bool(rows.any()):
            return
        sel = rows.nonzero().flatten()
        for name, (vals, (r0, r1, c0, c1)) in new.items():
            p = self.ring[name][0]
            self.cache[name][:, :, r0 + p:r1 + p, c0 + p:c1 + p].index_copy_(0, sel, vals.index_select(0, sel))

    # -------------------------------------------------------------------------------------- helpers
    def _store(self, name: str, t: torch.Tensor) -> torch.Tensor:
        p, v = self.ring[name]
        return F.pad(t, (p, p, p, p), value=v) if p else t.clone()

    def _view(self, name: str) -> torch.Tensor:
        """The cached map of ``name`` without its border ring."""
        p = self.ring[name][0]
        t = self.cache[name]
        return t[:, :, p:t.shape[-2] - p, p:t.shape[-1] - p] if p else t

    def _crop(self, name: str, area: Region, new: tuple | None, pad: float) -> torch.Tensor:
        """Node ``name``'s map on ``area`` (may exceed the map: padded with ``pad``), new values pasted."""
        H, W = self.nodes[name].shape
        p, ring_value = self.ring[name]
        r0, r1, c0, c1 = area
        src = self.cache[name]
        if r0 >= -p and c0 >= -p and r1 <= H + p and c1 <= W + p and (p == 0 or ring_value == pad or (
                r0 >= 0 and c0 >= 0 and r1 <= H and c1 <= W)):
            t = src[:, :, r0 + p:r1 + p, c0 + p:c1 + p].clone(memory_format=torch.contiguous_format)
        else:
            a0, a1, b0, b1 = max(r0, 0), min(r1, H), max(c0, 0), min(c1, W)
            t = src.new_full((src.shape[0], src.shape[1], r1 - r0, c1 - c0), pad)
            t[:, :, a0 - r0:a1 - r0, b0 - c0:b1 - c0] = src[:, :, a0 + p:a1 + p, b0 + p:b1 + p]
        if new is not None:
            vals, (n0, n1, m0, m1) = new
            i0, i1, j0, j1 = max(n0, r0), min(n1, r1), max(m0, c0), min(m1, c1)
            if i0 < i1 and j0 < j1:
                t[:, :, i0 - r0:i1 - r0, j0 - c0:j1 - c0] = vals[:, :, i0 - n0:i1 - n0, j0 - m0:j1 - m0]
        return t

    def _window_reach(self, nd: _Node, region: Region) -> tuple[Region, Region] | None:
        """(output region a window op's changed input ``region`` reaches, the input area it reads) or None."""
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = nd.params
        r0, r1, c0, c1 = region
        H, W = nd.shape
        o0, o1 = _reach(r0, r1, kh, sh, ph, dh, H)
        q0, q1 = _reach(c0, c1, kw, sw, pw, dw, W)
        if o0 >= o1 or q0 >= q1:
            return None
        return (o0, o1, q0, q1), _input_area(nd, (o0, o1, q0, q1))

    def _stem_region(self, name: str, new: dict) -> tuple[None, Region] | None:
        """Stem nodes carry only their changed region (their values are recomputed by :meth:`_stem_tile`)."""
        nd = self.nodes[name]
        prev = new[nd.arg_nodes[0]]
        if prev is None:
            return None
        if nd.kind != "window":
            return None, prev[1]
        reach = self._window_reach(nd, prev[1])
        return None if reach is None else (None, reach[0])

    def _stem_tile(self, x_new: torch.Tensor, area: Region, pad: float) -> torch.Tensor:
        """The stem's output on ``area`` (padded with ``pad`` outside the map), computed from ``x_new``."""
        need: list[Region] = []  # need[i]: the in-map region stem node i must produce
        want = area
        for name in reversed(self.stem):
            nd = self.nodes[name]
            H, W = nd.shape
            got = (max(want[0], 0), min(want[1], H), max(want[2], 0), min(want[3], W))
            need.append(got)
            want = _input_area(nd, got) if nd.kind == "window" else got
        need.reverse()
        H, W = self.nodes[self.input].shape
        have = (max(want[0], 0), min(want[1], H), max(want[2], 0), min(want[3], W))
        t, fresh = x_new[:, :, have[0]:have[1], have[2]:have[3]], False
        for name, got in zip(self.stem, need, strict=True):
            nd = self.nodes[name]
            if nd.kind == "window":
                t, fresh = _pad_to(t, _input_area(nd, got), have, nd.pad_value), True
            elif nd.call.inplace and not fresh:
                t = t.clone()
            t, fresh, have = nd.call(t), True, got
        return _pad_to(t, area, have, pad)

    def _local(self, name: str, new: dict, x_new: torch.Tensor | None = None) -> tuple[torch.Tensor, Region] | None:
        nd = self.nodes[name]
        ins = [new[a] for a in nd.arg_nodes]
        if nd.kind == "window":
            if ins[0] is None:
                return None
            reach = self._window_reach(nd, ins[0][1])
            if reach is None:
                return None
            out_region, area = reach
            if self.stem and nd.arg_nodes[0] == self.stem[-1]:
                t = self._stem_tile(x_new, area, nd.pad_value)
            else:
                t = self._crop(nd.arg_nodes[0], area, ins[0], nd.pad_value)
            return nd.call(t), out_region
        live = [i for i in ins if i is not None]
        if not live:
            return None
        regions = [r for _, r in live]
        box = (min(r[0] for r in regions), max(r[1] for r in regions),
               min(r[2] for r in regions), max(r[3] for r in regions))
        args = []
        for a_name, i in zip(nd.arg_nodes, ins, strict=True):
            if i is not None and i[1] == box:
                t = i[0]
                args.append(t.clone() if nd.call.inplace and a_name in self.shared else t)
            else:
                args.append(self._crop(a_name, box, i, 0.0))
        return nd.call(*args), box

    def _materialise(self, name: str, new: tuple | None) -> torch.Tensor:
        t = self._view(name).clone(memory_format=torch.contiguous_format)
        if new is not None:
            vals, (r0, r1, c0, c1) = new
            t[:, :, r0:r1, c0:c1] = vals
        return t


def _input_area(nd: _Node, out: Region) -> Region:
    """The input rows/columns a window op reads to produce the output region ``out`` (may exceed the map)."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = nd.params
    o0, o1, q0, q1 = out
    return (o0 * sh - ph, (o1 - 1) * sh - ph + dh * (kh - 1) + 1, q0 * sw - pw, (q1 - 1) * sw - pw + dw * (kw - 1) + 1)


def _pad_to(t: torch.Tensor, want: Region, have: Region, value: float) -> torch.Tensor:
    """``t`` holds the region ``have``; pad it with ``value`` to the enclosing region ``want`` (contiguous)."""
    if want == have:
        return t.contiguous()
    return F.pad(t, (have[2] - want[2], want[3] - have[3], have[0] - want[0], want[1] - have[1]), value=value)


def _reach(i0: int, i1: int, k: int, s: int, p: int, d: int, n_out: int) -> tuple[int, int]:
    """Output positions [o0, o1) of a window op whose receptive field meets input positions [i0, i1)."""
    o0 = max(0, -((-(i0 + p - d * (k - 1))) // s))  # ceil division
    o1 = min(n_out, (i1 - 1 + p) // s + 1)
    return o0, o1


def _fetch_attr(gm: nn.Module, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _broadcasts_per_channel(t: Any) -> bool:
    """A constant that multiplies/adds the same value at every pixel (shape (1|N, C, 1, 1), (C, 1, 1) or scalar)."""
    if not isinstance(t, torch.Tensor):
        return True
    if t.ndim >= 3:
        return t.shape[-1] == 1 and t.shape[-2] == 1 and (t.ndim == 3 or t.shape[0] == 1)
    return t.numel() == 1


class _Call:
    """A point-wise computation; ``inplace`` says whether it overwrites its (first) input."""

    def __init__(self, fn: Any, inplace: bool) -> None:
        self.fn, self.inplace = fn, inplace

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        return self.fn(*args)


def _module_call(mod: nn.Module, inplace: bool) -> _Call:
    """The module's own computation; eval batch-norm and ReLU call the op ``forward`` would call, directly."""
    if type(mod) is nn.BatchNorm2d:
        return _Call(lambda t: torch.batch_norm(t, mod.weight, mod.bias, mod.running_mean, mod.running_var, False, 0.0,
                                                mod.eps, torch.backends.cudnn.enabled), False)
    if type(mod) is nn.ReLU:
        return _Call(torch.relu_ if inplace else torch.relu, inplace)
    return _Call(mod, inplace)


def _function_call(n: Any, consts: dict[str, torch.Tensor], fn: Any = None) -> _Call:
    import torch.fx

    target = fn if fn is not None else n.target
    slots = [i for i, a in enumerate(n.args) if isinstance(a, torch.fx.Node) and a.name not in consts]
    args_t = list(n.args)
    for i, a in enumerate(args_t):
        if isinstance(a, torch.fx.Node) and a.name in consts:
            args_t[i] = consts[a.name]
    kwargs = {k: (consts[v.name] if isinstance(v, torch.fx.Node) else v) for k, v in n.kwargs.items()}
    if any(isinstance(v, torch.fx.Node) and v.name not in consts for v in n.kwargs.values()):
        raise ValueError("tensor keyword arguments are not supported")

    def call(*tensors: torch.Tensor) -> torch.Tensor:
        a = list(args_t)
        for i, t in zip(slots, tensors, strict=True):
            a[i] = t
        return target(*a, **kwargs)

    return _Call(call, bool(kwargs.get("inplace", False)))
