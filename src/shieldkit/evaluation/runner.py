"""The one evaluation runner (issue 14, item 2): batching, seeding, counting, the attack-only-still-robust
ordering and the per-point worst case, written once for every evaluator.

An evaluator (:mod:`~shieldkit.evaluation.suite`, :mod:`~shieldkit.evaluation.breaks`,
:mod:`~shieldkit.evaluation.atop`) is a *plan*: a sequence of :class:`Step` — name, family, the attack as a
callable, its recorded parameters, whether it counts towards the worst case, and whether it runs on every
point or only on the points still robust — that a :class:`Runner` executes on one fixed set of points.
What the runner guarantees, for every step of every evaluator:

* **Counting**: the judged system is wrapped in :class:`~shieldkit.attacks.counting.CountingModel`; each
  run records its forward / backward passes (in images) and wall seconds.
* **Seeding**: :meth:`Runner.gen` derives a generator from the evaluation seed and the step's tag
  (``derive_seed``), so a step's randomness does not depend on which steps ran before it; batched steps
  get one generator per batch (:meth:`Runner.batched`), so results do not depend on the batch order.
* **The threat model is verified**: a step with ``eps`` set has its examples checked against the ε-ball
  and the image box (:func:`~shieldkit.attacks.base.check_threat_model`) before they are judged.
* **Attack-only-still-robust** (AutoAttack's ordering): ``on="survivors"`` runs the attack only on the
  points robust to every clean / white-box run so far; the others stay broken.
* **The per-point worst case**: :meth:`Runner.worst_case` — a point is robust only if it is robust under
  every run marked ``in_worst_case`` (clean included).

:class:`EvaluationResult` is the one result schema the evaluators return (``to_dict()``: the
RobustBench-style dict of :func:`~shieldkit.evaluation.suite.evaluate`), written by
:func:`~shieldkit.evaluation.result.write_outputs`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from shieldkit.attacks.base import check_threat_model
from shieldkit.attacks.counting import CountingModel
from shieldkit.attacks.library import correct_mask
from shieldkit.evaluation.stats import accuracy_summary
from shieldkit.utils.seed import derive_seed, make_generator

# what an attack callable may return: adversarial examples (judged by the runner) or (robust, x_adv)
AttackOutput = torch.Tensor | tuple[torch.Tensor, torch.Tensor]
Judge = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_adv, y) -> per-point robust bool


@dataclass
class AttackRun:
    """One executed step: the per-point robust flags and what they cost."""

    name: str
    family: str
    robust: torch.Tensor  # per point, CPU bool
    wall_time_s: float
    forwards: int
    backwards: int
    params: dict = field(default_factory=dict)
    in_worst_case: bool = True  # runs at other ε (curves, unbounded) are not
    note: str = ""

    @property
    def acc(self) -> float:
        return float(self.robust.float().mean()) if len(self.robust) else float("nan")

    def record(self) -> dict:
        s = accuracy_summary(int(self.robust.sum()), len(self.robust))
        return {"name": self.name, "family": self.family, "acc": s["acc"], "k": s["k"], "n": s["n"], "ci": s["ci"],
                "wall_time_s": round(self.wall_time_s, 3), "forwards": self.forwards, "backwards": self.backwards,
                "params": self.params, "in_worst_case": self.in_worst_case, "note": self.note}


@dataclass(frozen=True)
class Step:
    """One attack of a plan. ``attack``: with ``on="all"`` a zero-argument callable over the runner's
    points; with ``on="survivors"`` a callable ``(x_sub, y_sub)`` on the points still robust. Either returns
    ``x_adv`` or ``(robust, x_adv)``. ``eps``: the ball the examples must lie in (None: not checked)."""

    name: str
    family: str
    attack: Callable[..., AttackOutput]
    params: dict = field(default_factory=dict)
    in_worst_case: bool = True
    on: Literal["all", "survivors"] = "all"
    eps: float | None = None
    note: str = ""


class Runner:
    """Executes steps on the fixed points ``(x, y)`` against ``system`` (see the module doc)."""

    def __init__(self, system: nn.Module, x: torch.Tensor, y: torch.Tensor, *, seed: int,
                 device: torch.device | str = "cpu", batch_size: int = 250, norm: str = "linf",
                 judge: Judge | None = None, verbose: bool = False) -> None:
        self.device = torch.device(device)
        self.counter = CountingModel(system)
        self.x, self.y = x.to(self.device), y.to(self.device)
        self.seed, self.bs, self.norm, self.verbose = seed, batch_size, norm, verbose
        self._judge = judge
        self.runs: list[AttackRun] = []
        self.notes: list[str] = []

    # ------------------------------------------------------------------------------------- helpers
    def log(self, msg: str) -> None:
        if self.verbose:
            from rich.console import Console

            Console(stderr=True).print(f"[dim]{time.strftime('%H:%M:%S')}[/] {msg}")

    def gen(self, *parts: object) -> torch.Generator:
        """A generator for one step (or batch), derived from the evaluation seed and ``parts``."""
        return make_generator(derive_seed(self.seed, *parts), self.device)

    def judge(self, x_adv: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Per-point robust flags of ``x_adv`` (labels ``y``, default the runner's)."""
        y = self.y if y is None else y
        if self._judge is not None:
            return self._judge(x_adv, y).cpu().bool()
        return correct_mask(self.counter, x_adv, y, self.bs, self.device)

    def batched(self, fn: Callable[[torch.Tensor, torch.Tensor, torch.Generator, torch.Tensor], torch.Tensor],
                *tag: object, subset: torch.Tensor | None = None, judge_each: bool = False) -> AttackOutput:
        """``fn(x_b, y_b, generator, idx_b) → x_adv_b`` over batches of the points (``subset``: a bool mask
        of the points to attack; the others are returned unchanged), batch ``i`` seeded by ``(*tag, i)``.
        ``judge_each`` judges each batch right after its attack and returns ``(robust, x_adv)``."""
        idx_all = torch.arange(len(self.x), device=self.device)
        if subset is not None:
            idx_all = idx_all[subset.to(self.device)]
        x_adv = self.x.clone()
        robust = torch.zeros(len(self.x), dtype=torch.bool)
        for i in range(0, len(idx_all), self.bs):
            idx = idx_all[i : i + self.bs]
            x_adv[idx] = fn(self.x[idx], self.y[idx], self.gen(*tag, i), idx).detach()
            if judge_each:
                robust[idx.cpu()] = self.judge(x_adv[idx], self.y[idx])
        return (robust, x_adv) if judge_each else x_adv

    # ------------------------------------------------------------------------------------ execution
    def run(self, name: str, family: str, attack: Callable[[], AttackOutput], params: dict | None = None,
            in_worst_case: bool = True, note: str = "", eps: float | None = None) -> AttackRun:
        """Time and count ``attack()`` (→ x_adv, or (robust, x_adv)), verify the ε-ball, judge on the system."""
        self.log(f"{name} …")
        self.counter.eval()  # libraries may have switched modes; every attack sees the deployed (eval) model
        self.counter.reset()
        t0 = time.perf_counter()
        out = attack()
        x_adv = out[1] if isinstance(out, tuple) else out
        if eps is not None:
            check_threat_model(name, self.x, x_adv, eps, self.norm)
        robust = out[0].cpu().bool() & self.judge(x_adv) if isinstance(out, tuple) else self.judge(x_adv)
        dt = time.perf_counter() - t0
        c = self.counter.counts()
        r = AttackRun(name, family, robust.cpu().bool(), dt, c["forwards"], c["backwards"], params or {},
                      in_worst_case, note)
        self.runs.append(r)
        self.log(f"{name}: {r.acc:.1%} ({dt:.1f} s)")
        return r

    def execute(self, step: Step) -> AttackRun:
        """Run one :class:`Step` (``on="survivors"``: on the points robust to every white-box run so far)."""
        attack = step.attack
        if step.on == "survivors":
            alive = self.survivors()
            attack = lambda: self.on_survivors(alive, step.attack)  # noqa: E731
        return self.run(step.name, step.family, attack, step.params, step.in_worst_case, step.note, step.eps)

    def execute_plan(self, steps: Iterable[Step]) -> list[AttackRun]:
        return [self.execute(s) for s in steps]

    def on_survivors(self, alive: torch.Tensor, fn: Callable[[torch.Tensor, torch.Tensor], AttackOutput]
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """``fn(x_sub, y_sub)`` on the ``alive`` points only, as AutoAttack runs each attack on the points
        still robust; the others stay broken."""
        robust = alive.clone()
        x_adv = self.x.clone()
        idx = torch.nonzero(alive).flatten()
        if len(idx):
            d = idx.to(self.device)
            out = fn(self.x[d], self.y[d])
            xa = out[1] if isinstance(out, tuple) else out
            x_adv[d] = xa.to(x_adv.dtype)
            robust[idx] = out[0].cpu().bool() if isinstance(out, tuple) else self.judge(x_adv[d], self.y[d])
        return robust.to(self.device), x_adv

    # -------------------------------------------------------------------------------------- results
    def survivors(self, families: tuple[str, ...] = ("clean", "white-box")) -> torch.Tensor:
        """Points robust to every run of ``families`` so far at the nominal ε (CPU bool)."""
        return self.worst_case(r for r in self.runs if r.family in families)

    def worst_case(self, runs: Iterable[AttackRun] | None = None) -> torch.Tensor:
        """Per-point worst case over ``runs`` (default: every run marked ``in_worst_case``), CPU bool."""
        alive = torch.ones(len(self.x), dtype=torch.bool)
        for r in self.runs if runs is None else runs:
            if r.in_worst_case:
                alive &= r.robust
        return alive

    def get(self, name: str) -> AttackRun:
        for r in self.runs:
            if r.name == name:
                return r
        raise KeyError(name)

    def find(self, name: str) -> AttackRun | None:
        return next((r for r in self.runs if r.name == name), None)

    def records(self) -> list[dict]:
        return [r.record() for r in self.runs]


def summary(robust: torch.Tensor) -> dict:
    """Accuracy, count and Clopper-Pearson interval of a per-point robust mask."""
    s = accuracy_summary(int(robust.sum()), len(robust))
    return {"acc": s["acc"], "ci": s["ci"], "k": s["k"], "n": s["n"]}


@dataclass
class EvaluationResult:
    """The result schema shared by every evaluator; :meth:`to_dict` is what the API returns and
    :func:`~shieldkit.evaluation.result.write_outputs` writes as ``evaluation.json``."""

    clean_acc: float | None
    robust: torch.Tensor  # per-point worst case
    attacks: list[dict]
    audit: list[dict]
    eps: float
    norm: str
    seed: int
    suite: str
    dataset: str
    model: dict
    threat_model: str
    curves: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    autoattack_acc: float | None = None
    pgd_acc: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # evaluator-specific keys (suite_spec, query_suite, …)
    # False for an evaluator that runs no audit (evaluate_basic): never "trustworthy", the headline says so
    audited: bool = True
    n: int | None = None  # points evaluated, when the worst case covers only some of them (an AutoAttack subset)

    @staticmethod
    def describe(model: nn.Module) -> dict:
        """The ``model`` entry: the model card when there is one, else the class name."""
        from shieldkit.models.protocol import card_of

        card = card_of(model)
        return card.to_dict() if card is not None else {"class": type(model).__name__}

    def to_dict(self, *, wall_time_s: float, device: str) -> dict:
        from shieldkit.evaluation import audit as A
        from shieldkit.utils.provenance import provenance

        worst = accuracy_summary(int(self.robust.sum()), len(self.robust))
        if self.audited:
            trusted, head = A.headline(self.audit, worst["acc"], worst["ci"])
        else:
            trusted, head = False, (
                f"NOT AUDITED — worst case over {', '.join(a['name'] for a in self.attacks if a['in_worst_case'])}: "
                f"{worst['acc']:.1%} (95% CI {worst['ci'][0]:.1%}–{worst['ci'][1]:.1%}, {worst['n']} points); "
                "no check for gradient masking was run: `shieldkit evaluate --suite quick` (or standard) audits it.")
        return {"clean_acc": self.clean_acc, "robust_acc": worst["acc"], "robust_acc_ci": worst["ci"],
                "autoattack_acc": self.autoattack_acc, "pgd_acc": self.pgd_acc, "eps": float(self.eps),
                "norm": self.norm, "threat_model": self.threat_model,
                "n": len(self.robust) if self.n is None else self.n, "robust_n": len(self.robust), "seed": self.seed,
                "suite": self.suite, "dataset": self.dataset, "model": self.model, "audited": self.audited,
                "valid": not A.invalid_reasons(self.audit), "trustworthy": trusted, "headline": head,
                "attacks": self.attacks, "curves": self.curves, "audit": self.audit,
                "per_point_robust": self.robust.int().tolist(), "notes": self.notes, **self.extra,
                "wall_time_s": round(wall_time_s, 2), "device": device, "provenance": provenance()}


__all__ = ["AttackRun", "EvaluationResult", "Runner", "Step", "summary"]
