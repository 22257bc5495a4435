"""The lecture's classic defences side by side on MNIST-5k: adversarial training family, early defences vs
their adaptive breaks, randomised-smoothing certificates.

Stages (each writes ``runs/classic/parts/<stage>-<name>.json`` atomically, so an interrupted run resumes;
trained models are cached in ``runs/classic/models``); ``--stage report`` merges the parts into
``benchmarks/results/classic.json`` and ``.md``:

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/classic.py --stage all

Protocol (everything single-threaded on CPU, seed 0):
* teacher: ``mnist_cnn`` trained ``TEACHER_EPOCHS`` epochs on the MNIST-5k train split (4,000 real digits);
* adversarial training: the teacher fine-tuned with each objective (real labels) for ``AT_EPOCHS`` epochs
  on a fixed ``AT_TRAIN_N``-image subset of the train split (CPU budget), ℓ∞ ε = 0.2, inner
  PGD-``AT_STEPS`` with α = 2.5ε/steps, batch 50, SGD-Nesterov lr 0.02 cosine;
* evaluation on a fixed class-stratified subset of the MNIST-5k *test* split (``subset(n, seed=0)``):
  clean and PGD-20 (α = 2.5ε/20, best iterate) on n = ``N_EVAL``, AutoAttack (pyautoattack, version
  "standard") on the first ``N_AA`` of them;
* breaks: naive vs adaptive attack per early defence on n = ``N_BREAK`` test points (budgets in
  :class:`shieldkit.evaluation.breaks.BreakContext`), with the audit's verdicts;
* certification: Cohen et al. CERTIFY with n0 = ``CERT_N0``, n = ``CERT_N``, α = 0.001 on ``N_CERT`` test
  points for σ ∈ {0.25, 0.5} (base classifiers: the teacher fine-tuned ``GAUSS_EPOCHS`` epochs on the
  train split with Gaussian augmentation at that σ). Cohen et al. use n = 100,000; n = 10,000 caps the largest
  certifiable radius at σΦ⁻¹(α^{1/n}) ≈ 3.2σ (0.80 at σ = 0.25, 1.60 at σ = 0.5) — the table reports it.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

from shieldkit.data import load_dataset
from shieldkit.defenses.classic import (
    FeatureSqueezing,
    MixupInference,
    ThermometerEncoded,
    bit_depth_defense,
    jpeg_defense,
    swap_relu_for_kwta,
    tvm_defense,
)
from shieldkit.defenses.mmc import attach_mmc_head
from shieldkit.defenses.smoothing import Smooth, certified_accuracy, certify_dataset, max_certifiable_radius
from shieldkit.evaluation import breaks as B
from shieldkit.evaluation.basic import evaluate_basic
from shieldkit.models import create_model, load_model, save_model
from shieldkit.training.defense_training import train_defensive_distillation
from shieldkit.training.robust import RobustTrainConfig, init_student, train_robust
from shieldkit.training.standard import StandardTrainConfig, accuracy, train_classifier
from shieldkit.utils.io import atomic_write_json, atomic_write_text, load_tensors
from shieldkit.utils.provenance import provenance

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "runs" / "classic"
PARTS, MODELS = RUN / "parts", RUN / "models"
OUT_JSON = ROOT / "benchmarks" / "results" / "classic.json"
OUT_MD = ROOT / "benchmarks" / "results" / "classic.md"

EPS = 0.2
SEED = 0
TEACHER_EPOCHS = 6
AT_EPOCHS, AT_STEPS, AT_LR, AT_BATCH, AT_TRAIN_N = 3, 5, 0.02, 50, 4000
N_EVAL, N_AA, N_BREAK = 200, 100, 100
N_CERT, CERT_N0, CERT_N, CERT_ALPHA = 100, 100, 10_000, 0.001
GAUSS_EPOCHS = 3
SIGMAS, RADII = (0.25, 0.5), (0.25, 0.5, 1.0)
DISTILL_T = 100.0
BREAKS = ("distillation", "igr", "mmc", "feature_squeezing", "feature_squeezing_l2", "thermometer", "jpeg",
          "bit_depth", "tvm", "kwta", "mixup_inference")

# objective name -> (kwargs, PGD random start). TRADES keeps its reference start x + 0.001·N(0, 1).
AT_METHODS: dict[str, tuple[dict, str]] = {
    "pgd_at": ({}, "uniform"), "trades": ({"beta": 6.0}, "normal"), "mart": ({"beta": 6.0}, "uniform"),
    "fgsm_at": ({}, "uniform"), "alp": ({"lam": 0.5}, "uniform"), "clp": ({"lam": 0.5}, "uniform"),
    "vat": ({"alpha": 1.0, "eps_l2": 2.0}, "uniform"), "dynamic_at": ({}, "uniform"),
}


def log(*a: object) -> None:
    print(time.strftime("%H:%M:%S"), *a, flush=True)


def part(name: str) -> Path:
    return PARTS / f"{name}.json"


def data() -> tuple:
    return load_dataset("mnist5k", "train"), load_dataset("mnist5k", "test")


def cached(name: str, build, template=None) -> torch.nn.Module:  # noqa: ANN001
    """Train once, then reload. ``template`` builds the module to load into when the registry cannot
    rebuild it (an MMC head, k-WTA activations)."""
    path = MODELS / f"{name}.safetensors"
    if path.exists():
        if template is None:
            return load_model(path).eval()
        model = template()
        model.load_state_dict(load_tensors(path), strict=True)
        return model.eval()
    t0 = time.perf_counter()
    model = build()
    save_model(model.eval(), path)
    log(f"trained {name} in {time.perf_counter() - t0:.0f}s")
    return model


def new_model(in_channels: int = 1) -> torch.nn.Module:
    return create_model("mnist_cnn", in_channels=in_channels, dataset="mnist5k")


def teacher() -> torch.nn.Module:
    train, _ = data()

    def build() -> torch.nn.Module:
        m = new_model()
        train_classifier(m, train, StandardTrainConfig(epochs=TEACHER_EPOCHS, seed=SEED), progress=False)
        return m
    return cached("teacher", build)


def finetune(name: str, objective: str, kwargs: dict, start: str = "uniform", epochs: int = AT_EPOCHS,
             base: torch.nn.Module | None = None, train_n: int | None = AT_TRAIN_N) -> torch.nn.Module:
    train, _ = data()

    def build() -> torch.nn.Module:
        student = init_student(base if base is not None else teacher())
        kw = dict(kwargs)
        cfg = RobustTrainConfig(objective=objective, objective_kwargs=kw, eps=EPS, attack_steps=AT_STEPS,
                                attack_alpha=2.5 * EPS / AT_STEPS, attack_start=start, epochs=epochs,
                                batch_size=AT_BATCH, lr=AT_LR, seed=SEED)
        sub = train.subset(train_n, seed=SEED) if train_n else train
        if objective == "dynamic_at":
            kw["total_updates"] = cfg.updates_per_epoch(len(sub)) * epochs
        train_robust(student, sub.x, cfg, y=sub.y, progress=False)
        return student
    return cached(name, build)


# ----------------------------------------------------------------------------------------------- stages
def stage_at(methods: list[str], aa_attacks: tuple[str, ...] | None = None) -> None:
    _, test = data()
    for name in methods:
        out = part(f"at-{name}")
        if out.exists():
            continue
        if name == "standard":
            model = teacher()
            meta = {"objective": "none (standard training)"}
        else:
            kwargs, start = AT_METHODS[name]
            t0 = time.perf_counter()
            model = finetune(f"at-{name}", name, kwargs, start)
            meta = {"objective": name, "kwargs": kwargs, "attack_start": start,
                    "train_seconds": round(time.perf_counter() - t0, 1)}
        t0 = time.perf_counter()
        res = evaluate_basic(model, test, eps=EPS, n=N_EVAL, seed=SEED, pgd_steps=20, autoattack=True, aa_n=N_AA,
                             aa_attacks=aa_attacks, batch_size=200)
        res.pop("per_point", None)
        res.pop("provenance", None)
        secs = round(time.perf_counter() - t0, 1)
        atomic_write_json(out, {"method": name, **meta, **res, "eval_seconds": secs})
        log(f"AT {name}: clean {res['clean_acc']:.3f} PGD {res['pgd_acc']:.3f} "
            f"AA {res['autoattack_acc']:.3f}")


def _break_models() -> dict:
    train, _ = data()
    t = teacher()
    distilled = cached("distilled-warm", lambda: train_defensive_distillation(
        new_model, train.subset(2000, seed=SEED), temperature=DISTILL_T, epochs=1, seed=SEED, init=t)[0])
    igr = finetune("igr", "igr", {"lam": 1.0}, epochs=2, train_n=None)

    def build_mmc() -> torch.nn.Module:
        m = attach_mmc_head(new_model())
        cfg = RobustTrainConfig(objective="mmc", epochs=10, batch_size=128, lr=0.05, seed=SEED)
        train_robust(m, train.x, cfg, y=train.y, progress=False)
        return m
    mmc = cached("mmc", build_mmc, template=lambda: attach_mmc_head(new_model()))

    def build_thermo() -> torch.nn.Module:
        m = new_model(in_channels=16)
        train_classifier(ThermometerEncoded(m, 16), train, StandardTrainConfig(epochs=2, seed=SEED),
                         progress=False)
        return m
    thermo = ThermometerEncoded(cached("thermometer16", build_thermo), 16).eval()

    def kwta_template() -> torch.nn.Module:
        m = copy.deepcopy(t)
        swap_relu_for_kwta(m, 0.2)
        return m

    def build_kwta() -> torch.nn.Module:
        m = kwta_template()
        train_classifier(m, train.subset(2000, seed=SEED), StandardTrainConfig(epochs=1, lr=0.01, seed=SEED),
                         progress=False)
        return m
    kwta = cached("kwta", build_kwta, template=kwta_template)
    return {"teacher": t, "distilled": distilled, "igr": igr, "mmc": mmc, "thermo": thermo,
            "kwta": kwta.eval()}


def stage_breaks(names: list[str]) -> None:
    train, test = data()
    sub = test.subset(N_BREAK, seed=SEED)
    x, y = sub.x, sub.y
    ctx = B.BreakContext(eps=EPS, seed=SEED, batch_size=N_BREAK, naive_steps=20, adaptive_steps=30,
                         eot_samples=4)
    m = _break_models()
    t = m["teacher"]
    fs_cache: list[FeatureSqueezing] = []  # one calibrated detector for the ℓ∞ and the ℓ2 row

    def fs() -> FeatureSqueezing:
        if not fs_cache:
            fs_cache.append(_calibrated_fs(t, train))
        return fs_cache[0]

    rows = {
        "distillation": lambda: B.break_distillation(m["distilled"], DISTILL_T, x, y, ctx),
        "igr": lambda: B.break_igr(m["igr"], x, y, ctx),
        "mmc": lambda: B.break_mmc(m["mmc"], x, y, ctx),
        "feature_squeezing": lambda: _fs_row(fs(), x, y, ctx),
        # 1-bit squeezing binarises at 0.5, so an ℓ∞ budget < 0.5 cannot move background/stroke pixels across
        # the threshold — on MNIST it is ℓ∞-robust by construction. He et al. (2017) broke it with ℓ2 attacks,
        # which concentrate the budget on a few pixels: ℓ2 ε = 2 (the usual MNIST ℓ2 budget).
        "feature_squeezing_l2": lambda: _fs_row(fs(), x, y, dataclasses.replace(ctx, norm="l2", eps=2.0)),
        "thermometer": lambda: B.break_thermometer(m["thermo"], x, y, ctx),
        "jpeg": lambda: B.break_input_transform(jpeg_defense(t, 75), x, y, ctx, "jpeg"),
        "bit_depth": lambda: B.break_input_transform(bit_depth_defense(t, 3), x, y, ctx, "bit_depth"),
        "tvm": lambda: B.break_input_transform(tvm_defense(t, 0.5, 0.03, 20, seed=SEED), x, y, ctx, "tvm"),
        "kwta": lambda: B.break_kwta(m["kwta"], x, y, ctx),
        "mixup_inference": lambda: B.break_mixup_inference(
            MixupInference(t, train.x, train.y, lam=0.6, samples=10, mode="ol", seed=SEED), x, y, ctx,
            attack_samples=4),
    }
    settings = {"jpeg": "quality 75", "bit_depth": "3 bits", "tvm": "keep 0.5, λ_TV 0.03, 20 Adam steps",
                "feature_squeezing": "1-bit + 2×2 median, threshold at 5 % clean FPR (train split)",
                "feature_squeezing_l2": "as feature_squeezing, attacked in ℓ2 with ε = 2 (He et al. 2017's threat)",
                "thermometer": "16 levels, mnist_cnn on 16 channels, 2 epochs",
                "distillation": f"T = {DISTILL_T:g}, warm start (teacher, head × T), 1 epoch each on 2,000 images",
                "igr": "λ = 1, teacher fine-tuned 2 epochs", "mmc": "C_MM = 10, 10 epochs from scratch",
                "kwta": "γ = 0.2, ReLUs of the teacher swapped, fine-tuned 1 epoch on 2,000 images",
                "mixup_inference": "MI-OL, λ = 0.6, N = 10 draws from the train split (standard-trained f)"}
    for name in names:
        out = part(f"break-{name}")
        if out.exists():
            continue
        t0 = time.perf_counter()
        row = rows[name]()
        row["defense"], row["setting"] = name, settings[name]
        row["seconds"] = round(time.perf_counter() - t0, 1)
        atomic_write_json(out, row)
        log(f"break {name}: clean {row['clean_acc']:.3f} naive {row['naive_acc']:.3f} "
            f"adaptive {row['adaptive_acc']:.3f} {row['audit_verdicts']}")


def _calibrated_fs(t: torch.nn.Module, train) -> FeatureSqueezing:  # noqa: ANN001
    fs = FeatureSqueezing(t, bits=1, median_size=2)
    fs.calibrate(train.subset(1000, seed=SEED).x, fpr=0.05)
    return fs


def _fs_row(fs: FeatureSqueezing, x: torch.Tensor, y: torch.Tensor, ctx: B.BreakContext) -> dict:
    row = B.break_feature_squeezing(fs, x, y, ctx)
    row["threshold"] = fs.threshold
    return row


def stage_certify(sigmas: tuple[float, ...] = SIGMAS) -> None:
    _, test = data()
    sub = test.subset(N_CERT, seed=SEED)
    for sigma in sigmas:
        out = part(f"certify-{sigma}")
        if out.exists():
            continue
        base = finetune(f"gauss-{sigma}", "gaussian_aug", {"sigma": sigma}, epochs=GAUSS_EPOCHS, train_n=None)
        t0 = time.perf_counter()
        recs = certify_dataset(Smooth(base, 10, sigma), sub.x, sub.y, n0=CERT_N0, n=CERT_N, alpha=CERT_ALPHA,
                               seed=SEED)
        acc = certified_accuracy(recs, (0.0, *RADII))
        atomic_write_json(out, {
            "sigma": sigma, "n_points": N_CERT, "n0": CERT_N0, "n": CERT_N, "alpha": CERT_ALPHA,
            "certified_accuracy": {str(k): v for k, v in acc.items()},
            "abstain_rate": sum(r["prediction"] == -1 for r in recs) / len(recs),
            "max_certifiable_radius": max_certifiable_radius(sigma, CERT_N, CERT_ALPHA),
            "base_clean_acc": accuracy(base, sub), "seconds": round(time.perf_counter() - t0, 1),
            "records": recs})
        log(f"certify σ={sigma}: {acc}")


# ----------------------------------------------------------------------------------------------- report
def _load(prefix: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(PARTS.glob(f"{prefix}-*.json"))]


def _adaptive_accs(row: dict) -> dict[str, float]:
    """Accuracy per naive/adaptive attack of a break row: run records (``EvaluationResult`` schema), or the
    name → summary dict of rows written before it (classic.json from earlier runs)."""
    if isinstance(row["attacks"], dict):
        return {k: a["acc"] for k, a in row["attacks"].items()}
    return {a["name"]: a["acc"] for a in row["attacks"] if a["family"] != "clean"}


def stage_report() -> None:
    at, brk, cert = _load("at"), _load("break"), _load("certify")
    order = ["standard", *AT_METHODS]
    at.sort(key=lambda r: order.index(r["method"]) if r["method"] in order else 99)
    res = {"dataset": "mnist5k", "eps": EPS, "norm": "linf", "seed": SEED,
           "protocol": {"teacher_epochs": TEACHER_EPOCHS, "at_epochs": AT_EPOCHS, "at_steps": AT_STEPS,
                        "at_train_n": AT_TRAIN_N,
                        "at_lr": AT_LR, "at_batch": AT_BATCH, "n_eval": N_EVAL, "n_aa": N_AA,
                        "n_break": N_BREAK,
                        "n_cert": N_CERT, "cert_n0": CERT_N0, "cert_n": CERT_N, "cert_alpha": CERT_ALPHA},
           "adversarial_training": at, "breaks": brk,
           "certification": [{k: v for k, v in c.items() if k != "records"} for c in cert],
           "provenance": provenance()}
    atomic_write_json(OUT_JSON, res)
    L = ["# Classic defences on MNIST-5k (ℓ∞ ε = 0.2)", "",
         f"Generated by `benchmarks/classic.py` (seed {SEED}, single-threaded CPU). Test points: fixed "
         "class-stratified subset of the MNIST-5k test split.", "",
         f"## Adversarial training (teacher fine-tuned {AT_EPOCHS} epochs on {AT_TRAIN_N} train images, "
         f"inner PGD-{AT_STEPS}; "
         f"clean/PGD-20 on n = {N_EVAL}, AutoAttack-standard on n = {N_AA})", "",
         "| method | clean | PGD-20 | AutoAttack | 95% CI (AA) | AA attacks | train s (wall, shared CPU) |",
         "|---|---|---|---|---|---|---|"]
    for r in at:
        ci = r.get("autoattack", {}).get("ci", [float("nan")] * 2)
        aa_name = r.get("autoattack", {}).get("attack", "")
        aa = r.get("autoattack_acc", float("nan"))
        L.append(f"| {r['method']} | {r['clean_acc']:.1%} | {r['pgd_acc']:.1%} | {aa:.1%}"
                 f" | {ci[0]:.1%}–{ci[1]:.1%} | {aa_name} | {r.get('train_seconds', '')} |")
    L += ["", f"## Early defences: naive attack vs adaptive break (n = {N_BREAK}; broken ⇔ adaptive ≤ 5 %)",
          "",
          "| defence | setting | clean | naive attack | naive acc | adaptive acc (worst case) | broken? | "
          "audit: adaptive_vs_standard / input_gradients / randomness |", "|---|---|---|---|---|---|---|---|"]
    for r in brk:
        v = r["audit_verdicts"]
        L.append(f"| {r['defense']} | {r.get('setting', '')} | {r['clean_acc']:.1%} | {r['naive_attack']} | "
                 f"{r['naive_acc']:.1%} | {r['adaptive_acc']:.1%} | "
                 f"{'yes' if r['break_succeeds'] else 'no'} | "
                 f"{v.get('adaptive_vs_standard')} / {v.get('input_gradients')} / {v.get('randomness')} |")
    L += ["", "Adaptive attacks per row:", ""]
    for r in brk:
        accs = "; ".join(f"{k} {acc:.1%}" for k, acc in _adaptive_accs(r).items())
        L.append(f"* **{r['defense']}**: {accs}")
    L += ["", f"## Randomised smoothing (Cohen et al. 2019): certified ℓ2 accuracy, n = {N_CERT} points, "
          f"n0 = {CERT_N0}, n = {CERT_N}, α = {CERT_ALPHA}", "",
          "| σ | r = 0 | r = 0.25 | r = 0.5 | r = 1.0 | abstain | max certifiable r |",
          "|---|---|---|---|---|---|---|"]
    for c in cert:
        a = c["certified_accuracy"]
        L.append(f"| {c['sigma']} | {a['0.0']:.1%} | {a['0.25']:.1%} | {a['0.5']:.1%} | {a['1.0']:.1%} | "
                 f"{c['abstain_rate']:.1%} | {c['max_certifiable_radius']:.2f} |")
    all_breaks = BREAKS
    missing = ([f"AT {m}" for m in order if m not in {r["method"] for r in at}]
               + [f"break {b}" for b in all_breaks if b not in {r["defense"] for r in brk}]
               + [f"certify σ={s}" for s in SIGMAS if s not in {c["sigma"] for c in cert}])
    res["not_run"] = missing
    atomic_write_json(OUT_JSON, res)
    if missing:
        L += ["", "## Not run", "", "Rerun `benchmarks/classic.py --stage all` (cached parts are skipped): "
              + ", ".join(missing) + "."]
    notes = Path(__file__).with_name("classic_notes.md")
    if notes.exists():
        L += ["", notes.read_text()]
    atomic_write_text(OUT_MD, "\n".join(L) + "\n")
    log(f"wrote {OUT_JSON} and {OUT_MD}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--stage", default="all", choices=["all", "at", "breaks", "certify", "report"])
    ap.add_argument("--only", default="", help="comma-separated subset of AT methods / break rows / σ (certify)")
    ap.add_argument("--aa-attacks", default="", help="run only these AutoAttack attacks, e.g. apgd-ce,apgd-t")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    only = [s for s in args.only.split(",") if s]
    if args.stage in ("all", "at"):
        aa = tuple(a for a in args.aa_attacks.split(",") if a) or None
        stage_at(only or ["standard", *AT_METHODS], aa)
    if args.stage in ("all", "breaks"):
        stage_breaks(only or list(BREAKS))
    if args.stage in ("all", "certify"):
        stage_certify(tuple(float(v) for v in only) if only and args.stage == "certify" else SIGMAS)
    stage_report()


if __name__ == "__main__":
    from shieldkit.utils.allocator import tune_allocator

    tune_allocator()  # the process policy of every shieldkit command (recorded in provenance)
    sys.exit(main())
