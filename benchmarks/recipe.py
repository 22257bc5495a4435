"""Recipe ablation (issue 16): what limits data-free robustness at ε = 0.1 / 0.2 on the mnist5k teacher.

Every row starts from the same teacher copy and changes **one factor** of a common base — a
synthesis factor (clamping the image to the pixel range during optimisation, iterations, label
scheme, BN-loss norm, randomised DSS terms, jitter) or a training factor (clean-term temperature,
BatchNorm passes, PGD start, inner-loss target, ε warm-up, lr) — at the same budget (samples ×
synthesis iterations, training updates × PGD steps). Each row: clean / PGD-20 on ``--n`` real test
points and AutoAttack-standard (pyautoattack) on ``--aa-n`` of them, with Clopper-Pearson intervals.

Regenerate (from the repo root; resumable — finished rows are read back, synthetic sets are cached
under ``--work`` by their configuration):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/recipe.py --rows all
    .venv/bin/python benchmarks/recipe.py --merge-only          # rewrite recipe.md from recipe.json

Results: ``benchmarks/results/recipe.json`` (a row per name) and ``recipe.md``.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import sys
import time
from pathlib import Path

import torch

from shieldkit.data import load_dataset
from shieldkit.evaluation.basic import evaluate_basic
from shieldkit.pipeline import ensure_teacher
from shieldkit.synthesis import SynthesisConfig, load_synthetic, synthesize
from shieldkit.training.robust import RobustTrainConfig, init_student, train_robust
from shieldkit.utils.io import atomic_write_json, atomic_write_text
from shieldkit.utils.provenance import provenance

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"

# The common base. Synthesis: the reference loop of issue 16 (image clamped to [0, 1] after every Adam
# step, random labels, 200 iterations); training: L_DFShield at T = 1 for all three KL terms, PGD-10
# from a uniform start maximising KL(T(x)‖S(x')), two train-mode BN passes, SGD 0.01 cosine, batch 100.
BASE_SYN = dict(n_samples=1200, batch_size=200, iterations=200, clamp=True, labels="random", seed=0)
# The base's training factors (objective, attack start, no warm-up, no clipping), reused by the demo rows below
REF_TRAIN = dict(attack_start="uniform", eps_warmup=0.0, grad_clip=None,
                 objective_kwargs=dict(clean_temperature=1.0, bn_mode="separate", inner_target="teacher"))
BASE_TRAIN = dict(epochs=25, batch_size=100, lr=0.01, attack_steps=10, seed=0, **REF_TRAIN)
# shieldkit's recipe before issue 16 (the demo's synthesis and training at the same budget)
OLD_SYN = dict(clamp=False, labels="balanced")
OLD_TRAIN = dict(attack_start="normal", eps_warmup=0.3, grad_clip=5.0,
                 objective_kwargs=dict(clean_temperature=20.0, bn_mode="joint", inner_target="student"))

# name -> (synthesis overrides, training overrides); every ε gets every row
ROWS: dict[str, tuple[dict, dict]] = {
    "base": ({}, {}),
    # control: the same training on n_samples *real* training digits (teacher logits as targets, labels unused)
    # — the ceiling of any synthetic set at this training budget
    "real_data": ({"real": True}, {}),
    "old_recipe": (OLD_SYN, OLD_TRAIN),
    "old_synthesis": (OLD_SYN, {}),
    "old_training": ({}, OLD_TRAIN),
    "syn_no_clamp": ({"clamp": False}, {}),
    "syn_balanced_labels": ({"labels": "balanced"}, {}),
    "syn_iters_100": ({"iterations": 100}, {}),
    "syn_bn_squared": ({"bn_norm": "squared"}, {}),
    "syn_fixed_coefficients": ({"coefficients": "fixed"}, {}),
    "syn_dss_all_terms": ({"dss_terms": ("class", "feature", "prior")}, {}),
    "syn_no_jitter": ({"jitter": 0}, {}),
    "train_clean_T20": ({}, {"objective_kwargs": {"clean_temperature": 20.0}}),
    "train_joint_bn": ({}, {"objective_kwargs": {"bn_mode": "joint"}}),
    "train_normal_start": ({}, {"attack_start": "normal"}),
    "train_inner_student": ({}, {"objective_kwargs": {"inner_target": "student"}}),
    "train_eps_warmup": ({}, {"eps_warmup": 0.3}),
    "train_lr_0.05": ({}, {"lr": 0.05}),
    # issue 17's meta-generator synthesis (synthesis.fast) under the base and the old training
    "syn_fast": ({"method": "fast"}, {}),
    "syn_fast_old_training": ({"method": "fast"}, OLD_TRAIN),
    "syn_fast_n2400": ({"method": "fast", "n_samples": 2400}, {}),  # twice the samples and updates (not equal budget)
}


# demo rows: `shieldkit shield --eps E` at the demo budget (pipeline.demo_config: 1,600 samples × 150 iterations,
# 25 epochs, evaluation on 1,000 real test points, AutoAttack on 200), with synthesis and training overrides
# (issue 17 item 3: fewer inner steps — PGD-7 step ε/4, the demo's setting until these rows; PGD-3 step ε/2, the
# demo's setting since; FGSM from a uniform start with step 1.25ε, Wong et al. 2020). Every row records its
# resolved training config: the `demo` rows measured before the switch ran PGD-7.
DEMO_ROWS: dict[str, dict[str, dict]] = {
    "demo": {},  # the defaults as shipped when the row ran
    "demo_new_synthesis": {"synthesis": {"clamp": True, "labels": "random"}},  # what the ε = 0.2 rows favour
    "demo_pgd7": {"training": {"attack_steps": 7, "attack_alpha_ratio": 0.25}},
    "demo_pgd3": {"training": {"attack_steps": 3, "attack_alpha_ratio": 0.5}},
    "demo_fgsm_rs": {"training": {"attack_steps": 1, "attack_alpha_ratio": 1.25, "attack_start": "uniform"}},
    "demo_fast": {"synthesis": {"method": "fast"}},  # issue 17's meta-generator synthesis (synthesis.fast)
    "demo_fast_w300": {"synthesis": {"method": "fast", "fast": {"warmup_batches": 300}}},
    "demo_fast_e10": {"synthesis": {"method": "fast"}, "training": {"epochs": 10}},  # the demo's time (issue 17)
    "demo_dss": {"synthesis": {"method": "dss"}},  # the demo as shipped, but DSS synthesis (issue 17 comparison)
    "demo_fast_pgd7": {"synthesis": {"method": "fast"}, "training": {"attack_steps": 7, "attack_alpha_ratio": 0.25}},
    # the demo at batch 200 (generator synthesis, 80 updates: the demo's batch when these rows ran, pinned so that
    # they rerun as recorded) with BASE_TRAIN's objective and attack start instead of OLD_TRAIN's (what `syn_fast`
    # favours at ε = 0.2), then with its PGD-10 step ε/4 too, then with 2.5× the updates as well
    "demo_ref_training": {"training": {**REF_TRAIN, "batch_size": 200}},
    "demo_ref_training_pgd10": {"training": {**REF_TRAIN, "batch_size": 200, "attack_steps": 10,
                                             "attack_alpha_ratio": 0.25}},
    "demo_ref_training_pgd10_e25": {"training": {**REF_TRAIN, "batch_size": 200, "attack_steps": 10,
                                                 "attack_alpha_ratio": 0.25, "epochs": 25}},
    # the demo's compute (10 epochs of PGD-3 over 1,600 samples) in 4× / 8× the updates: batches of 50 / 25, not 200
    # (batch 25 is the demo's default since; `demo_b200` is the demo before that)
    "demo_b200": {"training": {"batch_size": 200}},
    "demo_b50": {"training": {"batch_size": 50}},
    "demo_b25": {"training": {"batch_size": 25}},
    "demo_ref_training_b50": {"training": {**REF_TRAIN, "batch_size": 50}},
    # issue 16 item 4, the claims that did not reproduce (dfs_claims.md), re-run on the shipped demo recipe
    # (generator set, batch 25, PGD-3 step ε/2) at ε = 0.1; AutoAttack on 100 points to fit the rows in a stop.
    # Table 7's loss zoo (the `demo` row's objective is L_DFShield):
    **{f"demo_loss_{obj}": {"training": {"objective": obj}, "evaluation": {"aa_n": 100}}
       for obj in ("dfshield", "std", "trades", "mart", "ard", "rslad")},
    # GradRefine (ℬ = 4) at equal compute (the same minibatch passes, so 4× fewer updates) and at equal updates
    "demo_gradrefine4": {"training": {"grad_refine_batches": 4}, "evaluation": {"aa_n": 100}},
    "demo_gradrefine4_equal_updates": {"training": {"grad_refine_batches": 4, "batch_size": 25, "epochs": 40},
                                       "evaluation": {"aa_n": 100}},
    # Appendix C, more samples, at equal updates (640): 800 × 20 epochs, the demo's 1,600 × 10, 3,200 × 5
    "demo_n800_e20": {"synthesis": {"n_samples": 800}, "training": {"epochs": 20}, "evaluation": {"aa_n": 100}},
    "demo_n3200_e5": {"synthesis": {"n_samples": 3200}, "training": {"epochs": 5}, "evaluation": {"aa_n": 100}},
    # issue 16 item 1 on the shipped recipe: one factor at a time from `grid_base` (the demo as shipped — generator
    # set, L_DFShield at T = 20 with joint BN, PGD-3 step ε/2 from a normal start, ε warm-up 0.3, clip 5, batch 25,
    # 640 updates — with AutoAttack on 100 points); the same samples and training updates in every row
    **{f"grid_{name}": {**over, "evaluation": {"aa_n": 100}} for name, over in {
        "base": {},
        # the base again with other seeds (synthesis and training): how far a row moves by chance alone
        "base_seed1": {"synthesis": {"seed": 1}, "training": {"seed": 1}},
        "base_seed2": {"synthesis": {"seed": 2}, "training": {"seed": 2}},
        # synthesis factors (the generator's sigmoid output is always in range: no clamping factor here)
        "syn_random_labels": {"synthesis": {"labels": "random"}},
        "syn_fixed_coefficients": {"synthesis": {"coefficients": "fixed"}},
        "syn_dss_all_terms": {"synthesis": {"dss_terms": ("class", "feature", "prior")}},
        "syn_no_jitter": {"synthesis": {"jitter": 0}},
        "syn_bn_squared": {"synthesis": {"bn_norm": "squared"}},
        "syn_steps10": {"synthesis": {"fast": {"steps": 10}}},  # 2× the generator steps per batch (2× synthesis)
        # the three synthesis factors that raised ε = 0.2's PGD-20 most, together
        "syn_combined": {"synthesis": {"fast": {"steps": 10}, "jitter": 0, "dss_terms": ("class", "feature", "prior")}},
        # the two single factors that moved ε = 0.2 furthest past the base's seed spread, together, on three seeds
        **{f"best{tag}": {"synthesis": {"fast": {"steps": 10}, **seed}, "training": {"lr": 0.05, **seed}}
           for tag, seed in (("", {}), ("_seed1", {"seed": 1}), ("_seed2", {"seed": 2}))},
        # training factors
        "train_clean_T1": {"training": {"objective_kwargs": {"clean_temperature": 1.0}}},
        "train_separate_bn": {"training": {"objective_kwargs": {"bn_mode": "separate"}}},
        "train_inner_teacher": {"training": {"objective_kwargs": {"inner_target": "teacher"}}},
        "train_uniform_start": {"training": {"attack_start": "uniform"}},
        "train_no_warmup": {"training": {"eps_warmup": 0.0}},
        "train_no_clip": {"training": {"grad_clip": None}},
        "train_lr_0.05": {"training": {"lr": 0.05}},
    }.items()},
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def merged(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = {**out.get(k, {}), **v} if isinstance(v, dict) else v
    return out


def real_set(teacher, n: int, seed: int, device: str):  # noqa: ANN001, ANN201
    """``n`` real mnist5k training digits (class-stratified subset) with the teacher's logits."""
    from types import SimpleNamespace

    train = load_dataset("mnist5k", "train").subset(n, seed=seed)
    teacher.eval()
    with torch.no_grad():
        t = torch.cat([teacher(train.x[i:i + 500].to(device)).cpu() for i in range(0, n, 500)])
    return SimpleNamespace(x=train.x, y=t.argmax(1), t_logits=t)


def synthetic_set(teacher, syn: dict, work: Path, device: str):  # noqa: ANN001, ANN201
    if syn.get("real"):
        data = real_set(teacher, syn["n_samples"], syn["seed"], device)
        return data, {"real": True, "n_samples": syn["n_samples"], "seed": syn["seed"]}, 0.0
    cfg = SynthesisConfig(**syn)
    key = hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()[:12]
    folder = work / f"syn-{key}"
    t0 = time.perf_counter()
    synthesize(teacher, folder / teacher.card.arch, cfg, device=device, progress=False)
    folder = folder / teacher.card.arch
    return load_synthetic(folder), cfg.to_dict(), time.perf_counter() - t0


def user_teacher(source: str, label: str, device: str):  # noqa: ANN201 - a NormalizedClassifier
    """A user's own teacher, imported as ``shieldkit import-model`` imports it (issue 16's second architecture).

    ``source`` is ``file.py:Class``; the file's ``train(x, y)`` is the user's training script, run once on the
    mnist5k training split (its state_dict saved under ``runs/teachers/mnist5k-<label>/``). The weights are then
    imported with :func:`shieldkit.models.importers.import_model` (``require_bn``: the checks a user's model
    gets) and saved with ``save_model``; later runs load that saved model. Its clean and attacked accuracy are in
    :func:`attacked_teacher`'s file."""
    from shieldkit.models import load_model, save_model
    from shieldkit.models.importers import import_model
    from shieldkit.models.pysource import load_module, split_class_spec

    folder = REPO / "runs" / "teachers" / f"mnist5k-{label}"
    if not (folder / "model.safetensors").exists():
        if (spec := split_class_spec(source)) is None:
            raise SystemExit(f"--teacher-source {source!r}: expected path/to/file.py:ClassName")
        file = spec[0]
        train = load_dataset("mnist5k", "train")
        log(f"training the user's {source} on {len(train.x)} mnist5k digits …")
        net = load_module(file).train(train.x, train.y)
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(net.state_dict(), folder / "weights.pt")
        save_model(import_model(source, weights=folder / "weights.pt", num_classes=10, in_channels=1, image_size=28,
                                dataset="mnist5k", require_bn=True), folder / "model")
    return attacked_teacher(load_model(folder / "model", device=device), source, device)


def attacked_teacher(teacher, source: str, device: str):  # noqa: ANN001, ANN201
    """The undefended teacher under the rows' attacks (PGD-20 on 1,000 points, AutoAttack on 200) at ε = 0.1 / 0.2,
    once, written to ``benchmarks/results/recipe_user_teacher.json``: the attacks must reach ≈ 0 % on this
    architecture before its shielded rows mean anything."""
    out = RESULTS / "recipe_user_teacher.json"
    if not out.exists():
        test = load_dataset("mnist5k", "test")
        rows = {}
        for eps in (0.1, 0.2):
            ev = evaluate_basic(teacher, test, eps=eps, n=1000, aa_n=200, autoattack=True, device=device)
            rows[f"eps{eps:g}"] = {k: ev.get(k) for k in ("clean_acc", "pgd_acc", "autoattack_acc", "n", "aa_n",
                                                         "clean", "pgd", "autoattack")}
            log(f"undefended {source} at ε = {eps:g}: {rows[f'eps{eps:g}']['clean_acc']:.3f} / "
                f"{rows[f'eps{eps:g}']['pgd_acc']:.3f} / {rows[f'eps{eps:g}']['autoattack_acc']}")
        atomic_write_json(out, {"source": source, "card": teacher.card.to_dict(), **rows, "provenance": provenance()})
    return teacher


def run_row(name: str, eps: float, teacher, test, args: argparse.Namespace) -> dict:  # noqa: ANN001
    syn_over, train_over = ROWS[name]
    syn, scfg, syn_s = synthetic_set(teacher, merged(BASE_SYN, syn_over), Path(args.work), args.device)
    tcfg = RobustTrainConfig(eps=eps, **merged(BASE_TRAIN, train_over))
    student = init_student(teacher)
    t0 = time.perf_counter()
    train_robust(student, syn.x, tcfg, y=syn.y, t_logits=syn.t_logits, device=args.device, progress=False)
    train_s = time.perf_counter() - t0
    ev = evaluate_basic(student, test, eps=eps, n=args.n, aa_n=args.aa_n, autoattack=args.aa_n > 0,
                        device=args.device)
    ev.pop("per_point", None)
    ev.pop("provenance", None)
    return {"name": name, "eps": eps, "synthesis": scfg, "training": tcfg.to_dict(),
            "clean_acc": ev["clean_acc"], "pgd_acc": ev["pgd_acc"], "autoattack_acc": ev.get("autoattack_acc"),
            "n": ev["n"], "aa_n": ev.get("aa_n"), "clean": ev["clean"], "pgd": ev["pgd"],
            "autoattack": ev.get("autoattack"), "updates": tcfg.updates_per_epoch(len(syn.x)) * tcfg.epochs,
            "seconds": {"synthesis": syn_s, "training": train_s, **ev["seconds"]}}


def run_demo_row(name: str, eps: float, teacher, test, args: argparse.Namespace) -> dict:  # noqa: ANN001
    """``pipeline.shield`` on the teacher at the demo budget and ε (the command ``shield --eps`` runs)."""
    import dataclasses

    from shieldkit.pipeline import demo_config, shield

    cfg = demo_config()
    syn_over = DEMO_ROWS[name].get("synthesis", {})
    train_over = DEMO_ROWS[name].get("training", {})
    eval_over = DEMO_ROWS[name].get("evaluation", {})
    cfg = dataclasses.replace(cfg, synthesis=dataclasses.replace(cfg.synthesis, **syn_over),
                              training=dataclasses.replace(cfg.training, eps=eps, **train_over),
                              evaluation=dataclasses.replace(cfg.evaluation, **eval_over))
    t0 = time.perf_counter()
    arch = "" if args.label == "mnist_cnn" else f"@{args.label}"  # one run folder per teacher
    res = shield(teacher, Path(args.work) / f"demo-eps{eps:g}-{name}{arch}", cfg, test_data=test, device=args.device,
                 progress=False, evaluate_teacher=False, overwrite=args.redo)  # --redo: the run folder too
    sh = res["shielded"]
    return {"name": name, "eps": eps, "command": f"shieldkit shield --eps {eps:g} at the demo budget"
            + "".join(f" with {part} {over}" for part, over in DEMO_ROWS[name].items()),
            "synthesis": cfg.synthesis.to_dict(), "training": cfg.training.to_dict(),
            "clean_acc": sh["clean_acc"], "pgd_acc": sh["pgd_acc"], "autoattack_acc": sh.get("autoattack_acc"),
            "n": sh["n"], "aa_n": sh.get("aa_n"), "clean": sh.get("clean"), "pgd": sh.get("pgd"),
            "autoattack": sh.get("autoattack"), "trustworthy": res.get("trustworthy"),
            "updates": cfg.training.updates_per_epoch(cfg.synthesis.n_samples) * cfg.training.epochs,
            "seconds": {"total": time.perf_counter() - t0, **res["seconds"]}}


def _pct(d: dict | None) -> str:
    if not d:
        return "—"
    lo, hi = d["ci"]
    return f"{100 * d['acc']:.1f} [{100 * lo:.0f}, {100 * hi:.0f}]"


def _seconds(row: dict, stage: str) -> str:
    s = (row.get("seconds") or {}).get(stage)
    return "—" if s is None else f"{s:.0f}"


def render(rows: dict) -> str:
    lines = ["# Recipe ablation (issues 16, 17)", "",
             "mnist5k teachers (`mnist_cnn`: 4 conv-BN, 66k parameters; `mnist_cnn5`: 5 conv-BN, 70k), ℓ∞. One factor "
             "changed per row from `base` (see `benchmarks/recipe.py` for the base and each factor); `real_data` "
             "is the same training on 1,200 *real* training digits (the ceiling of any synthetic set at this "
             "budget); `reference_*` rows are the independent loop of `benchmarks/recipe_reference.py`; `demo*` "
             "rows are `shieldkit shield --eps E` at the demo budget of the day they ran (1,600 samples; the "
             "updates column: 200 until the demo moved to 10 epochs of the generator's set, 80 then, 640 since its "
             "move to batches of 25; PGD-7 step ε/4 "
             "in the rows run before 2026-12-07's switch to PGD-3 step ε/2, `demo_pgd3` / `demo_fgsm_rs` change only "
             "the inner attack; `demo_ref_training*` use the base's objective and attack start; `demo_loss_*`, "
             "`demo_gradrefine4*` and `demo_n*` re-run `dfs_claims.md`'s claims on the shipped recipe, AutoAttack "
             "on 100 points; training s on a shared machine). Clean / "
             "PGD-20 on n real test points, AutoAttack-standard on aa_n of them; 95 % Clopper-Pearson intervals.", ""]
    ref_path = RESULTS / "recipe_reference.json"
    ref = json.loads(ref_path.read_text()) if ref_path.exists() else {}
    everything = {**rows, **{k: {**r, "teacher": r["args"]["arch"]} for k, r in ref.items()}}
    for eps in sorted({r["eps"] for r in everything.values()}):
        lines += [f"## ε = {eps:g}", "",
                  "| row | teacher | clean | PGD-20 | AutoAttack | n / aa_n | updates | training s |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in everything.values():
            if r["eps"] == eps:
                lines.append(f"| {r['name']} | {r.get('teacher') or 'mnist_cnn'} | {_pct(r['clean'])} | "
                             f"{_pct(r['pgd'])} | {_pct(r['autoattack'])} | {r['n']} / {r['aa_n'] or 0} | "
                             f"{r.get('updates', '—')} | {_seconds(r, 'training')} |")
        lines.append("")
    lines += grid_table(rows)
    lines += contrasts(everything)
    return "\n".join(lines)


def grid_table(rows: dict) -> list[str]:
    """Issue 16 item 1 on the shipped recipe: each `grid_*` factor row against `grid_base` of its ε and teacher,
    with the spread of the base over its seeds (`grid_base_seed*`) — a factor moving less than that is noise."""
    by = {(r["eps"], r.get("teacher") or "mnist_cnn", r["name"]): r for r in rows.values()
          if r["name"].startswith("grid_")}
    out = []
    for eps, teacher in sorted({(e, t) for e, t, n in by if n == "grid_base"}):
        base = by[(eps, teacher, "grid_base")]
        groups: dict[str, list[dict]] = {}  # a row and its `_seedN` replicates
        for (e, t, n), r in by.items():
            if (e, t) == (eps, teacher):
                groups.setdefault(n.split("_seed")[0], []).append(r)
        seeds = groups["grid_base"]
        spread = {m: (min(r[m] for r in seeds), max(r[m] for r in seeds)) for m in ("clean_acc", "pgd_acc")}
        aa = [r["autoattack_acc"] for r in seeds if r["autoattack_acc"] is not None]
        out += [f"## One factor at a time on the shipped recipe — ε = {eps:g}, teacher {teacher}", "",
                f"`grid_base` is `shield --eps {eps:g}` at the demo budget (AutoAttack on 100 points). Over "
                f"{len(seeds)} seed(s) of the base: clean {100 * spread['clean_acc'][0]:.1f}-"
                f"{100 * spread['clean_acc'][1]:.1f}, PGD-20 {100 * spread['pgd_acc'][0]:.1f}-"
                f"{100 * spread['pgd_acc'][1]:.1f}"
                + (f", AutoAttack {100 * min(aa):.0f}-{100 * max(aa):.0f}" if aa else "") + " %.", "",
                "| row | clean | PGD-20 | AutoAttack | Δ clean | Δ PGD-20 | Δ AA |", "|---|---|---|---|---|---|---|"]
        for (e, t, n), r in sorted(by.items(), key=lambda kv: kv[0][2] != "grid_base"):
            if (e, t) != (eps, teacher):
                continue
            d_aa = ("—" if r["autoattack_acc"] is None or base["autoattack_acc"] is None
                    else f"{100 * (r['autoattack_acc'] - base['autoattack_acc']):+.0f}")
            out.append(f"| {n} | {_pct(r['clean'])} | {_pct(r['pgd'])} | {_pct(r['autoattack'])} | "
                       f"{100 * (r['clean_acc'] - base['clean_acc']):+.1f} | "
                       f"{100 * (r['pgd_acc'] - base['pgd_acc']):+.1f} | {d_aa} |")
        out.append("")
        multi = {g: rs for g, rs in groups.items() if len(rs) > 1}
        if multi:
            out += ["Rows run on several seeds (synthesis and training seed 0, 1, 2): the mean and the range.", "",
                    "| rows | seeds | clean | PGD-20 | AutoAttack |", "|---|---|---|---|---|"]
            for g, rs in multi.items():
                cells = []
                for m in ("clean_acc", "pgd_acc", "autoattack_acc"):
                    v = [100 * r[m] for r in rs if r[m] is not None]
                    cells.append(f"{sum(v) / len(v):.1f} ({min(v):.0f}-{max(v):.0f})" if v else "—")
                out.append(f"| {g}* | {len(rs)} | " + " | ".join(cells) + " |")
            out.append("")
    return out


# (label, row measured, row compared with): what one factor group moves, on the same teacher and ε
CONTRASTS = (
    ("synthetic set vs real digits (same training)", "base", "real_data"),
    ("new synthesis (clamp + random labels), old training", "old_training", "old_recipe"),
    ("new training (T = 1, separate BN, teacher-target PGD, uniform start, no warm-up/clip), new synthesis",
     "base", "old_training"),
    ("all of issue 16's reference recipe vs shieldkit's before", "base", "old_recipe"),
)


def contrasts(rows: dict) -> list[str]:
    """Differences (percentage points, clean / PGD-20) between rows that exist for the same teacher and ε."""
    by = {(r["eps"], r.get("teacher") or "mnist_cnn", r["name"]): r for r in rows.values()}
    out = ["## Contrasts (percentage points, clean / PGD-20)", "", "| ε | teacher | contrast | Δ clean | Δ PGD-20 |",
           "|---|---|---|---|---|"]
    for eps, teacher in sorted({(e, t) for e, t, _ in by}):
        for label, a, b in CONTRASTS:
            ra, rb = by.get((eps, teacher, a)), by.get((eps, teacher, b))
            if ra and rb:
                out.append(f"| {eps:g} | {teacher} | {label} (`{a}` − `{b}`) | "
                           f"{100 * (ra['clean_acc'] - rb['clean_acc']):+.1f} | "
                           f"{100 * (ra['pgd_acc'] - rb['pgd_acc']):+.1f} |")
    return [*out, ""]


def save(rows: dict) -> None:
    atomic_write_json(RESULTS / "recipe.json", {"rows": rows, "provenance": provenance()})
    atomic_write_text(RESULTS / "recipe.md", render(rows))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default="base,old_recipe", help="comma-separated row names, or 'all'")
    p.add_argument("--eps", default="0.2", help="comma-separated ε values")
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--aa-n", type=int, default=200)
    p.add_argument("--device", default="cpu")
    p.add_argument("--work", default="runs/recipe")
    p.add_argument("--arch", default="mnist_cnn", help="teacher architecture (rows of another arch get its name)")
    p.add_argument("--teacher-source", default=None,
                   help="a user's model file.py:Class (trained by the file's train(), then imported); rows get "
                        "--label's name instead of --arch's")
    p.add_argument("--label", default=None, help="the teacher's name in row keys (default: --arch, or the class)")
    p.add_argument("--redo", action="store_true", help="recompute rows already in recipe.json")
    p.add_argument("--merge-only", action="store_true")
    a = p.parse_args(argv)
    path = RESULTS / "recipe.json"
    rows = json.loads(path.read_text())["rows"] if path.exists() else {}
    if a.merge_only:
        save(rows)
        return 0
    names = list(ROWS) if a.rows == "all" else a.rows.split(",")
    unknown = [n for n in names if n not in ROWS and n not in DEMO_ROWS]
    if unknown:
        print(f"unknown rows {unknown}; choose from {list(ROWS) + list(DEMO_ROWS)}", file=sys.stderr)
        return 2
    if a.teacher_source:
        a.label = a.label or a.teacher_source.rpartition(":")[2]
        teacher = user_teacher(a.teacher_source, a.label, a.device)
    else:
        a.label = a.label or a.arch
        teacher = ensure_teacher(REPO / f"runs/teachers/mnist5k-{a.arch}", arch=a.arch, device=a.device,
                                 progress=False)
    suffix = "" if a.label == "mnist_cnn" else f"@{a.label}"
    test = load_dataset("mnist5k", "test")
    for eps in (float(e) for e in a.eps.split(",")):
        for name in names:
            key = f"eps{eps:g}_{name}{suffix}"
            if key in rows and not a.redo:
                continue
            log(f"{key} …")
            runner = run_demo_row if name in DEMO_ROWS else run_row
            rows[key] = {**runner(name, eps, teacher, test, a), "teacher": a.label}
            r = rows[key]
            log(f"{key}: clean {r['clean_acc']:.3f} pgd {r['pgd_acc']:.3f} aa {r['autoattack_acc']} "
                f"({r['seconds']})")
            if path.exists():  # merge with rows another process may have written meanwhile
                rows = {**json.loads(path.read_text())["rows"], key: r}
            save(rows)
    return 0


if __name__ == "__main__":
    from shieldkit.utils.allocator import tune_allocator

    tune_allocator()  # the process policy of every shieldkit command (recorded in provenance)
    raise SystemExit(main())
