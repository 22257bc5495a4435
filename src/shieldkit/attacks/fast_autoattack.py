"""AutoAttack through pyautoattack's own attack classes, with the arithmetic they do made cheaper on CPU.

The official runner (``pyautoattack.AutoAttack.run_standard_evaluation``) and its attacks (APGD-CE,
APGD-T, FAB-T, Square) still do all the attack math; what changes is *how the model is evaluated*, in
ways that give bit-identical floats on CPU, so the per-point outcome **and** ``x_adv`` equal
pyautoattack's on the same seed (tested in ``tests/test_fast_autoattack.py``; measured side by side
in ``benchmarks/speed.py --section autoattack``).

Profile first (pyautoattack, a PGD-AT ``mnist_cnn``, 20 MNIST-5k test points of which 18 stay robust,
one thread, cProfile + torch.profiler): 144 s, of which Square 45 %, FAB-T 33 %, APGD-T 19 %; by operator
``mkldnn_convolution`` (forward) 45 %, ``convolution_backward`` 19 %, ``max_pool2d_with_indices``
19 %, batch-norm forward + backward 6 %. The model is compute-bound, not overhead-bound: a batch of 18
runs the convolutions at ~100 GFLOP/s (near one core's FP32 peak), and batches of 54 or 162 are *not*
faster per image (measured), so bigger batches, compiled forwards or fewer Python calls cannot help
much; the savings come from not doing arithmetic:

1. **Max-pooling** (:func:`fast_max_pool`). PyTorch's NCHW ``max_pool2d_with_indices`` kernel is 6-15×
   slower here than its channels-last kernel or than element-wise maxima of strided views. No-grad
   pools take the maxima of strided views; grad-mode pools run the channels-last kernel and feed its
   indices (the same: the first maximum of each window) to the reference NCHW backward kernel.
   Maxima are exact, so outputs and gradients are equal (bitwise, up to the sign of a zero maximum —
   which compares equal and cannot change any later comparison); every convolution still sees NCHW
   tensors (channels-last convolutions are *not* bitwise equal here).
2. **Input gradients only.** FAB calls ``loss.backward()``, which also computes (and leaves behind) every
   parameter's gradient; the parameters are frozen for the run. PyTorch's eval-mode batch-norm backward
   still reduces over the whole batch for the (unneeded) weight/bias gradients; :class:`_EvalBatchNorm`
   computes only ``(dy · invstd) · w`` — the same two roundings, checked bitwise per layer before use.
3. **Incremental Square queries** (:class:`PatchEvaluator`, :class:`FastSquareAttack`). Each of
   Square's 5,000 queries changes one small window of the current best image (2×2 to 3×3 pixels for
   the last 3,000 queries), yet pyautoattack forwards whole images. The model is traced (``torch.fx``);
   its leading convolution / pooling / point-wise layers are recomputed only on the tile the changed
   window can reach, from cached maps of the current best images, and the rest (global pooling, the
   head) runs in full. On CPU the oneDNN convolution of a cut-out, explicitly padded tile gives the
   same float at every position as the full convolution (checked on 300 random tiles) — and it is
   re-checked at run time: the first three queries and every 200th are also evaluated in full and
   compared bitwise, and any difference re-runs that Square call the plain way from the same RNG state.

Measured side by side (``benchmarks/results/speed.json``: PGD-AT ``mnist_cnn``, 200 MNIST-5k test points at
ε = 0.1, 162 of them robust, one thread): 551 s against pyautoattack's 1,062 s (0.52×), robust flags and
``x_adv`` bitwise equal on every point (and again at ε = 0.2). By sub-attack: APGD-CE 23 / 31 s, APGD-T
165 / 185 s (0.89×: its iterations are a forward and an input-gradient backward of the whole batch, which
nothing here shrinks), FAB-T 241 / 389 s (0.62×), Square 121 / 457 s (0.27×). Tried and dropped: reusing
FAB's per-step label-check forward (with its graph) for the next step's gradient — FAB is a minimum-norm
attack that pulls every point found adversarial (at any distance) back towards the clean image, so 50-100 %
of the points move between the two forwards (measured on 12 points) and FAB-T got 1.3× slower. Also tried
and dropped: the runner's batches on forked one-thread processes (every ``perturb`` reseeds, so a batch's result
does not depend on where it runs). On the demo's shielded ``mnist_cnn`` (200 points, 117 robust, 2 cores) two
such workers with batches of 64 took 239.1 s against 232.8 s for one process with two threads and batches of 250:
at ~120 robust points two intra-op threads already keep both cores busy, and smaller batches cost more per
image (batches of 10: 1.36× the one-thread time of batches of 250, 60 points).

4. **Memory that stays mapped** (:func:`shieldkit.utils.allocator.tune_allocator`, applied by every
   ``shieldkit`` command, not by this module: it is a process policy). Keeping freed blocks in the process
   instead of letting glibc unmap or trim them changes no float; ``benchmarks/speed.py`` runs this backend the
   way the CLI does, with it, and also pyautoattack with only that setting, so its share of the gain is shown:
   at one thread none measurable for AutoAttack (pyautoattack 1,029 s without, 1,066 s with it; run-to-run
   noise ≈ 3 %) — it pays off in training and PGD instead (``shieldkit/utils/allocator.py``).

What the arithmetic depends on, and how it is kept equal: per-image results of the model must not
depend on which other images share the batch. On this CPU that holds for every batch size ≥ 2 but not
for a batch of one (PyTorch picks another first-convolution kernel), so one-image queries are
always evaluated exactly as pyautoattack does. Everything here is CPU/float32-only and only for
deterministic models (two forwards equal, no global-RNG draws); otherwise the attacks run unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from torch import nn

from shieldkit.attacks.fast_kernels import (  # re-exported: the backend's kernels
    _unwrap,
    channels_last_pooling,
    fast_max_pool,
    frozen_parameters,
    input_grad_batch_norm,
    is_deterministic,
)
from shieldkit.attacks.patch_eval import PatchEvaluator, _MismatchError
from shieldkit.utils.allocator import allocator_state

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------- Square
class FastSquareAttack:
    """Mixin over ``pyautoattack``'s ``SquareAttack``: the same loop, queries evaluated by
    :class:`PatchEvaluator`. Build with :func:`make_fast_square`."""

    check_every = 200  # also evaluate every n-th query in full and compare (and the first three)

    def attack_single_run(self, x, y):  # noqa: ANN001, ANN201
        rng = torch.get_rng_state()
        self._inc = None
        if self._evaluator is not None and not self._inc_disabled and len(x) >= 2:
            self._inc = {"q": 0, "margin": None, "loss": None}
        try:
            return super().attack_single_run(x, y)
        except _MismatchError as exc:
            log.warning("incremental Square evaluation differed from the full forward (%s); re-running plainly", exc)
            self._inc_disabled = True
            self._inc = None
            torch.set_rng_state(rng)
            return super().attack_single_run(x, y)
        finally:
            self._inc = None

    def margin_and_loss(self, x, y):  # noqa: ANN001, ANN201
        st = self._inc
        if st is None:
            return super().margin_and_loss(x, y)
        ev: PatchEvaluator = self._evaluator
        if st["margin"] is None:  # the first call of a run: the starting points, all slots
            logits = ev.prime(x)
            if not torch.equal(logits, self._plain(x)):
                raise _MismatchError("traced forward")
            slots = None
        else:
            slots = (st["margin"] > 0.0).nonzero().flatten()
            if len(slots) != len(x) or len(x) < 2:  # lost track (or a one-image batch): plain from here on
                self._inc = None
                return super().margin_and_loss(x, y)
            try:
                logits = ev.query(slots, x)
            except ValueError:  # not a subset of the cached slots: plain from here on
                self._inc = None
                return super().margin_and_loss(x, y)
            st["q"] += 1
            if (st["q"] <= 3 or st["q"] % self.check_every == 0) and not torch.equal(logits, self._plain(x)):
                raise _MismatchError(f"query {st['q']}")
        if self._counter is not None:
            self._counter.forwards += int(x.shape[0])
        orig = self.predict
        self.predict = lambda _x: logits.clone()
        try:
            margin, loss = super().margin_and_loss(x, y)
        finally:
            self.predict = orig
        if slots is None:
            st["margin"], st["loss"] = margin.clone(), loss.clone()
        else:  # mirror SquareAttack's bookkeeping to know which queried images became the new bests
            m_min, l_min = st["margin"][slots], st["loss"][slots]
            improved = (loss < l_min).float()
            st["loss"][slots] = improved * loss + (1.0 - improved) * l_min
            improved = torch.max(improved, (margin <= 0.0).float())
            st["margin"][slots] = improved * margin + (1.0 - improved) * m_min
            ev.commit(improved > 0)
        return margin, loss

    def _plain(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self._inner(x)


def make_fast_square(square: Any, model: nn.Module) -> Any:
    """A copy of pyautoattack's ``SquareAttack`` object whose queries run through :class:`PatchEvaluator`
    (or ``square`` itself when the model cannot be traced)."""
    if getattr(square, "norm", None) != "Linf":  # ℓ2 / ℓ1 Square rewrites the whole perturbation each query
        return square
    inner, counter = _unwrap(model)
    try:
        evaluator = PatchEvaluator(inner)
    except ValueError as exc:
        log.info("Square stays on full forwards: %s", exc)
        return square
    cls = type(f"Fast{type(square).__name__}", (FastSquareAttack, type(square)), {})
    fast = cls.__new__(cls)
    fast.__dict__.update(vars(square))
    fast._evaluator, fast._inner, fast._counter, fast._inc_disabled, fast._inc = evaluator, inner, counter, False, None
    return fast


# ------------------------------------------------------------------------------------------- runner
@contextmanager
def accelerated(aa: Any, x_probe: torch.Tensor) -> Iterator[dict]:
    """Make ``aa`` (a ``pyautoattack.AutoAttack``) fast for the duration of the block; yields what was done.

    Only on CPU and for deterministic models; the attack objects are replaced by fast copies and the
    originals restored on exit. Whether the process keeps freed memory mapped (item 4) is recorded, not
    changed."""
    info: dict = {"backend": "fast", "pooling_patched": 0, "square": "full", "params_frozen": False}
    device = torch.device(aa.device) if aa.device is not None else x_probe.device
    model = aa.model
    if device.type != "cpu" or x_probe.device.type != "cpu" or x_probe.dtype != torch.float32:
        info["backend"] = "pyautoattack (fast path is CPU/float32 only)"
        yield info
        return
    inner, _ = _unwrap(model)
    if not is_deterministic(inner, x_probe[:2]):
        info["backend"] = "pyautoattack (model is randomised)"
        yield info
        return
    info["allocator_tuned"] = bool(allocator_state().get("applied"))
    with ExitStack() as stack:
        info["pooling_patched"] = stack.enter_context(channels_last_pooling(inner))
        stack.enter_context(frozen_parameters(inner))
        info["params_frozen"] = True
        info["batchnorm_patched"] = stack.enter_context(input_grad_batch_norm(inner))
        old_square = aa.square
        aa.square = make_fast_square(aa.square, model)
        info["square"] = "incremental" if aa.square is not old_square else "full"
        stack.callback(setattr, aa, "square", old_square)
        yield info


__all__ = ["FastSquareAttack", "PatchEvaluator", "accelerated", "channels_last_pooling", "fast_max_pool",
           "frozen_parameters", "input_grad_batch_norm", "is_deterministic", "make_fast_square"]
