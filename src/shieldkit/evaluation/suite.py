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
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shieldkit.attacks.adaptive import EOT, BPDAWrapper
from shieldkit.attacks.eval_pgd import pgd_eval
from shieldkit.attacks.library import canonical_norm, run_autoattack_detailed, run_decision_attack, run_torchattack
from shieldkit.attacks.losses import dfs_modified_loss, margin_loss, softmax_probs
from shieldkit.attacks.pgd import PGDConfig
from shieldkit.data.base import ImageDataset
from shieldkit.defenses.classic import InputTransformDefense
from shieldkit.defenses.temperature import TemperatureScaled
from shieldkit.evaluation import audit as A
from shieldkit.evaluation.result import eval_fingerprints, precheck, validity_probe, write_outputs
from shieldkit.evaluation.runner import AttackRun, EvaluationResult, Runner, Step, summary
from shieldkit.evaluation.suite_specs import SUITE_SPECS, SUITES, SuiteSpec  # re-exported
from shieldkit.models.protocol import card_of
from shieldkit.utils.validate import check_choice

FAMILIES = ("clean", "white-box", "black-box", "transfer", "adaptive")


class SuiteRunner(Runner):
    """The :class:`~shieldkit.evaluation.runner.Runner` plus what the suite's plan sections share: the
    threat model and budgets, the model gradient attacks differentiate (EOT-wrapped when the system is
    random), the optional inputs (preprocess, teacher, train data) and the runs the audit reads back."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, norm: str, eps: float,
                 spec: SuiteSpec, seed: int, device: torch.device, batch_size: int, eot_samples: int,
                 preprocess: Callable | None, teacher: nn.Module | None, train_data: ImageDataset | None,
                 verbose: bool) -> None:
        # the deployed system model(preprocess(x)); gradients flow (or not) as the preprocess says
        system = (model if preprocess is None
                  else InputTransformDefense(model, preprocess, "preprocess", mask_gradients=False).eval())
        super().__init__(system, x, y, seed=seed, device=device, batch_size=batch_size, norm=norm, verbose=verbose)
        self.system = self.counter  # what is judged (and attacked by non-adaptive attacks)
        self.raw_model, self.eps, self.spec, self.eot_samples = model, float(eps), spec, eot_samples
        self.preprocess, self.teacher, self.train_data = preprocess, teacher, train_data
        self.grad_model: nn.Module = self.counter  # EOT-wrapped if random
        self.random = False
        self.gstats: dict = {}
        self.aa_detail: dict = {}  # per AutoAttack version: per-sub-attack robust counts, times, warnings
        self.role: dict[str, Any] = {}  # the runs (and curve points) the audit needs, by role

    def cfg(self, steps: int, eps: float | None = None, random_start: bool = True) -> PGDConfig:
        e = self.eps if eps is None else eps
        return PGDConfig(eps=e, norm=self.norm, steps=steps, alpha=2.5 * e / max(steps, 1), random_start=random_start)

    def pgd_run(self, model: nn.Module, cfg: PGDConfig, loss: object = "ce", tag: str = "",
                target: torch.Tensor | None = None, subset: torch.Tensor | None = None) -> torch.Tensor:
        """Evaluation PGD (:func:`~shieldkit.attacks.eval_pgd.pgd_eval`, early stop per broken point)
        in batches, each with its own derived generator; ``subset`` (bool mask) limits the points
        attacked (the others are returned unchanged)."""

        def one(xb: torch.Tensor, yb: torch.Tensor, g: torch.Generator, idx: torch.Tensor) -> torch.Tensor:
            return pgd_eval(model, xb, yb, cfg, loss_fn=loss, target=None if target is None else target[idx],
                            generator=g)

        out = self.batched(one, "pgd", tag, subset=subset)
        assert isinstance(out, torch.Tensor)
        return out

    def pgd_step(self, name: str, model: nn.Module, cfg: PGDConfig, params: dict, *, loss: object = "ce",
                 tag: str, family: str = "white-box", in_worst_case: bool = True,
                 target: torch.Tensor | None = None) -> AttackRun:
        """One PGD run on every point as a plan step (its examples checked against ``cfg.eps``)."""
        return self.execute(Step(name, family, lambda: self.pgd_run(model, cfg, loss, tag, target), params,
                                 in_worst_case, eps=cfg.eps))

    def pgd_restarts(self, name: str, cfg: PGDConfig, restarts: int, params: dict,
                     first: AttackRun | None = None) -> tuple[AttackRun, AttackRun | None]:
        """PGD with ``restarts`` independent random starts, per-point worst case. The first restart
        (or an identical run already made, ``first``) is kept on its own for the restarts audit."""
        gm = self.grad_model
        if first is None:
            first = self.pgd_step(name, gm, cfg, params, tag=f"{name}/0")
        if restarts <= 1:
            return first, None

        def rest() -> tuple[torch.Tensor, torch.Tensor]:
            robust = first.robust.clone().to(self.device)
            x_last = self.x
            for r in range(1, restarts):  # later restarts only need the points still robust
                if not robust.any():
                    break
                x_last = self.pgd_run(gm, cfg, "ce", f"{name}/{r}", subset=robust)
                robust &= self.judge(x_last).to(self.device)
            return robust.cpu(), x_last

        allr = self.run(f"{name} ×{restarts} restarts", "white-box", rest, {**params, "restarts": restarts},
                        eps=cfg.eps)
        allr.wall_time_s += first.wall_time_s
        allr.forwards += first.forwards
        allr.backwards += first.backwards
        return first, allr


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
    model.eval().to(dev)
    if teacher is not None:
        teacher.eval().to(dev)
    ev = SuiteRunner(model, data.x, data.y, norm=norm, eps=eps, spec=spec, seed=seed, device=dev,
                     batch_size=batch_size, eot_samples=eot_samples, preprocess=preprocess, teacher=teacher,
                     train_data=train_data, verbose=verbose)
    validity = validity_probe(ev.system, data, eps=eps, norm=norm, batch=ev.bs, device=dev)
    try:
        for section in PLAN:
            section(ev)
    finally:
        model.train(was_training)
    audit += audit_from_results(ev)
    validity.append(A.check_clean_accuracy(ev.get("clean").acc, data.num_classes, len(data)))
    audit[:0] = validity  # validity checks first: they override every other verdict
    recs = ev.records()

    def acc_of(prefix: str) -> float | None:
        cands = [r["acc"] for r in recs if r["name"].startswith(prefix) and r["in_worst_case"]]
        return min(cands) if cands else None

    main = ev.role["pgd_main"]
    result = EvaluationResult(
        clean_acc=acc_of("clean"), robust=ev.worst_case(), attacks=recs, audit=audit, eps=eps, norm=norm,
        seed=seed, suite=spec.name, dataset=data.name, threat_model="Linf" if norm == "linf" else "L2",
        model=EvaluationResult.describe(model), curves=ev.role["curves"],
        notes=ev.notes, autoattack_acc=acc_of("autoattack"), pgd_acc=main.acc,
        extra={"pgd_attack": main.name, "randomised": ev.random, "eot_samples": eot_samples if ev.random else 0,
               "preprocess": getattr(preprocess, "__name__", repr(preprocess)) if preprocess is not None else None,
               "autoattack_detail": ev.aa_detail, "suite_spec": asdict(spec)})
    res = result.to_dict(wall_time_s=time.perf_counter() - t_start, device=str(dev))
    res["fingerprints"] = eval_fingerprints(model, data, {k: res[k] for k in (
        "eps", "norm", "n", "seed", "suite", "suite_spec", "eot_samples", "preprocess")})
    curves = ev.role["curves"]
    pngs = {"eps_curve": plot_eps_curve(curves["eps"], float(eps), norm, curves["eps_attack"]),
            "iteration_curve": plot_iteration_curve(curves["iterations"], float(eps), norm)}
    if out is not None:
        write_outputs(res, pngs, Path(out))
    res["_png"] = pngs
    return res


# ------------------------------------------------------------------------------------ the plan, by section
def probes(ev: SuiteRunner) -> None:
    """What the system is (softmax outputs? random?) and the clean run; EOT from here on if random."""
    probe_x = ev.x[: min(len(ev.x), ev.bs)]
    ev.role["probe_audit"] = [A.check_softmax(ev.system, probe_x)]
    rnd = A.probe_randomness(ev.system, probe_x)
    ev.random = bool(rnd["random"])
    ev.role["probe_audit"].append(A.check_randomness(rnd, ev.eot_samples))
    if ev.random and ev.eot_samples > 1:
        ev.grad_model = EOT(ev.counter, ev.eot_samples).eval()
        ev.notes.append(f"randomness detected: gradient attacks use EOT over {ev.eot_samples} samples")
    clean = ev.execute(Step("clean", "clean", lambda: ev.x))
    ok = clean.robust.to(ev.device)
    if ok.any():
        ev.gstats = A.input_gradient_stats(ev.grad_model, ev.x[ok][: ev.bs], ev.y[ok][: ev.bs])
    else:
        ev.gstats = {k: {"nan": 0.0, "zero": 0.0, "vanishing": 0.0, "median_norm": float("nan")}
                     for k in ("ce", "margin")}
    ev.role["probe_audit"].append(A.check_gradients(ev.gstats))


def white_box(ev: SuiteRunner) -> None:
    """FGSM, the iteration curve, the main PGD with restarts, the long PGD, CW (margin; ℓ2: torchattacks)."""
    spec, eps, norm, gm = ev.spec, ev.eps, ev.norm, ev.grad_model
    fgsm = ev.pgd_step("fgsm", gm, PGDConfig(eps=eps, norm=norm, steps=1, alpha=eps, random_start=False),
                       {"steps": 1, "alpha": eps}, tag="fgsm")
    iter_pts = []
    for k in spec.iter_curve:
        r = fgsm if k == 1 else ev.pgd_step(f"pgd-{k}", gm, ev.cfg(k), {"steps": k, "alpha": 2.5 * eps / k,
                                                                          "loss": "ce"}, tag=f"curve{k}")
        iter_pts.append({"steps": k, **summary(r.robust)})
    main_name = f"pgd-{spec.pgd_steps}"
    first, allr = ev.pgd_restarts(main_name, ev.cfg(spec.pgd_steps), spec.pgd_restarts,
                                  {"steps": spec.pgd_steps, "alpha": 2.5 * eps / spec.pgd_steps},
                                  first=ev.find(main_name))  # the iteration curve's run = restart 1
    if spec.pgd_long_steps:
        ev.pgd_step(f"pgd-{spec.pgd_long_steps}", gm, ev.cfg(spec.pgd_long_steps), {"steps": spec.pgd_long_steps},
                    tag="long")
    cw = ev.pgd_step(f"cw-{norm}-margin-pgd-{spec.cw_steps}", gm, ev.cfg(spec.cw_steps),
                     {"steps": spec.cw_steps, "loss": "CW margin"}, loss=margin_loss, tag="cw")
    if spec.cw_l2 and norm == "l2" and not ev.random:
        from shieldkit.attacks.cw import cw_l2

        # eps not re-checked: cw_l2 itself discards examples outside the ball (relative tolerance 1e-4)
        ev.execute(Step("cw-l2 (torchattacks)", "white-box",
                        lambda: cw_l2(ev.counter, ev.x, ev.y, eps=eps, steps=100, seed=ev.seed, device=ev.device,
                                      batch_size=ev.bs), {"c": 1.0, "steps": 100, "lr": 0.01}))
    ev.role.update(fgsm=fgsm, first=first, allr=allr, cw=cw, iter_pts=iter_pts, pgd_main=allr or first)


def autoattack(ev: SuiteRunner) -> None:
    """AutoAttack (pyautoattack) standard — its APGD subset in ``quick`` — and ``rand`` for random systems;
    the per-sub-attack detail is kept (``autoattack_detail`` in the result)."""
    spec = ev.spec

    def aa(version: str, attacks: tuple[str, ...] | None) -> tuple[torch.Tensor, torch.Tensor]:
        res = run_autoattack_detailed(ev.counter, ev.x, ev.y, norm=ev.norm, eps=ev.eps, version=version,
                                      seed=ev.seed, batch_size=ev.bs, device=ev.device, attacks=attacks)
        ev.aa_detail[version] = {"per_attack_robust": res.per_attack, "attack_time_s": res.attack_time,
                                 "warnings": res.warnings, "attacks": res.attacks, "n": len(ev.x),
                                 "backend": res.backend}
        return res.robust.to(ev.device), res.x_adv

    name = "autoattack-standard" if spec.aa_attacks is None else f"autoattack ({'+'.join(spec.aa_attacks)})"
    ev.execute(Step(name, "white-box", lambda: aa("standard", spec.aa_attacks),
                    {"version": "standard", "attacks": list(spec.aa_attacks) if spec.aa_attacks else "all"},
                    eps=ev.eps))
    if spec.aa_rand == "always" or (spec.aa_rand == "auto" and ev.random):
        ev.execute(Step("autoattack-rand", "white-box", lambda: aa("rand", None), {"version": "rand", "eot_iter": 20},
                        eps=ev.eps))


def black_box(ev: SuiteRunner) -> None:
    """Square, SPSA, HopSkipJump and the transfer attack, each on the points that survived every white-box
    attack (as AutoAttack runs Square last): their accuracy is "robust to white-box AND this attack", so any
    gap to the white-box worst case is points only the black-box attack could break."""
    spec, eps, norm = ev.spec, ev.eps, ev.norm
    ev.role["wb_worst"] = float(ev.survivors().float().mean())
    surv = {"attacked": "points robust to every white-box attack"}
    steps: list[Step] = []
    if spec.square_queries:
        if spec.square_official:
            sq, sq_params = (lambda xs, ys: aa_square(ev, xs, ys)), {"queries": 5000, "impl": "pyautoattack"}
        else:
            sq = lambda xs, ys: _ta_square(ev, xs, ys, spec.square_queries)  # noqa: E731
            sq_params = {"queries": spec.square_queries, "impl": "torchattacks"}
        steps.append(Step(f"square-{spec.square_queries}", "black-box", sq, {**sq_params, **surv}, on="survivors",
                          eps=eps))
    if spec.spsa_iters and norm == "linf":
        # Adam moves each pixel by ≈ lr per step, so lr = 2.5·ε/iters lets the budget reach the ε-ball
        # boundary (the PGD step-size rule); advertorch's default 0.01 cannot with few iterations.
        lr = 2.5 * eps / spec.spsa_iters
        spsa = lambda xs, ys: run_torchattack(  # noqa: E731
            "SPSA", ev.counter, xs, ys, seed=ev.seed, batch_size=ev.bs, device=ev.device, eps=eps, delta=0.01,
            lr=lr, nb_iter=spec.spsa_iters, nb_sample=spec.spsa_samples, max_batch_size=64)
        steps.append(Step(f"spsa-{spec.spsa_iters}", "black-box", spsa, {
            "iters": spec.spsa_iters, "samples": spec.spsa_samples, "delta": 0.01, "lr": lr, **surv},
            on="survivors", eps=eps))
    elif spec.spsa_iters:
        ev.notes.append("SPSA skipped: the available implementation (torchattacks/advertorch) is ℓ∞ only")
    if spec.hopskipjump:
        hsj = lambda xs, ys: run_decision_attack(  # noqa: E731
            ev.counter, xs, ys, norm=norm, eps=eps, seed=ev.seed, max_iter=spec.hsj_iter, max_eval=spec.hsj_eval,
            device=ev.device)
        steps.append(Step("hopskipjump", "black-box", hsj, {"max_iter": spec.hsj_iter, "max_eval": spec.hsj_eval,
                                                             **surv}, on="survivors", eps=eps))
    runs = ev.execute_plan(steps)
    if spec.transfer_epochs and ev.train_data is None:
        ev.notes.append("transfer attack skipped: no training images given (train_data / --data train split)")
    elif spec.transfer_epochs:
        runs.append(_transfer(ev, surv))
    ev.role["bb"] = {r.name: r.acc for r in runs}


def _transfer(ev: SuiteRunner, surv: dict) -> AttackRun:
    from shieldkit.attacks.transfer import transfer_attack
    from shieldkit.training.substitute import train_substitute

    ev.log("training substitute …")
    t0 = time.perf_counter()
    sub = train_substitute(ev.system, ev.train_data, epochs=ev.spec.transfer_epochs, seed=ev.seed, device=ev.device,
                           arch=None if card_of(ev.raw_model) else "mnist_cnn")
    params = {"substitute_epochs": ev.spec.transfer_epochs, "substitute_train_s": round(time.perf_counter() - t0, 1),
              "substitute_images": min(len(ev.train_data), 4000), **surv}
    return ev.execute(Step("transfer (substitute PGD-20)", "transfer",
                           lambda xs, ys: transfer_attack(sub, xs, ys, ev.cfg(20), generator=ev.gen("transfer")),
                           params, on="survivors", eps=ev.eps))


def adaptive(ev: SuiteRunner) -> None:
    """The adaptive attacks that apply: BPDA through a preprocess, CE on rescaled logits when CE gradients
    vanish, the latent attack, DataFreeShield's modified PGD (Table 21 a-c)."""
    spec, gm = ev.spec, ev.grad_model
    runs: list[AttackRun] = []
    if ev.preprocess is not None:
        bpda = BPDAWrapper(ev.preprocess, ev.counter.model.base_model).eval()
        if ev.random and ev.eot_samples > 1:
            bpda = EOT(bpda, ev.eot_samples).eval()
        for loss_name, loss in (("ce", "ce"), ("margin", margin_loss)):
            runs.append(ev.pgd_step(f"bpda-pgd-{spec.pgd_steps} ({loss_name})", ev.counter.through(bpda).eval(),
                                    ev.cfg(spec.pgd_steps), {"approx": "identity", "steps": spec.pgd_steps,
                                                             "loss": loss_name},
                                    loss=loss, tag=f"bpda-{loss_name}", family="adaptive"))
    g = ev.gstats["ce"]
    if g["vanishing"] > A.ZERO_GRAD_FAIL_FRACTION or g["zero"] > A.ZERO_GRAD_FAIL_FRACTION:
        scale = _logit_scale(ev.system, ev.x)
        if scale > 1:
            why = "CE gradients vanish: undo the softmax saturation"
            runs.append(ev.pgd_step(f"pgd-{spec.pgd_steps} CE on logits/{scale:.3g}",
                                    TemperatureScaled(gm, scale).eval(), ev.cfg(spec.pgd_steps),
                                    {"scale": scale, "why": why}, tag="rescaled", family="adaptive"))
    card = card_of(ev.raw_model)
    evaluation_only = card is not None and (card.extra or {}).get("features", True) is False
    if spec.latent and evaluation_only:
        ev.notes.append("latent attack skipped: the model was imported for evaluation only (no features layer)")
    if spec.latent and hasattr(ev.raw_model, "features") and not evaluation_only:
        from shieldkit.attacks.latent import latent_attack

        lcfg = ev.cfg(spec.pgd_steps)
        runs.append(ev.execute(Step("latent (Sabour et al.)", "adaptive", lambda: latent_attack(
            gm if hasattr(gm, "features") else ev.counter, ev.x, ev.y, lcfg, seed=ev.seed, generator=ev.gen("latent")),
            {"steps": spec.pgd_steps, "layer": "penultimate (model.features)"}, eps=ev.eps)))
    runs += _dfs_modified(ev)
    ev.role["adaptive"] = {r.name: r.acc for r in runs}


def _dfs_modified(ev: SuiteRunner) -> list[AttackRun]:
    """DataFreeShield Table 21's modified PGD: (a) KL to the student's clean output; with a teacher (b) to
    the teacher's and (c) both. Run in ``standard`` / ``full``, and in ``quick`` when a teacher is given."""
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
    if ev.spec.name == "quick" and ev.teacher is None:
        return []
    target = torch.cat([p_s, p_t if p_t is not None else p_s], 1)
    steps = ev.spec.pgd_steps
    return [ev.pgd_step(f"dfs-modified-pgd ({v})", ev.grad_model, ev.cfg(steps),
                        {"loss": desc, "steps": steps, "ref": "DataFreeShield Table 21"},
                        loss=dfs_modified_loss(v, k), tag=f"dfs{v}", family="adaptive", target=target)
            for v, desc in variants]


def curves(ev: SuiteRunner) -> None:
    """The ε-curve (PGD at other ε; the ε point itself joins the worst case) and the unbounded PGD — both
    audit inputs, neither part of the headline."""
    spec, eps, norm = ev.spec, ev.eps, ev.norm
    eps_pts = [{"eps": 0.0, **summary(ev.get("clean").robust)}]
    for f in spec.eps_factors:
        same = ev.find(f"pgd-{spec.eps_curve_steps}") if f == 1.0 else None
        if same is not None:
            eps_pts.append({"eps": eps, **summary(same.robust)})
            continue
        e = eps * f
        r = ev.pgd_step(f"pgd-{spec.eps_curve_steps} @ ε={e:.4g}", ev.grad_model, ev.cfg(spec.eps_curve_steps, e),
                        {"eps": e, "steps": spec.eps_curve_steps}, tag=f"eps{e}", in_worst_case=f == 1.0)
        eps_pts.append({"eps": e, **summary(r.robust)})
    big = 1.0 if norm == "linf" else float(ev.x[0].numel()) ** 0.5
    ev.role["unbounded"] = ev.pgd_step(
        f"pgd-{spec.unbounded_steps} unbounded (ε={big:.3g})", ev.grad_model,
        PGDConfig(eps=big, norm=norm, steps=spec.unbounded_steps, alpha=2.5 * big / spec.unbounded_steps),
        {"eps": big, "loss": "CW margin"}, loss=margin_loss, tag="unbounded", in_worst_case=False)
    ev.role["big"] = big
    ev.role["curves"] = {"eps": eps_pts, "eps_attack": f"PGD-{spec.eps_curve_steps}",
                         "iterations": ev.role["iter_pts"]}


PLAN: tuple[Callable[[SuiteRunner], None], ...] = (probes, white_box, autoattack, black_box, adaptive, curves)


def audit_from_results(ev: SuiteRunner) -> list[dict]:
    """The obfuscated-gradient checks that read the runs (:mod:`shieldkit.evaluation.audit`)."""
    n, role = len(ev.x), ev.role
    fgsm, first, allr = role["fgsm"], role["first"], role["allr"]
    white = {r.name: r.acc for r in ev.runs if r.family == "white-box" and r.in_worst_case}
    iter_best = min(r.acc for r in ev.runs if r.family == "white-box" and r.in_worst_case and r is not fgsm)
    ce_pgd = (allr or first).acc
    checks = [
        *role["probe_audit"],
        A.check_single_vs_iterative(fgsm.acc, iter_best, "best iterative white-box attack", n),
        A.check_iterations([(p["steps"], p["acc"]) for p in role["iter_pts"]], n),
        A.check_restarts(first.acc, ce_pgd, ev.spec.pgd_restarts, n),
        A.check_unbounded(role["unbounded"].acc, role["big"], n),
        A.check_eps_monotone([(p["eps"], p["acc"]) for p in role["curves"]["eps"]], n),
        A.check_blackbox(role["bb"], {"every white-box attack (per-point worst case)": role["wb_worst"]}, n),
        A.check_loss_consistency(ce_pgd, role["cw"].acc, n),
        A.check_adaptive(role["adaptive"], {**white, **role["bb"]}, n),
    ]
    for version, d in ev.aa_detail.items():
        ev.notes.extend(f"pyautoattack ({version}): {w}" for w in d["warnings"])
    return checks


@torch.no_grad()
def _logit_scale(model: nn.Module, x: torch.Tensor) -> float:
    """Scale s such that the median top-2 logit gap of logits/s is 5 (softmax no longer saturated)."""
    z = model(x[:250])
    top2 = z.topk(2, dim=1).values
    gap = float((top2[:, 0] - top2[:, 1]).median())
    return max(gap / 5.0, 1.0)


def _ta_square(ev: SuiteRunner, x: torch.Tensor, y: torch.Tensor, queries: int) -> tuple[torch.Tensor, torch.Tensor]:
    return run_torchattack("Square", ev.counter, x, y, seed=ev.seed, batch_size=ev.bs, device=ev.device,
                           norm="Linf" if ev.norm == "linf" else "L2", eps=ev.eps, n_queries=queries, n_restarts=1,
                           p_init=0.8, loss="margin", resc_schedule=True)


def aa_square(ev: SuiteRunner, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    res = run_autoattack_detailed(ev.counter, x, y, norm=ev.norm, eps=ev.eps, version="standard", seed=ev.seed,
                                  batch_size=ev.bs, device=ev.device, attacks=("square",), per_attack=False)
    return res.robust.to(ev.device), res.x_adv


__all__ = ["PLAN", "SUITES", "SUITE_SPECS", "SuiteRunner", "SuiteSpec", "audit_from_results", "eval_fingerprints",
           "evaluate", "precheck", "validity_probe", "write_outputs"]
