"""One attack interface (issue 14): ``create_attack(name, eps=…, norm=…, budget=…) → Attack`` and
``attack(model, x, y, generator=…) → AttackResult``.

Modelled on torchattacks' ``Attack.__call__`` (one call shape whatever the algorithm) and secml-torch's
backend-agnostic ``attack(model, data)``: every algorithm — our own PGD engine, pyautoattack, torchattacks,
ART, the query attacks — is a *backend* behind the same call. What the interface adds, once, for all of
them:

* **Counting**: the model is wrapped in :class:`~shieldkit.attacks.counting.CountingModel`, so ``meta`` holds
  the forward / backward passes (in images) and, for black-box attacks, the queries; plus wall ``seconds``.
* **The threat model is verified, not trusted**: ``x_adv`` must lie in [0, 1] and within ε of ``x`` in the
  attack's norm (tolerance 1e-5·max(1, ε) for float32 rounding). An attack that leaves the ball raises
  :class:`~shieldkit.errors.IntegrityError` instead of reporting a robust accuracy that is too low.
  Attacks that are not norm-ball attacks (StAdv's flow field) declare ``bounded = False``.
* **Robust means robust**: ``robust[i]`` is True iff the model classifies ``x[i]`` *and* ``x_adv[i]``
  correctly — the per-point worst case of clean and attack, as AutoAttack counts it — judged by one extra
  no-grad pass that is not counted against the attack.
* **Explicit randomness**: a ``torch.Generator`` (default: seeded from the attack's name) drives our own
  attacks; library backends get an integer seed drawn from it, so one generator reproduces a run.

``budget`` names a preset of the attack's parameters: ``"smoke"`` (tiny, for tests), ``"default"``, and the
evaluation suites' ``"quick"`` / ``"standard"`` / ``"full"`` where they differ. Keyword ``params`` override
the preset.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from shieldkit.attacks.counting import CountingModel
from shieldkit.errors import InputError, IntegrityError
from shieldkit.utils.seed import derive_seed, make_generator
from shieldkit.utils.validate import _suggest, check_eps, check_norm

FAMILIES = ("white-box", "black-box", "transfer", "adaptive")
BUDGETS = ("smoke", "default", "quick", "standard", "full")


@dataclass
class AttackResult:
    """What every attack returns. ``robust``: bool per point (clean-correct and still correct on ``x_adv``)."""

    x_adv: torch.Tensor
    robust: torch.Tensor
    meta: dict = field(default_factory=dict)

    @property
    def robust_accuracy(self) -> float:
        return float(self.robust.float().mean()) if len(self.robust) else float("nan")


class Attack:
    """Base class: subclasses set ``name``, ``family``, ``budgets`` and implement :meth:`perturb`."""

    name: ClassVar[str] = "attack"
    family: ClassVar[str] = "white-box"
    norms: ClassVar[tuple[str, ...]] = ("linf", "l2")
    bounded: ClassVar[bool] = True  # x_adv must lie in the ε-ball (False: not a norm-ball attack)
    budgets: ClassVar[dict[str, dict[str, Any]]] = {"default": {}}

    def __init__(self, *, eps: float, norm: str = "linf", budget: str = "default", **params: Any) -> None:
        self.norm = check_norm(norm, flag="norm")
        if self.norm not in self.norms:
            raise InputError(f"attack {self.name!r}: norm {norm} not supported", hint=f"use one of {self.norms}")
        self.eps = check_eps(eps, self.norm, flag="eps")
        if budget not in BUDGETS:
            raise InputError(f"attack {self.name!r}: unknown budget {budget!r}", hint=_suggest(budget, BUDGETS))
        self.budget = budget
        base = {**self.budgets.get("default", {}), **self.budgets.get(budget, {})}  # no preset: the default
        if unknown := set(params) - set(base) - set(self.extra_params()):
            raise InputError(f"attack {self.name!r}: unknown parameter(s) {sorted(unknown)}",
                             hint=f"known: {', '.join(sorted(set(base) | set(self.extra_params())))}")
        self.params = {**base, **params}

    @classmethod
    def extra_params(cls) -> tuple[str, ...]:
        """Parameters without a preset value (e.g. a substitute model, a preprocessing function)."""
        return ()

    # ------------------------------------------------------------------------------------ the one call
    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                 generator: torch.Generator | None = None) -> AttackResult:
        if x.ndim != 4 or len(x) != len(y):
            raise InputError(f"attack {self.name!r}: expected x N×C×H×W with one label per image, got "
                             f"{tuple(x.shape)} and {len(y)} labels")
        x, y = x.detach(), y.detach()
        gen = generator if generator is not None else make_generator(derive_seed(0, f"attack/{self.name}"),
                                                                     device=x.device)
        counted = CountingModel(model)
        t0 = time.perf_counter()
        out = self.perturb(counted, x, y, gen)
        seconds = time.perf_counter() - t0
        x_adv, extra = out if isinstance(out, tuple) else (out, {})
        x_adv = x_adv.detach().to(x.device)
        self._check_threat_model(x, x_adv)
        with torch.no_grad():
            robust = (predict(model, x) == y) & (predict(model, x_adv) == y)
        counts = counted.counts()
        meta = {"attack": self.name, "family": self.family, "eps": self.eps, "norm": self.norm,
                "budget": self.budget, "params": _plain_params(self.params), **counts,
                "queries": counts["forwards"] if self.family == "black-box" else None,
                "seconds": round(seconds, 4), **extra}
        return AttackResult(x_adv=x_adv, robust=robust.cpu(), meta=meta)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
                ) -> torch.Tensor | tuple[torch.Tensor, dict]:
        raise NotImplementedError

    # ---------------------------------------------------------------------------------------- helpers
    def _check_threat_model(self, x: torch.Tensor, x_adv: torch.Tensor) -> None:
        check_threat_model(self.name, x, x_adv, self.eps if self.bounded else None, self.norm)

    @staticmethod
    def seed_from(generator: torch.Generator) -> int:
        """An integer seed for a library backend, drawn from the attack's generator."""
        return int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=generator.device))


def check_threat_model(name: str, x: torch.Tensor, x_adv: torch.Tensor, eps: float | None, norm: str) -> None:
    """Refuse adversarial examples outside the threat model: misshaped or non-finite, outside the [0, 1]
    image box, or (``eps`` given) farther than ε from ``x`` in ``norm`` — tolerance 1e-5·max(1, ε) for
    float32 rounding. An attack that leaves the ball would report a robust accuracy that is too low, so this
    raises :class:`~shieldkit.errors.IntegrityError`; ``eps=None`` for attacks that are not norm-ball attacks."""
    if x_adv.shape != x.shape or not bool(torch.isfinite(x_adv).all()):
        raise IntegrityError(f"attack {name!r}: returned {tuple(x_adv.shape)} non-finite or misshaped "
                             f"examples for inputs {tuple(x.shape)}")
    tol = 1e-5 * max(1.0, eps or 0.0)
    if len(x) and (float(x_adv.min()) < -tol or float(x_adv.max()) > 1 + tol):
        raise IntegrityError(f"attack {name!r}: examples leave the [0, 1] image box")
    if eps is None or len(x) == 0:
        return
    d = (x_adv - x.to(x_adv.device)).flatten(1)
    dist = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
    worst = float(dist.max())
    if worst > eps + tol:
        raise IntegrityError(f"attack {name!r}: examples leave the {norm} ball "
                             f"(distance {worst:.6g} > ε = {eps:.6g}); its robust accuracy would be wrong")


def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    return torch.cat([model(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)]) \
        if len(x) else torch.zeros(0, dtype=torch.long, device=x.device)


def _plain_params(p: dict) -> dict:
    return {k: (v if isinstance(v, int | float | str | bool | type(None) | tuple | list) else type(v).__name__)
            for k, v in p.items()}


# ------------------------------------------------------------------------------------------- registry
ATTACKS: dict[str, type[Attack]] = {}


def register(cls: type[Attack]) -> type[Attack]:
    """Class decorator: add ``cls`` to :data:`ATTACKS` under ``cls.name``."""
    if cls.name in ATTACKS:
        raise ValueError(f"attack {cls.name!r} registered twice")
    if cls.family not in FAMILIES:
        raise ValueError(f"attack {cls.name!r}: family must be one of {FAMILIES}")
    ATTACKS[cls.name] = cls
    return cls


def create_attack(name: str, *, eps: float, norm: str = "linf", budget: str = "default", **params: Any) -> Attack:
    """The registered attack ``name`` at ε / norm with the ``budget`` preset (``params`` override it)."""
    import shieldkit.attacks.registry  # noqa: F401 - registers the built-in attacks

    if name not in ATTACKS:
        raise InputError(f"attack {name!r}: unknown", hint=_suggest(name, sorted(ATTACKS)))
    return ATTACKS[name](eps=eps, norm=norm, budget=budget, **params)


def list_attacks() -> list[str]:
    import shieldkit.attacks.registry  # noqa: F401

    return sorted(ATTACKS)


__all__ = ["ATTACKS", "BUDGETS", "FAMILIES", "Attack", "AttackResult", "check_threat_model", "create_attack",
           "list_attacks", "predict",
           "register"]
