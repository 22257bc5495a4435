"""`shieldkit evaluate`: the full robustness evaluation — attacks, audit, curves, statistics.

``evaluate(model, dataset, norm=, eps=, suite=)`` runs every attack of the chosen suite on the same
``n`` test points, takes the **per-point worst case over every attack run at the nominal ε**
(robust accuracy = points correctly classified under *all* of them), runs the obfuscated-gradient
audit (:mod:`shieldkit.evaluation.audit`) and returns a RobustBench-style dict (``clean_acc``,
``autoattack_acc``, ``robust_acc``, ``eps``, ``norm``, ``threat_model``, ``n`` …, ``attacks``,
``curves``, ``audit``, ``headline``, ``provenance``). With ``out=DIR`` it also writes
``DIR/evaluation.json``, ``DIR/report.html`` and the curve PNGs.

Suites (attack budgets are fixed and recorded, as AutoAttack does, so numbers are comparable):

========  ====================================================================================
quick     clean, FGSM, PGD-20, CW-margin-20, AutoAttack subset (APGD-CE + APGD-T), ε-curve
          (PGD-10 at ½ε, ε, 2ε), iteration curve (1, 5, 20), unbounded PGD-50; plus the adaptive
          attacks that apply (BPDA if a preprocessing is given, CE on rescaled logits if CE
          gradients vanish, DataFreeShield-modified PGD (a)-(c) if a teacher is given).
standard  + PGD-50 × 3 restarts, CW-margin-50 (ℓ2: + torchattacks CW-ℓ2), full AutoAttack-standard,
          Square (torchattacks, 1,000 queries), SPSA (ℓ∞ only; 10 iterations × 64 samples),
          transfer from a substitute trained on target-labelled training images, latent attack,
          DataFreeShield-modified PGD (a) (and (b), (c) with a teacher), ε-curve (PGD-20 at
          ¼ε…2ε), iteration curve 1…100, unbounded PGD-100.
full      + PGD-1000, PGD-100 × 5 restarts, AutoAttack-rand, Square 5,000 queries (pyautoattack's),
          SPSA 50 iterations × 128 samples, HopSkipJump (ART; decision-based), iteration curve up to
          1000.
========  ====================================================================================

Cost control (all outcome-preserving): gradient attacks use :func:`~shieldkit.attacks.eval_pgd.pgd_eval`
(a point stops being attacked once misclassified); later PGD restarts attack only points still
robust; black-box and transfer attacks run on the points that survived every white-box attack (as
AutoAttack runs Square last), so their recorded accuracy is "robust to all white-box attacks *and*
this one" and the ``blackbox_vs_whitebox`` audit measures exactly the points only they could break.

Randomised models (repeated forward passes disagree) are attacked through EOT (``eot_samples``) and
AutoAttack ``rand`` is added. Non-differentiable input processing passed as ``preprocess=`` is
attacked with BPDA (identity backward, Athalye et al. 2018); the evaluated system is then
``model(preprocess(x))``. Models handed over in train mode are evaluated in eval mode (and the
audit warns).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from shieldkit.attacks.adaptive import EOT, BPDAWrapper
from shieldkit.attacks.counting import CountingModel
from shieldkit.attacks.eval_pgd import pgd_eval
from shieldkit.attacks.library import (
    canonical_norm,
    correct_mask,
    run_autoattack_detailed,
    run_decision_attack,
    run_torchattack,
)
from shieldkit.attacks.losses import dfs_modified_loss, margin_loss, softmax_probs
from shieldkit.attacks.pgd import PGDConfig
from shieldkit.data.base import ImageDataset
from shieldkit.defenses.classic import InputTransformDefense
from shieldkit.defenses.temperature import TemperatureScaled
from shieldkit.evaluation import audit as A
from shieldkit.evaluation.stats import accuracy_summary
from shieldkit.models.protocol import card_of
from shieldkit.utils.seed import derive_seed, make_generator
from shieldkit.utils.validate import check_choice

SUITES = ("quick", "standard", "full")


@dataclass(frozen=True)
class SuiteSpec:
    name: str
    pgd_steps: int = 20
    pgd_restarts: int = 1
    pgd_long_steps: int = 0  # one extra long PGD run (full: 1000)
    cw_steps: int = 20
    cw_l2: bool = False  # torchattacks CW-ℓ2 (only under the ℓ2 threat model)
    aa_attacks: tuple[str, ...] | None = ("apgd-ce", "apgd-t")  # None = the whole version
    aa_rand: str = "auto"  # AutoAttack 'rand': 'auto' (if randomness is detected) | 'always' | 'never'
    square_queries: int = 0
    square_official: bool = False  # pyautoattack's Square (5000 queries) instead of torchattacks'
    spsa_iters: int = 0
    spsa_samples: int = 128
    hopskipjump: bool = False
    hsj_iter: int = 10
    hsj_eval: int = 500
    transfer_epochs: int = 0
    latent: bool = False
    eps_factors: tuple[float, ...] = (0.5, 1.0, 2.0)
    eps_curve_steps: int = 10
    iter_curve: tuple[int, ...] = (1, 5, 20)
    unbounded_steps: int = 50


SUITE_SPECS: dict[str, SuiteSpec] = {
    "quick": SuiteSpec("quick"),
    "standard": SuiteSpec(
        "standard",
        pgd_steps=50,
        pgd_restarts=3,
        cw_steps=50,
        cw_l2=True,
        aa_attacks=None,
        square_queries=1000,
        spsa_iters=10,
        spsa_samples=64,
        transfer_epochs=2,
        latent=True,
        eps_factors=(0.25, 0.5, 1.0, 1.5, 2.0),
        eps_curve_steps=20,
        iter_curve=(1, 2, 5, 10, 20, 50, 100),
        unbounded_steps=100,
    ),
    "full": SuiteSpec(
        "full",
        pgd_steps=100,
        pgd_restarts=5,
        pgd_long_steps=1000,
        cw_steps=100,
        cw_l2=True,
        aa_attacks=None,
        aa_rand="always",
        square_queries=5000,
        square_official=True,
        spsa_iters=50,
        hopskipjump=True,
        hsj_iter=20,
        hsj_eval=1000,
        transfer_epochs=3,
        latent=True,
        eps_factors=(0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0),
        eps_curve_steps=50,
        iter_curve=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
        unbounded_steps=200,
    ),
}

FAMILIES = ("clean", "white-box", "black-box", "transfer", "adaptive")


@dataclass
class AttackRun:
    name: str
    family: str
    robust: torch.Tensor  # per point, CPU bool
    wall_time_s: float
    forwards: int
    backwards: int
    params: dict = field(default_factory=dict)
    in_worst_case: bool = True  # runs at other ε (curves, unbounded) are not
    note: str = ""

    def record(self) -> dict:
        s = accuracy_summary(int(self.robust.sum()), len(self.robust))
        return {
            "name": self.name,
            "family": self.family,
            "acc": s["acc"],
            "k": s["k"],
            "n": s["n"],
            "ci": s["ci"],
            "wall_time_s": round(self.wall_time_s, 3),
            "forwards": self.forwards,
            "backwards": self.backwards,
            "params": self.params,
            "in_worst_case": self.in_worst_case,
            "note": self.note,
        }


class _Evaluator:
    def __init__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        norm: str,
        eps: float,
        spec: SuiteSpec,
        seed: int,
        device: torch.device,
        batch_size: int,
        eot_samples: int,
        preprocess: Callable | None,
        teacher: nn.Module | None,
        train_data: ImageDataset | None,
        verbose: bool,
    ) -> None:
        self.raw_model = model
        # the deployed system model(preprocess(x)); gradients flow (or not) as the preprocess says
        system = (model if preprocess is None
                  else InputTransformDefense(model, preprocess, "preprocess", mask_gradients=False).eval())
        self.counter = CountingModel(system)
        self.system = self.counter  # what is judged (and attacked by non-adaptive attacks)
        self.x, self.y = x.to(device), y.to(device)
        self.norm, self.eps, self.spec, self.seed = norm, float(eps), spec, seed
        self.device, self.bs, self.eot_samples = device, batch_size, eot_samples
        self.preprocess, self.teacher, self.train_data, self.verbose = (
            preprocess,
            teacher,
            train_data,
            verbose,
        )
        self.runs: list[AttackRun] = []
        self.grad_model: nn.Module = self.counter  # EOT-wrapped if random
        self.notes: list[str] = []

    # ----------------------------------------------------------------------------------------- helpers
    def log(self, msg: str) -> None:
        if self.verbose:
            from rich.console import Console

            Console(stderr=True).print(f"[dim]{time.strftime('%H:%M:%S')}[/] {msg}")

    def gen(self, *parts: object) -> torch.Generator:
        return make_generator(derive_seed(self.seed, *parts), self.device)

    def judge(self, x_adv: torch.Tensor) -> torch.Tensor:
        return correct_mask(self.system, x_adv, self.y, self.bs, self.device)

    def _batched(self, fn: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]) -> torch.Tensor:
        outs = [fn(self.x[i : i + self.bs], self.y[i : i + self.bs], i) for i in range(0, len(self.x), self.bs)]
        return torch.cat(outs)

    def run(
        self,
        name: str,
        family: str,
        attack: Callable[[], torch.Tensor | tuple],
        params: dict | None = None,
        in_worst_case: bool = True,
        note: str = "",
    ) -> AttackRun:
        """Time and count ``attack()`` (returning x_adv, or (robust, x_adv)), judge on the system."""
        self.log(f"{name} …")
        self.counter.eval()  # libraries may have switched modes; every attack sees the deployed (eval) model
        self.counter.reset()
        t0 = time.perf_counter()
        out = attack()
        robust = out[0] & self.judge(out[1]) if isinstance(out, tuple) else self.judge(out)
        dt = time.perf_counter() - t0
        c = self.counter.counts()
        r = AttackRun(
            name,
            family,
            robust.cpu().bool(),
            dt,
            c["forwards"],
            c["backwards"],
            params or {},
            in_worst_case,
            note,
        )
        self.runs.append(r)
        self.log(f"{name}: {robust.float().mean().item():.1%} ({dt:.1f} s)")
        return r

    def pgd_run(
        self,
        model: nn.Module,
        cfg: PGDConfig,
        loss: object = "ce",
        tag: str = "",
        target: torch.Tensor | None = None,
        subset: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Evaluation PGD (:func:`~shieldkit.attacks.eval_pgd.pgd_eval`, early stop per broken point)
        in batches, each with its own derived generator; ``subset`` (bool mask) limits the points
        attacked (the others are returned unchanged)."""
        idx_all = torch.arange(len(self.x), device=self.device)
        if subset is not None:
            idx_all = idx_all[subset.to(self.device)]
        x_adv = self.x.clone()
        for i in range(0, len(idx_all), self.bs):
            idx = idx_all[i : i + self.bs]
            tb = None if target is None else target[idx]
            x_adv[idx] = pgd_eval(
                model,
                self.x[idx],
                self.y[idx],
                cfg,
                loss_fn=loss,
                target=tb,
                generator=self.gen("pgd", tag, i),
            )
        return x_adv

    def pgd_restarts(
        self,
        name: str,
        family: str,
        model: nn.Module,
        cfg: PGDConfig,
        restarts: int,
        loss: object = "ce",
        params: dict | None = None,
        first: AttackRun | None = None,
    ) -> tuple[AttackRun, AttackRun | None]:
        """PGD with ``restarts`` independent random starts, per-point worst case. The first restart
        (or an identical run already made, ``first``) is kept on its own for the restarts audit."""
        if first is None:
            first = self.run(name, family, lambda: self.pgd_run(model, cfg, loss, f"{name}/0"), params)
        if restarts <= 1:
            return first, None

        def rest() -> tuple[torch.Tensor, torch.Tensor]:
            robust = first.robust.clone().to(self.device)
            x_last = self.x
            for r in range(1, restarts):  # later restarts only need the points still robust
                if not robust.any():
                    break
                x_last = self.pgd_run(model, cfg, loss, f"{name}/{r}", subset=robust)
                robust &= self.judge(x_last).to(self.device)
            return robust.cpu(), x_last

        allr = self.run(f"{name} ×{restarts} restarts", family, rest, {**(params or {}), "restarts": restarts})
        allr.wall_time_s += first.wall_time_s
        allr.forwards += first.forwards
        allr.backwards += first.backwards
        return first, allr

    def white_box_survivors(self) -> torch.Tensor:
        """Points robust to every white-box attack run so far at the nominal ε (CPU bool)."""
        alive = torch.ones(len(self.x), dtype=torch.bool)
        for r in self.runs:
            if r.in_worst_case and r.family in ("clean", "white-box"):
                alive &= r.robust
        return alive

    def on_survivors(self, alive: torch.Tensor, fn: Callable) -> tuple[torch.Tensor, torch.Tensor]:
        """Run ``fn(x_sub, y_sub)`` (→ x_adv or (robust, x_adv)) on the ``alive`` points only, as
        AutoAttack runs each attack on the points still robust; the others stay broken."""
        robust = alive.clone()
        x_adv = self.x.clone()
        idx = torch.nonzero(alive).flatten()
        if len(idx):
            d = idx.to(self.device)
            out = fn(self.x[d], self.y[d])
            xa = out[1] if isinstance(out, tuple) else out
            x_adv[d] = xa.to(x_adv.dtype)
            if isinstance(out, tuple):
                robust[idx] = out[0].cpu().bool()
            else:  # judge the subset against its own labels
                robust[idx] = correct_mask(self.system, x_adv[d], self.y[d], self.bs, self.device)
        return robust.to(self.device), x_adv

    def cfg(self, steps: int, eps: float | None = None, random_start: bool = True) -> PGDConfig:
        e = self.eps if eps is None else eps
        return PGDConfig(eps=e, norm=self.norm, steps=steps, alpha=2.5 * e / max(steps, 1), random_start=random_start)

    def acc(self, name: str) -> float:
        for r in self.runs:
            if r.name == name:
                return float(r.robust.float().mean())
        raise KeyError(name)


def _resolve(device: str | torch.device) -> torch.device:
    from shieldkit.utils.device import resolve_device

    return torch.device(resolve_device(device) if isinstance(device, str) else device)


def evaluate(
    model: nn.Module,
    dataset: ImageDataset,
    *,
    norm: str = "linf",
    eps: float = 8 / 255,
    suite: str = "standard",
    n: int | None = 1000,
    seed: int = 0,
    device: str | torch.device = "auto",
    teacher: nn.Module | None = None,
    out: str | Path | None = None,
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    eot_samples: int = 10,
    train_data: ImageDataset | None = None,
    batch_size: int = 250,
    verbose: bool = False,
    spec: SuiteSpec | None = None,
) -> dict:
    """Evaluate ``model`` (images in [0, 1] → logits) on ``n`` points of ``dataset``; see module doc.

    ``teacher`` enables DataFreeShield's modified attacks (Table 21 b, c); ``train_data`` (images the
    evaluator may use) enables the transfer attack; ``spec`` overrides a suite's budgets.
    """
    from shieldkit.evaluation.curves import plot_eps_curve, plot_iteration_curve
    from shieldkit.utils.provenance import provenance

    norm = canonical_norm(norm)
    check_choice(suite, SUITES, "suite")
    if not isinstance(dataset, ImageDataset):
        raise TypeError(f"dataset must be a shieldkit ImageDataset, got {type(dataset).__name__}")
    eps = precheck(model, dataset, eps=eps, norm=norm, out=out, n=n)
    spec = spec or SUITE_SPECS[suite]
    dev = _resolve(device)
    t_start = time.perf_counter()
    data = dataset.subset(n, seed=seed) if n is not None and n < len(dataset) else dataset
    audit: list[dict] = [A.check_eval_mode(model)]
    was_training = model.training
    model.eval()
    model.to(dev)
    if teacher is not None:
        teacher.eval().to(dev)
    ev = _Evaluator(
        model,
        data.x,
        data.y,
        norm=norm,
        eps=eps,
        spec=spec,
        seed=seed,
        device=dev,
        batch_size=batch_size,
        eot_samples=eot_samples,
        preprocess=preprocess,
        teacher=teacher,
        train_data=train_data,
        verbose=verbose,
    )
    validity = validity_probe(ev.system, data, eps=eps, norm=norm, batch=ev.bs, device=dev)
    try:
        result = _run_all(ev, audit)
    finally:
        model.train(was_training)
    clean_run = next(r for r in ev.runs if r.name == "clean")
    validity.append(A.check_clean_accuracy(float(clean_run.robust.float().mean()), data.num_classes, len(data)))
    audit[:0] = validity  # validity checks first: they override every other verdict
    n_pts = len(data)
    robust_all = torch.ones(n_pts, dtype=torch.bool)
    for r in ev.runs:
        if r.in_worst_case:
            robust_all &= r.robust
    worst = accuracy_summary(int(robust_all.sum()), n_pts)
    trusted, head = A.headline(audit, worst["acc"], worst["ci"])
    recs = [r.record() for r in ev.runs]

    def acc_of(prefix: str) -> float | None:
        cands = [r["acc"] for r in recs if r["name"].startswith(prefix) and r["in_worst_case"]]
        return min(cands) if cands else None

    card = card_of(model)
    res: dict = {
        "clean_acc": acc_of("clean"),
        "robust_acc": worst["acc"],
        "robust_acc_ci": worst["ci"],
        "autoattack_acc": acc_of("autoattack"),
        "pgd_acc": next(r["acc"] for r in recs if r["name"] == result["pgd_main"]),
        "pgd_attack": result["pgd_main"],
        "eps": float(eps),
        "norm": norm,
        "threat_model": "Linf" if norm == "linf" else "L2",
        "n": n_pts,
        "seed": seed,
        "suite": spec.name,
        "dataset": data.name,
        "model": card.to_dict() if card is not None else {"class": type(model).__name__},
        "valid": not A.invalid_reasons(audit),
        "trustworthy": trusted,
        "headline": head,
        "attacks": recs,
        "curves": result["curves"],
        "audit": audit,
        "randomised": result["random"],
        "eot_samples": eot_samples if result["random"] else 0,
        "preprocess": getattr(preprocess, "__name__", repr(preprocess)) if preprocess is not None else None,
        "per_point_robust": robust_all.int().tolist(),
        "notes": ev.notes,
        "wall_time_s": round(time.perf_counter() - t_start, 2),
        "device": str(dev),
        "provenance": provenance(),
        "suite_spec": asdict(spec),
    }
    res["fingerprints"] = eval_fingerprints(model, data, {k: res[k] for k in (
        "eps", "norm", "n", "seed", "suite", "suite_spec", "eot_samples", "preprocess")})
    pngs = {
        "eps_curve": plot_eps_curve(result["curves"]["eps"], float(eps), norm, result["curves"]["eps_attack"]),
        "iteration_curve": plot_iteration_curve(result["curves"]["iterations"], float(eps), norm),
    }
    if out is not None:
        write_outputs(res, pngs, Path(out))
    res["_png"] = pngs
    return res


def precheck(model: nn.Module, dataset: ImageDataset, *, eps: float, norm: str, out: str | Path | None,
             n: int | None = None) -> float:
    """Everything that can be refused before a single attack runs (issue 13): ``--out`` not an existing
    file, a positive point count, ε inside the threat model, model card vs dataset (classes, channels,
    size, ≥ 2 classes) and finite weights. The Python API and the CLI both go through it. Returns ε."""
    from shieldkit.models.checks import check_finite_weights, check_model_data
    from shieldkit.utils.validate import check_eps, check_out_dir, check_positive_int

    check_out_dir(out, flag="out")
    if n is not None:
        check_positive_int(n, "n")
    eps = check_eps(eps, norm, dim=int(torch.tensor(dataset.image_shape).prod()), flag="eps")
    card = card_of(model)
    check_model_data(card, dataset, source=f"model {card.arch!r}" if card is not None else "model")
    check_finite_weights(model, source="model")
    return eps


def validity_probe(system: nn.Module, data: ImageDataset, *, eps: float, norm: str, batch: int,
                   device: torch.device) -> list[dict]:
    """The audit's validity checks that need no attack: finite logits, class count, ε range, sample size."""
    x = data.x[: min(len(data), batch)].to(device)
    with torch.no_grad():
        out = system(x)
    checks = [A.check_finite_outputs(system, x, out), A.check_class_count(int(out.shape[-1]), data.num_classes),
              A.check_eps_range(float(eps), norm, int(torch.tensor(data.image_shape).prod())),
              A.check_sample_size(len(data))]
    return checks


def eval_fingerprints(model: nn.Module, data: ImageDataset, config: dict) -> dict:
    """What determined an evaluation (issue 13): the model's weights + card, the exact points scored and
    the resolved evaluation settings. An evaluation is all-or-nothing (see :func:`write_outputs`), so a
    re-run into the same folder replaces it whole; these say whether the inputs changed."""
    from shieldkit.utils.fingerprint import fingerprint_dataset, fingerprint_model, shieldkit_version

    return {"model": fingerprint_model(model), "data": fingerprint_dataset(data), "evaluation": config,
            "version": shieldkit_version()}


# the files an evaluation writes; any of them left from an earlier evaluation is removed when a new one is
# written into the same folder (plus whatever the earlier evaluation.json listed under "artefacts")
EVAL_ARTEFACTS = ("evaluation.json", "report.html", "eps_curve.png", "iteration_curve.png",
                  "accuracy_vs_queries.png")


def write_outputs(res: dict, pngs: dict[str, bytes], out: Path) -> None:
    """Write the evaluation into ``out``: everything goes to a temporary sibling folder first, then the
    artefacts of any earlier evaluation in ``out`` are removed and the new ones moved in, so a report never
    sits beside stale plots (other files in ``out`` are left alone)."""
    import json
    import shutil
    import tempfile

    from shieldkit.reporting.eval_report import render_html
    from shieldkit.utils.fingerprint import first_difference
    from shieldkit.utils.io import atomic_write_json, atomic_write_text

    out = Path(out)
    if out.exists() and not out.is_dir():
        from shieldkit.errors import InputError

        raise InputError(f"out {out}: is an existing file, not a folder", hint="give a folder path for --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    names = [f"{k}.png" for k in pngs] + ["evaluation.json", "report.html"]
    try:
        old = json.loads((out / "evaluation.json").read_text())
        old = old if isinstance(old, dict) else {}
    except (OSError, ValueError):
        old = {}
    res = {**res, "artefacts": names, "replaces": None}
    if old:  # the folder held an evaluation: record whether this one was made from the same inputs
        diff = first_difference(old.get("fingerprints") or {}, res.get("fingerprints") or {})
        res["replaces"] = ("an evaluation of the same inputs" if diff is None else
                           f"an evaluation made from other inputs ({diff[0]} changed)")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        for k, b in pngs.items():
            (tmp / f"{k}.png").write_bytes(b)
        atomic_write_json(tmp / "evaluation.json", {k: v for k, v in res.items() if not k.startswith("_")})
        atomic_write_text(tmp / "report.html", render_html(res, pngs))
        out.mkdir(parents=True, exist_ok=True)
        stale = set(EVAL_ARTEFACTS) | {Path(a).name for a in old.get("artefacts", []) if isinstance(a, str)}
        for name in stale - set(names):
            (out / name).unlink(missing_ok=True)
        # the report last: a reader never sees a new report with the old plots
        for name in sorted(names, key=lambda s: s in ("report.html", "evaluation.json")):
            (tmp / name).replace(out / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _run_all(ev: _Evaluator, audit: list[dict]) -> dict:
    spec, eps, norm, n = ev.spec, ev.eps, ev.norm, len(ev.x)
    probe_x = ev.x[: min(len(ev.x), ev.bs)]
    # ---------------------------------------------------------------- probes
    audit.append(A.check_softmax(ev.system, probe_x))
    rnd = A.probe_randomness(ev.system, probe_x)
    random = bool(rnd["random"])
    audit.append(A.check_randomness(rnd, ev.eot_samples))
    if random and ev.eot_samples > 1:
        ev.grad_model = EOT(ev.counter, ev.eot_samples).eval()
        ev.notes.append(f"randomness detected: gradient attacks use EOT over {ev.eot_samples} samples")
    clean = ev.run("clean", "clean", lambda: ev.x)
    ok = clean.robust.to(ev.device)
    if ok.any():
        gstats = A.input_gradient_stats(ev.grad_model, ev.x[ok][: ev.bs], ev.y[ok][: ev.bs])
    else:
        gstats = {k: {"nan": 0.0, "zero": 0.0, "vanishing": 0.0, "median_norm": float("nan")} for k in ("ce", "margin")}
    audit.append(A.check_gradients(gstats))
    gm = ev.grad_model

    # ---------------------------------------------------------------- white-box
    fgsm = ev.run(
        "fgsm",
        "white-box",
        lambda: ev.pgd_run(gm, PGDConfig(eps=eps, norm=norm, steps=1, alpha=eps, random_start=False), tag="fgsm"),
        {"steps": 1, "alpha": eps},
    )
    iter_pts = []
    for k in spec.iter_curve:
        if k == 1:
            r = fgsm
        else:
            r = ev.run(
                f"pgd-{k}",
                "white-box",
                lambda k=k: ev.pgd_run(gm, ev.cfg(k), tag=f"curve{k}"),
                {"steps": k, "alpha": 2.5 * eps / k, "loss": "ce"},
            )
        iter_pts.append({"steps": k, **_acc(r.robust)})
    main_name = f"pgd-{spec.pgd_steps}"
    same = next((r for r in ev.runs if r.name == main_name), None)  # the iteration curve's run = restart 1
    first, allr = ev.pgd_restarts(
        main_name,
        "white-box",
        gm,
        ev.cfg(spec.pgd_steps),
        spec.pgd_restarts,
        params={"steps": spec.pgd_steps, "alpha": 2.5 * eps / spec.pgd_steps},
        first=same,
    )
    if spec.pgd_long_steps:
        ev.run(
            f"pgd-{spec.pgd_long_steps}",
            "white-box",
            lambda: ev.pgd_run(gm, ev.cfg(spec.pgd_long_steps), tag="long"),
            {"steps": spec.pgd_long_steps},
        )
    cw = ev.run(
        f"cw-{norm}-margin-pgd-{spec.cw_steps}",
        "white-box",
        lambda: ev.pgd_run(gm, ev.cfg(spec.cw_steps), loss=margin_loss, tag="cw"),
        {"steps": spec.cw_steps, "loss": "CW margin"},
    )
    if spec.cw_l2 and norm == "l2" and not random:
        from shieldkit.attacks.cw import cw_l2

        ev.run(
            "cw-l2 (torchattacks)",
            "white-box",
            lambda: cw_l2(ev.counter, ev.x, ev.y, eps=eps, steps=100, seed=ev.seed, device=ev.device, batch_size=ev.bs),
            {"c": 1.0, "steps": 100, "lr": 0.01},
        )
    aa_detail: dict = {}

    def aa(version: str, attacks: tuple[str, ...] | None) -> tuple[torch.Tensor, torch.Tensor]:
        res = run_autoattack_detailed(
            ev.counter,
            ev.x,
            ev.y,
            norm=norm,
            eps=eps,
            version=version,
            seed=ev.seed,
            batch_size=ev.bs,
            device=ev.device,
            attacks=attacks,
        )
        aa_detail[version] = {
            "per_attack_robust": res.per_attack,
            "attack_time_s": res.attack_time,
            "warnings": res.warnings,
            "attacks": res.attacks,
        }
        return res.robust.to(ev.device), res.x_adv

    aa_name = "autoattack-standard" if spec.aa_attacks is None else f"autoattack ({'+'.join(spec.aa_attacks)})"
    ev.run(
        aa_name,
        "white-box",
        lambda: aa("standard", spec.aa_attacks),
        {"version": "standard", "attacks": list(spec.aa_attacks) if spec.aa_attacks else "all"},
    )
    if spec.aa_rand == "always" or (spec.aa_rand == "auto" and random):
        ev.run("autoattack-rand", "white-box", lambda: aa("rand", None), {"version": "rand", "eot_iter": 20})

    # ---------------------------------------------------------------- black-box
    # Black-box and transfer attacks run on the points that survived every white-box attack (as
    # AutoAttack runs Square last): their accuracy is "robust to white-box AND this attack", so any
    # gap to the white-box worst case is points that only the black-box attack could break.
    alive = ev.white_box_survivors()
    wb_worst = float(alive.float().mean())
    bb: dict[str, float] = {}
    surv = {"attacked": "points robust to every white-box attack"}
    if spec.square_queries:
        if spec.square_official:
            sq = lambda xs, ys: aa_square(ev, xs, ys)  # noqa: E731
            sq_params = {"queries": 5000, "impl": "pyautoattack", **surv}
        else:
            sq = lambda xs, ys: _ta_square(ev, xs, ys, spec.square_queries)  # noqa: E731
            sq_params = {"queries": spec.square_queries, "impl": "torchattacks", **surv}
        r = ev.run(f"square-{spec.square_queries}", "black-box", lambda: ev.on_survivors(alive, sq), sq_params)
        bb[r.name] = float(r.robust.float().mean())
    if spec.spsa_iters and norm == "linf":
        # Adam moves each pixel by ≈ lr per step, so lr = 2.5·ε/iters lets the budget reach the ε-ball
        # boundary (the PGD step-size rule); advertorch's default 0.01 cannot with few iterations.
        spsa_lr = 2.5 * eps / spec.spsa_iters

        def spsa(xs: torch.Tensor, ys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return run_torchattack(
                "SPSA",
                ev.counter,
                xs,
                ys,
                seed=ev.seed,
                batch_size=ev.bs,
                device=ev.device,
                eps=eps,
                delta=0.01,
                lr=spsa_lr,
                nb_iter=spec.spsa_iters,
                nb_sample=spec.spsa_samples,
                max_batch_size=64,
            )

        r = ev.run(
            f"spsa-{spec.spsa_iters}",
            "black-box",
            lambda: ev.on_survivors(alive, spsa),
            {"iters": spec.spsa_iters, "samples": spec.spsa_samples, "delta": 0.01, "lr": spsa_lr, **surv},
        )
        bb[r.name] = float(r.robust.float().mean())
    elif spec.spsa_iters:
        ev.notes.append("SPSA skipped: the available implementation (torchattacks/advertorch) is ℓ∞ only")
    if spec.hopskipjump:

        def hsj(xs: torch.Tensor, ys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return run_decision_attack(
                ev.counter,
                xs,
                ys,
                norm=norm,
                eps=eps,
                seed=ev.seed,
                max_iter=spec.hsj_iter,
                max_eval=spec.hsj_eval,
                device=ev.device,
            )

        r = ev.run(
            "hopskipjump",
            "black-box",
            lambda: ev.on_survivors(alive, hsj),
            {"max_iter": spec.hsj_iter, "max_eval": spec.hsj_eval, **surv},
        )
        bb[r.name] = float(r.robust.float().mean())
    if spec.transfer_epochs:
        if ev.train_data is None:
            ev.notes.append("transfer attack skipped: no training images given (train_data / --data train split)")
        else:
            from shieldkit.attacks.transfer import transfer_attack
            from shieldkit.training.substitute import train_substitute

            ev.log("training substitute …")
            t0 = time.perf_counter()
            sub = train_substitute(
                ev.system,
                ev.train_data,
                epochs=spec.transfer_epochs,
                seed=ev.seed,
                device=ev.device,
                arch=None if card_of(ev.raw_model) else "mnist_cnn",
            )
            sub_time = time.perf_counter() - t0
            r = ev.run(
                "transfer (substitute PGD-20)",
                "transfer",
                lambda: ev.on_survivors(
                    alive,
                    lambda xs, ys: transfer_attack(sub, xs, ys, ev.cfg(20), generator=ev.gen("transfer")),
                ),
                {
                    "substitute_epochs": spec.transfer_epochs,
                    "substitute_train_s": round(sub_time, 1),
                    "substitute_images": min(len(ev.train_data), 4000),
                    **surv,
                },
            )
            bb[r.name] = float(r.robust.float().mean())

    # ---------------------------------------------------------------- adaptive
    adaptive: dict[str, float] = {}
    if ev.preprocess is not None:
        bpda_model = BPDAWrapper(ev.preprocess, ev.counter.model.base_model).eval()
        if random and ev.eot_samples > 1:
            bpda_model = EOT(bpda_model, ev.eot_samples).eval()
        for loss_name, loss in (("ce", "ce"), ("margin", margin_loss)):
            r = ev.run(
                f"bpda-pgd-{spec.pgd_steps} ({loss_name})",
                "adaptive",
                lambda loss=loss, ln=loss_name: ev.pgd_run(
                    _CountThrough(ev.counter, bpda_model).eval(), ev.cfg(spec.pgd_steps), loss, f"bpda-{ln}"
                ),
                {"approx": "identity", "steps": spec.pgd_steps, "loss": loss_name},
            )
            adaptive[r.name] = float(r.robust.float().mean())
    if gstats["ce"]["vanishing"] > A.ZERO_GRAD_FAIL_FRACTION or gstats["ce"]["zero"] > A.ZERO_GRAD_FAIL_FRACTION:
        scale = _logit_scale(ev.system, ev.x)
        if scale > 1:
            r = ev.run(
                f"pgd-{spec.pgd_steps} CE on logits/{scale:.3g}",
                "adaptive",
                lambda: ev.pgd_run(TemperatureScaled(gm, scale).eval(), ev.cfg(spec.pgd_steps), tag="rescaled"),
                {"scale": scale, "why": "CE gradients vanish: undo the softmax saturation"},
            )
            adaptive[r.name] = float(r.robust.float().mean())
    card = card_of(ev.raw_model)
    evaluation_only = card is not None and (card.extra or {}).get("features", True) is False
    if spec.latent and evaluation_only:
        ev.notes.append("latent attack skipped: the model was imported for evaluation only (no features layer)")
    if spec.latent and hasattr(ev.raw_model, "features") and not evaluation_only:
        from shieldkit.attacks.latent import latent_attack

        lcfg = ev.cfg(spec.pgd_steps)
        r = ev.run(
            "latent (Sabour et al.)",
            "adaptive",
            lambda: latent_attack(
                gm if hasattr(gm, "features") else ev.counter,
                ev.x,
                ev.y,
                lcfg,
                seed=ev.seed,
                generator=ev.gen("latent"),
            ),
            {"steps": spec.pgd_steps, "layer": "penultimate (model.features)"},
        )
        adaptive[r.name] = float(r.robust.float().mean())
    with torch.no_grad():
        k = int(ev.system(ev.x[:1]).shape[1])
    p_s = softmax_probs(ev.system, ev.x, ev.bs)
    variants = [("a", "KL(S(x')‖S(x))")]
    p_t = None
    if ev.teacher is not None:
        p_t = softmax_probs(ev.teacher, ev.x, ev.bs)
        variants += [("b", "KL(S(x')‖T(x))"), ("c", "KL(S(x')‖T(x)) + KL(S(x')‖S(x))")]
    else:
        ev.notes.append("DataFreeShield modified attacks (b), (c) skipped: no teacher given (--teacher)")
    if spec.name != "quick" or ev.teacher is not None:
        target = torch.cat([p_s, p_t if p_t is not None else p_s], 1)
        for v, desc in variants:
            r = ev.run(
                f"dfs-modified-pgd ({v})",
                "adaptive",
                lambda v=v: ev.pgd_run(gm, ev.cfg(spec.pgd_steps), dfs_modified_loss(v, k), f"dfs{v}", target=target),
                {"loss": desc, "steps": spec.pgd_steps, "ref": "DataFreeShield Table 21"},
            )
            adaptive[r.name] = float(r.robust.float().mean())

    # ---------------------------------------------------------------- curves at other ε (not in worst case)
    eps_pts = [{"eps": 0.0, **_acc(clean.robust)}]
    for f in spec.eps_factors:
        if f == 1.0:
            main = (
                next(r for r in ev.runs if r.name == f"pgd-{spec.eps_curve_steps}")
                if any(r.name == f"pgd-{spec.eps_curve_steps}" for r in ev.runs)
                else None
            )
            if main is not None:
                eps_pts.append({"eps": eps, **_acc(main.robust)})
                continue
        e = eps * f
        r = ev.run(
            f"pgd-{spec.eps_curve_steps} @ ε={e:.4g}",
            "white-box",
            lambda e=e: ev.pgd_run(gm, ev.cfg(spec.eps_curve_steps, e), tag=f"eps{e}"),
            {"eps": e, "steps": spec.eps_curve_steps},
            in_worst_case=f == 1.0,
        )
        eps_pts.append({"eps": e, **_acc(r.robust)})
    big = 1.0 if norm == "linf" else float(ev.x[0].numel()) ** 0.5
    unb = ev.run(
        f"pgd-{spec.unbounded_steps} unbounded (ε={big:.3g})",
        "white-box",
        lambda: ev.pgd_run(
            gm,
            PGDConfig(eps=big, norm=norm, steps=spec.unbounded_steps, alpha=2.5 * big / spec.unbounded_steps),
            loss=margin_loss,
            tag="unbounded",
        ),
        {"eps": big, "loss": "CW margin"},
        in_worst_case=False,
    )

    # ---------------------------------------------------------------- audit from results
    acc = lambda r: float(r.robust.float().mean())  # noqa: E731
    white = {r.name: acc(r) for r in ev.runs if r.family == "white-box" and r.in_worst_case}
    iter_best = min(acc(r) for r in ev.runs if r.family == "white-box" and r.in_worst_case and r is not fgsm)
    audit.append(A.check_single_vs_iterative(acc(fgsm), iter_best, "best iterative white-box attack", n))
    audit.append(A.check_iterations([(p["steps"], p["acc"]) for p in iter_pts], n))
    audit.append(A.check_restarts(acc(first), acc(allr) if allr is not None else acc(first), spec.pgd_restarts, n))
    audit.append(A.check_unbounded(acc(unb), big, n))
    audit.append(A.check_eps_monotone([(p["eps"], p["acc"]) for p in eps_pts], n))
    audit.append(A.check_blackbox(bb, {"every white-box attack (per-point worst case)": wb_worst}, n))
    ce_pgd = acc(allr) if allr is not None else acc(first)
    audit.append(A.check_loss_consistency(ce_pgd, acc(cw), n))
    standard = {**white, **bb}
    audit.append(A.check_adaptive(adaptive, standard, n))
    if aa_detail:
        for version, d in aa_detail.items():
            for w in d["warnings"]:
                ev.notes.append(f"pyautoattack ({version}): {w}")
    return {
        "random": random,
        "pgd_main": (allr or first).name,
        "curves": {"eps": eps_pts, "eps_attack": f"PGD-{spec.eps_curve_steps}", "iterations": iter_pts},
        "autoattack": aa_detail,
    }


class _CountThrough(nn.Module):
    """Route an adaptive model's forwards through the counter's bookkeeping (counts the real model)."""

    def __init__(self, counter: CountingModel, model: nn.Module) -> None:
        super().__init__()
        self.counter, self.model = counter, model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        self.counter.forwards += int(x.shape[0])
        if out.requires_grad:
            n = int(x.shape[0])

            def _hook(g: torch.Tensor) -> None:
                self.counter.backwards += n

            out.register_hook(_hook)
        return out


def _acc(robust: torch.Tensor) -> dict:
    s = accuracy_summary(int(robust.sum()), len(robust))
    return {"acc": s["acc"], "ci": s["ci"], "k": s["k"], "n": s["n"]}


@torch.no_grad()
def _logit_scale(model: nn.Module, x: torch.Tensor) -> float:
    """Scale s such that the median top-2 logit gap of logits/s is 5 (softmax no longer saturated)."""
    z = model(x[:250])
    top2 = z.topk(2, dim=1).values
    gap = float((top2[:, 0] - top2[:, 1]).median())
    return max(gap / 5.0, 1.0)


def _ta_square(ev: _Evaluator, x: torch.Tensor, y: torch.Tensor, queries: int) -> tuple[torch.Tensor, torch.Tensor]:
    return run_torchattack(
        "Square",
        ev.counter,
        x,
        y,
        seed=ev.seed,
        batch_size=ev.bs,
        device=ev.device,
        norm="Linf" if ev.norm == "linf" else "L2",
        eps=ev.eps,
        n_queries=queries,
        n_restarts=1,
        p_init=0.8,
        loss="margin",
        resc_schedule=True,
    )


def aa_square(ev: _Evaluator, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    res = run_autoattack_detailed(
        ev.counter,
        x,
        y,
        norm=ev.norm,
        eps=ev.eps,
        version="standard",
        seed=ev.seed,
        batch_size=ev.bs,
        device=ev.device,
        attacks=("square",),
        per_attack=False,
    )
    return res.robust.to(ev.device), res.x_adv


__all__ = ["SUITES", "SUITE_SPECS", "SuiteSpec", "eval_fingerprints", "evaluate", "precheck", "validity_probe",
           "write_outputs"]
