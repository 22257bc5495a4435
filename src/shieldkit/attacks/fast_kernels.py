"""The bit-exact CPU kernels behind the fast AutoAttack backend (:mod:`shieldkit.attacks.fast_autoattack`,
whose docstring has the profile and the measurements): max-pooling through the channels-last kernel or
strided maxima (item 1), an eval-mode batch-norm backward that computes only the input gradient (item 2),
frozen parameters, and the determinism probe that decides whether any of it may be used."""

from __future__ import annotations

import types
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

_CL = torch.channels_last


# ------------------------------------------------------------------------------------ channels-last pooling
class _ChannelsLastMaxPool(torch.autograd.Function):
    """max_pool2d whose forward runs PyTorch's channels-last kernel; the backward is the reference NCHW kernel
    fed with the same indices (converted to NCHW), so the gradient is the reference computation."""

    @staticmethod
    def forward(ctx, x, kernel, stride, padding, dilation, ceil_mode):  # noqa: ANN001, ANN205
        out, idx = torch.ops.aten.max_pool2d_with_indices(x.contiguous(memory_format=_CL), kernel, stride, padding,
                                                          dilation, ceil_mode)
        idx = idx.contiguous()
        ctx.save_for_backward(x, idx)
        ctx.args = (kernel, stride, padding, dilation, ceil_mode)
        return out.contiguous()

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        x, idx = ctx.saved_tensors
        gi = torch.ops.aten.max_pool2d_with_indices_backward(grad.contiguous(), x, *ctx.args, idx)
        return gi, None, None, None, None, None


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _strided_max(x: torch.Tensor, k: tuple[int, int]) -> torch.Tensor:
    """Non-overlapping k×k max-pooling (stride k, no padding, floor mode) as element-wise maxima of strided views."""
    ho, wo = x.shape[-2] // k[0], x.shape[-1] // k[1]
    x = x[:, :, :ho * k[0], :wo * k[1]]
    a = x[:, :, 0::k[0]]
    for i in range(1, k[0]):
        a = torch.maximum(a, x[:, :, i::k[0]])
    b = a[..., 0::k[1]]
    for j in range(1, k[1]):
        b = torch.maximum(b, a[..., j::k[1]])
    return b


def fast_max_pool(x: torch.Tensor, kernel: Any, stride: Any = None, padding: Any = 0, dilation: Any = 1,
                  ceil_mode: bool = False) -> torch.Tensor:
    """``F.max_pool2d`` with identical values (and, in grad mode, the reference gradient), faster on CPU.

    PyTorch's NCHW ``max_pool2d_with_indices`` kernel is 6-15× slower here than its channels-last kernel or
    than element-wise maxima of strided views; a maximum is exact whichever way it is taken, and the
    channels-last kernel returns the same indices (the first maximum of each window)."""
    k = _pair(kernel)
    s = _pair(stride if stride not in (None, ()) else kernel)
    p, d = _pair(padding), _pair(dilation)
    if x.ndim != 4 or x.device.type != "cpu" or x.dtype != torch.float32 or not x.is_contiguous():
        return F.max_pool2d(x, k, s, p, d, ceil_mode)
    if torch.is_grad_enabled() and x.requires_grad:
        return _ChannelsLastMaxPool.apply(x, k, s, p, d, ceil_mode)
    if s == k and p == (0, 0) and d == (1, 1) and not ceil_mode and x.shape[-2] >= k[0] and x.shape[-1] >= k[1]:
        return _strided_max(x, k)
    return F.max_pool2d(x.contiguous(memory_format=_CL), k, s, p, d, ceil_mode).contiguous()


def _pool_forward(self: nn.MaxPool2d, x: torch.Tensor) -> torch.Tensor:
    return fast_max_pool(x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode)


@contextmanager
def channels_last_pooling(model: nn.Module) -> Iterator[int]:
    """Route every ``nn.MaxPool2d`` of ``model`` through :func:`fast_max_pool` (restored on exit)."""
    patched = [m for m in model.modules() if type(m) is nn.MaxPool2d and not m.return_indices
               and "forward" not in vars(m)]
    for m in patched:
        m.forward = types.MethodType(_pool_forward, m)
    try:
        yield len(patched)
    finally:
        for m in patched:
            vars(m).pop("forward", None)


# --------------------------------------------------------------------------------- eval batch-norm backward
class _EvalBatchNorm(torch.autograd.Function):
    """Eval-mode ``batch_norm`` whose backward is only the input gradient.

    PyTorch's CPU ``native_batch_norm_backward`` also reduces ``x`` and ``dy`` over every channel (for the
    weight and bias gradients) even when they are not needed: 4× the cost of the input gradient, which in
    eval mode is ``(dy · invstd) · w`` with ``invstd = float(1 / sqrt(double(running_var) + eps))`` — the
    same two roundings, checked bitwise against the native backward for every patched module
    (:func:`_bn_backward_matches`) before it is used."""

    @staticmethod
    def forward(ctx, x, bn, scales):  # noqa: ANN001, ANN205
        ctx.scales = scales
        return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        invstd, w = ctx.scales
        g = grad * invstd
        return (g if w is None else g.mul_(w)), None, None


def _bn_scales(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor | None]:
    c = bn.num_features
    invstd = (1.0 / torch.sqrt(bn.running_var.detach().double() + bn.eps)).float().view(1, c, 1, 1)
    w = None if bn.weight is None else bn.weight.detach().view(1, c, 1, 1)
    return invstd, w


def _bn_usable(bn: nn.Module) -> bool:
    return (type(bn) is nn.BatchNorm2d and not bn.training and bn.running_var is not None
            and bn.running_var.dtype == torch.float32 and bn.running_var.device.type == "cpu")


def _bn_backward_matches(bn: nn.BatchNorm2d) -> bool:
    """The custom backward equals ``native_batch_norm_backward`` bitwise on a random probe."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, bn.num_features, 7, 9, generator=g)
    dy = torch.randn(3, bn.num_features, 7, 9, generator=g)
    with torch.enable_grad():
        xa = x.clone().requires_grad_()
        w = None if bn.weight is None else bn.weight.detach()
        b = None if bn.bias is None else bn.bias.detach()
        ref = torch.autograd.grad(F.batch_norm(xa, bn.running_mean, bn.running_var, w, b, False, 0.0, bn.eps),
                                  xa, dy)[0]
        xb = x.clone().requires_grad_()
        mine = torch.autograd.grad(_EvalBatchNorm.apply(xb, bn, _bn_scales(bn)), xb, dy)[0]
    return torch.equal(ref, mine)


def _bn_forward(self: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    if torch.is_grad_enabled() and x.requires_grad and not self.training and x.dtype == torch.float32 \
            and x.device.type == "cpu" and not any(p.requires_grad for p in (self.weight, self.bias) if p is not None):
        return _EvalBatchNorm.apply(x, self, self._shieldkit_bn_scales)
    return type(self).forward(self, x)


@contextmanager
def input_grad_batch_norm(model: nn.Module) -> Iterator[int]:
    """Route the eval-mode ``nn.BatchNorm2d`` layers of ``model`` through :class:`_EvalBatchNorm` (restored
    on exit); layers whose custom backward would not be bitwise the native one are left alone."""
    patched = [m for m in model.modules() if _bn_usable(m) and "forward" not in vars(m) and _bn_backward_matches(m)]
    for m in patched:
        m._shieldkit_bn_scales = _bn_scales(m)  # eval mode: the running statistics do not move
        m.forward = types.MethodType(_bn_forward, m)
    try:
        yield len(patched)
    finally:
        for m in patched:
            vars(m).pop("forward", None)
            vars(m).pop("_shieldkit_bn_scales", None)


@contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[None]:
    """``requires_grad=False`` on every parameter (restored on exit): backward computes input gradients only."""
    params = [p for p in model.parameters() if p.requires_grad]
    grads = [p.grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, g in zip(params, grads, strict=True):
            p.requires_grad_(True)
            p.grad = g


def is_deterministic(model: nn.Module, x: torch.Tensor) -> bool:
    """Two forwards of ``x`` agree bitwise and neither draws from the global torch RNG."""
    state = torch.get_rng_state()
    with torch.no_grad():
        a, b = model(x), model(x)
    same_rng = torch.equal(state, torch.get_rng_state())
    torch.set_rng_state(state)
    return same_rng and isinstance(a, torch.Tensor) and torch.equal(a, b)


def _unwrap(model: nn.Module) -> tuple[nn.Module, Any]:
    """(model without shieldkit's CountingModel, the counter or None)."""
    from shieldkit.attacks.counting import CountingModel

    if isinstance(model, CountingModel):
        return model.model, model
    return model, None
