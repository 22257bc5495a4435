"""One interface over the maintained attack libraries: pyautoattack, torchattacks and ART.

Every runner here takes a model mapping [0, 1] images to logits, clean images ``x`` and labels ``y``,
and returns ``(robust, x_adv)``: a per-point bool tensor (on CPU) saying whether the model still
classifies the point correctly under the attack, and the adversarial examples (same device as ``x``).
The evaluation suite composes these into a per-point worst case.

Seeding. The libraries draw from the *global* RNGs (pyautoattack re-seeds ``torch`` from the clock
when ``seed=None``; torchattacks and ART use the global torch / numpy RNGs). Each runner seeds
explicitly and restores the global torch (CPU + CUDA), numpy and ``random`` states afterwards
(:func:`preserved_rng`), so calling an attack never perturbs the caller's randomness.

Why libraries: AutoAttack (Croce & Hein 2020) is *the* reference evaluation and must run through the
official code (PyPI ``pyautoattack``) to be comparable to RobustBench — by default its runner and attack
classes run with the cheaper, bitwise-equal model evaluation of :mod:`shieldkit.attacks.fast_autoattack`
(``backend="fast"``; ``backend="pyautoattack"`` runs the package untouched); torchattacks provides FGSM,
CW-ℓ2 (Carlini & Wagner 2017), Square (Andriushchenko et al. 2020) and SPSA (Uesato et al. 2018,
advertorch's implementation); ART provides the decision-based HopSkipJump (Chen et al. 2020) and
Boundary (Brendel et al. 2018) attacks. ART has no SPSA for PyTorch models.
"""

from __future__ import annotations

import inspect
import logging
import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

_AA_NORMS = {"linf": "Linf", "l2": "L2", "l1": "L1", "Linf": "Linf", "L2": "L2", "L1": "L1"}
AA_VERSIONS = ("standard", "rand", "plus")
# "fast": pyautoattack's runner and attack classes with the model evaluated more cheaply, bitwise the same
# (shieldkit.attacks.fast_autoattack); "pyautoattack": the official package exactly as shipped.
AA_BACKENDS = ("fast", "pyautoattack")
# The default is the fast backend: measured side by side (benchmarks/results/speed.json, PGD-AT mnist_cnn, 200
# MNIST-5k test points, one thread, each run its own process) it takes 0.54x pyautoattack's wall time (552 s vs
# 1,029 s; 0.52x in an earlier run; torchattacks 552 s but 3 points disagree) with the same robust flags and
# bitwise the same x_adv on every point at eps 0.1 and 0.2 (also tests/test_fast_autoattack.py). It falls back
# to pyautoattack as shipped by itself off CPU/float32 and for randomised models; backend="pyautoattack" asks
# for the package untouched.
DEFAULT_AA_BACKEND = "fast"


def canonical_norm(norm: str) -> str:
    """'linf' | 'l2' (accepts AutoAttack's spelling too)."""
    n = str(norm).lower()
    if n in ("linf", "inf", "l_inf"):
        return "linf"
    if n in ("l2", "2"):
        return "l2"
    raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")


@contextmanager
def preserved_rng() -> Iterator[None]:
    """Restore torch (CPU and all CUDA devices), numpy and ``random`` global states on exit."""
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    np_state = np.random.get_state()
    py_state = random.getstate()
    try:
        yield
    finally:
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        np.random.set_state(np_state)
        random.setstate(py_state)


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


@torch.no_grad()
def predict(
    model: nn.Module, x: torch.Tensor, batch_size: int = 500, device: str | torch.device | None = None
) -> torch.Tensor:
    """Arg-max predictions (CPU int64) in batches."""
    dev = device if device is not None else x.device
    out = [model(x[i : i + batch_size].to(dev)).argmax(1).cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def correct_mask(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int = 500,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    return predict(model, x, batch_size, device) == y.cpu()


# --------------------------------------------------------------------------------------------- AutoAttack
class _Capture(logging.Handler):
    """Collects pyautoattack's warnings (randomness, softmax outputs, Square beating APGD, …)."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@dataclass
class AutoAttackResult:
    robust: torch.Tensor  # per-point bool (CPU), after all sub-attacks
    x_adv: torch.Tensor
    per_attack: dict[str, int] = field(default_factory=dict)  # robust count after each sub-attack
    attack_time: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    attacks: list[str] = field(default_factory=list)
    backend: dict = field(default_factory=dict)  # how it ran: "fast" (and what was accelerated) or "pyautoattack"


def _make_autoattack(
    model: nn.Module,
    *,
    norm: str,
    eps: float,
    version: str,
    seed: int,
    device: str | torch.device,
    attacks: Sequence[str] | None,
):  # noqa: ANN202
    import pyautoattack

    if version not in AA_VERSIONS:
        raise ValueError(f"AutoAttack version must be one of {AA_VERSIONS}, got {version!r}")
    aa = pyautoattack.AutoAttack(
        model,
        norm=_AA_NORMS[canonical_norm(norm)],
        eps=float(eps),
        version=version,
        seed=int(seed),
        device=device,
    )
    if attacks is not None:
        # Keep the version's fixed hyper-parameters (restarts, target classes, queries) and run a
        # subset of its attacks; pyautoattack only accepts ``attacks=`` with version="custom", whose
        # defaults differ from "standard".
        unknown = set(attacks) - {"apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"}
        if unknown:
            raise ValueError(f"unknown AutoAttack attacks {sorted(unknown)}")
        aa.attacks_to_run = list(attacks)
    return aa


def run_autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, **options: Any
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """AutoAttack through the official implementation, seeded explicitly; ``options`` are those of
    :func:`run_autoattack_detailed` (``norm`` and ``eps`` required; ``version``, ``seed``, ``batch_size``,
    ``device``, ``attacks``, ``backend``), the sub-attacks run in one call (``per_attack=False``).

    Returns ``(robust, x_adv)`` with ``robust[i]`` True iff the model still predicts ``y[i]`` on
    ``x_adv[i]`` (clean errors count as non-robust, as in AutoAttack). Identical per point (robust
    flags and ``x_adv``) to ``pyautoattack.AutoAttack(model, norm=…, eps=…, version=…,
    seed=seed).run_standard_evaluation`` on the same inputs (tested). The default ``backend="fast"``
    runs pyautoattack's runner and attacks with the cheaper, bitwise-equal model evaluation of
    :mod:`shieldkit.attacks.fast_autoattack` (CPU, deterministic models; otherwise it *is*
    pyautoattack); ``backend="pyautoattack"`` runs the package untouched. The global RNG state is
    restored afterwards.
    """
    res = run_autoattack_detailed(model, x, y, **options, per_attack=False)
    return res.robust, res.x_adv


def run_autoattack_detailed(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str,
    eps: float,
    version: str = "standard",
    seed: int = 0,
    batch_size: int = 250,
    device: str | torch.device = "cpu",
    attacks: Sequence[str] | None = None,
    per_attack: bool = True,
    backend: str = DEFAULT_AA_BACKEND,
) -> AutoAttackResult:
    """:func:`run_autoattack` plus the robust count and time after each sub-attack and pyautoattack's
    own warnings. With ``per_attack=True`` the sub-attacks are launched one at a time on the points
    still robust — exactly what ``run_standard_evaluation`` does internally (same order, same
    batches, same per-call seeding), so the per-point outcome is unchanged."""
    from contextlib import nullcontext

    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x has {x.shape[0]} points but y has {y.shape[0]}")
    if backend not in AA_BACKENDS:
        raise ValueError(f"AutoAttack backend must be one of {AA_BACKENDS}, got {backend!r}")
    logger = logging.getLogger("auto-attack")
    cap = _Capture()
    logger.addHandler(cap)
    old_prop = logger.propagate
    logger.propagate = False  # keep pyautoattack's warnings out of the user's terminal; we report them
    try:
        with preserved_rng():
            aa = _make_autoattack(
                model, norm=norm, eps=eps, version=version, seed=seed, device=device, attacks=attacks
            )
            names = list(aa.attacks_to_run)
            yc = y.to(x.device)
            if backend == "fast":
                from shieldkit.attacks.fast_autoattack import accelerated

                speedup = accelerated(aa, x[:batch_size].to(device))
            else:
                speedup = nullcontext({"backend": "pyautoattack"})
            with speedup as info:
                return _run(aa, model, x, y, yc, names, cap, per_attack, batch_size, device, info)
    finally:
        logger.removeHandler(cap)
        logger.propagate = old_prop


def _run(aa, model: nn.Module, x: torch.Tensor, y: torch.Tensor, yc: torch.Tensor, names: list[str],  # noqa: ANN001
         cap: _Capture, per_attack: bool, batch_size: int, device: str | torch.device,
         backend: dict) -> AutoAttackResult:
    import time

    if not per_attack:
        t0 = time.perf_counter()
        x_adv, y_adv = aa.run_standard_evaluation(x, yc, batch_size=batch_size)
        robust = y_adv.cpu() == y.cpu()
        return AutoAttackResult(robust, x_adv, {}, {"total": time.perf_counter() - t0},
                                list(dict.fromkeys(cap.messages)), names, backend)
    robust = correct_mask(model, x, y, batch_size, device)
    x_adv = x.clone()
    counts, times = {"clean": int(robust.sum())}, {}
    for name in names:
        idx = torch.nonzero(robust).flatten()
        t0 = time.perf_counter()
        if len(idx):
            aa.attacks_to_run = [name]
            xa, ya = aa.run_standard_evaluation(x[idx.to(x.device)], yc[idx.to(x.device)], batch_size=batch_size)
            fooled = ya.cpu() != y[idx].cpu()
            robust[idx[fooled]] = False
            x_adv[idx[fooled].to(x.device)] = xa[fooled.to(xa.device)].to(x_adv.dtype)
        times[name] = time.perf_counter() - t0
        counts[name] = int(robust.sum())
    return AutoAttackResult(robust, x_adv, counts, times, list(dict.fromkeys(cap.messages)), names, backend)


# -------------------------------------------------------------------------------------------- torchattacks
TORCHATTACKS = ("FGSM", "CW", "Square", "SPSA", "AutoAttack", "PGD", "PGDL2")


def run_torchattack(
    name: str,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    seed: int = 0,
    batch_size: int = 250,
    device: str | torch.device = "cpu",
    **kwargs: object,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``torchattacks.<name>(model, **kwargs)`` in batches; ``(robust, x_adv)``.

    torchattacks switches the model to eval mode during the attack and restores it (its ``Attack``
    base class); we seed the global RNG it draws from and restore it afterwards.
    """
    try:
        import torchattacks
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("torchattacks is not installed: pip install --no-deps torchattacks==3.5.1") from exc
    if not hasattr(torchattacks, name):
        raise ValueError(f"torchattacks has no attack {name!r}")
    with preserved_rng():
        _seed_all(seed)
        cls = getattr(torchattacks, name)
        if "seed" in inspect.signature(cls.__init__).parameters:  # e.g. Square seeds itself
            kwargs.setdefault("seed", seed)
        atk = cls(model, **kwargs)
        atk.set_device(torch.device(device))
        outs = []
        for i in range(0, len(x), batch_size):
            xb, yb = x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)
            outs.append(atk(xb, yb).detach().to(x.device))
    x_adv = torch.cat(outs) if outs else x.clone()
    return correct_mask(model, x_adv, y, batch_size, device), x_adv


# ----------------------------------------------------------------------------------------------------- ART
class _Float32(nn.Module):
    """ART hands float64 arrays to the model in places (HopSkipJump's initialisation)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.float())


def _art_classifier(model: nn.Module, x: torch.Tensor, num_classes: int, device: str | torch.device):  # noqa: ANN202
    from art.estimators.classification import PyTorchClassifier

    dev_type = "gpu" if torch.device(device).type == "cuda" else "cpu"
    return PyTorchClassifier(
        model=_Float32(model),
        loss=nn.CrossEntropyLoss(),
        input_shape=tuple(x.shape[1:]),
        nb_classes=num_classes,
        clip_values=(0.0, 1.0),
        device_type=dev_type,
    )


def _num_classes(model: nn.Module, x: torch.Tensor, device: str | torch.device) -> int:
    with torch.no_grad():
        return int(model(x[:1].to(device)).shape[1])


def run_decision_attack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str,
    eps: float,
    method: str = "hopskipjump",
    seed: int = 0,
    max_iter: int = 20,
    max_eval: int = 1000,
    init_eval: int = 100,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decision-based attack from ART (only the arg-max label is queried).

    HopSkipJump / Boundary are *minimum-norm* attacks: they return the closest adversarial example
    they find, whatever its size. A point counts as broken only if that example is misclassified
    **and** within the ε-ball; otherwise the clean point is returned (so ``x_adv`` always lies in the
    threat model).
    """
    from art.attacks.evasion import BoundaryAttack, HopSkipJump

    norm = canonical_norm(norm)
    clf = _art_classifier(model, x, _num_classes(model, x, device), device)
    xn, yn = x.detach().cpu().numpy().astype(np.float32), y.cpu().numpy()
    with preserved_rng():
        _seed_all(seed)
        if method == "hopskipjump":
            atk = HopSkipJump(
                clf,
                batch_size=batch_size,
                targeted=False,
                norm=np.inf if norm == "linf" else 2,
                max_iter=max_iter,
                max_eval=max_eval,
                init_eval=min(init_eval, max(max_eval - 1, 1)),  # ART needs max_eval > init_eval
                verbose=False,
            )
        elif method == "boundary":
            atk = BoundaryAttack(
                clf, batch_size=batch_size, targeted=False, max_iter=max_iter * 50, verbose=False
            )
        else:
            raise ValueError(f"decision attack must be 'hopskipjump' or 'boundary', got {method!r}")
        xa = torch.from_numpy(atk.generate(x=xn, y=yn)).to(x.dtype)
    delta = (xa - x.cpu()).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    inside = size <= eps * (1 + 1e-4) + 1e-6
    xa = torch.where(inside.view(-1, *([1] * (x.ndim - 1))), xa, x.cpu()).to(x.device)
    return correct_mask(model, xa, y, batch_size, device), xa
