"""Speed benchmarks (issue 17, item 4): every comparison side by side, in one run, on one machine.

Each section is a function ``section_<name>(args) -> dict`` whose result is merged into
``benchmarks/results/speed.json`` under the key ``<name>`` (other sections' keys in the file are kept,
so sections can be run separately, by different people, in any order). Sections so far:

* ``autoattack`` — AutoAttack-standard (APGD-CE, APGD-T, FAB-T, Square; ℓ∞) on the same MNIST-5k test
  points and seed through shieldkit's fast backend (``shieldkit.attacks.fast_autoattack``),
  pyautoattack as shipped, and torchattacks' ``AutoAttack``: wall and CPU seconds, and per-point
  agreement with pyautoattack (robust flags and adversarial examples). Extra ``--aa-verify`` runs
  (fast vs pyautoattack only) check per-point identity at other ε / n. Keys:
  ``autoattack.time_vs_pyautoattack`` (wall-time ratio fast / pyautoattack on the main run),
  ``autoattack.per_point_identical`` (robust flags equal on every run), ``autoattack.x_adv_identical``,
  raw seconds, ``n``, ``eps``, ``model``. Every run is a fresh process (``AA_RUNS``): ``fast``, ``pyautoattack``
  (as shipped, default process), ``pyautoattack_tuned`` (only the allocator setting of
  ``shieldkit.utils.allocator``: how much of the gain is that alone), ``torchattacks``.

* ``synthesis`` — samples/s of the plain DeepInversion loop, DSS and the fast (meta-generator) path on the
  demo's teacher at the demo's synthesis budget (1,600 samples), each set then training the demo's student
  (same training config and seed) and evaluated like the demo (clean / PGD-20 on 1,000 real test points,
  AutoAttack-standard on 200). Rows are cached in ``runs/speed/synthesis/rows.json`` so that two processes can
  each run some (``--syn-rows``); the section is rewritten from all rows each time. Keys: ``rows.<name>``,
  ``fast*_vs_plain`` (samples/s ratio, the generator warm-up included), ``aa_gap_fast*_vs_dss`` (AutoAttack
  points), ``dss_vs_plain``. Each row records the load average before/after its synthesis.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/speed.py --section synthesis --syn-rows fast_w100,plain &
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/speed.py --section synthesis --syn-rows dss,fast_w300  # ~1 h
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/speed.py --section synthesis --syn-rows fast

* ``demo`` — ``shieldkit demo`` timed as a subprocess in an empty folder (the teacher is trained): keys
  ``demo.seconds_after_install``, ``demo.stage_seconds``, ``demo.autoattack_acc`` (n = ``demo.aa_n``).

    .venv/bin/python benchmarks/speed.py --section demo      # on an idle machine: the README's demo figure

Model of the autoattack section (``--aa-model`` to override): a PGD-AT ``mnist_cnn`` — a teacher trained 2
epochs, then PGD-AT fine-tuning (``train_robust(objective="pgd_at")``, PGD-5, ℓ∞ ε = 0.1, 2 epochs) on the 4,000 real
training images — cached in ``runs/speed/``. Robust at ε = 0.1 on most test points, which is where
AutoAttack spends its time (a robust point gets all 1,900 gradient steps and 5,000 Square queries).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/speed.py --section autoattack            # ~1 h
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/speed.py --section autoattack --aa-n 24 --aa-verify ""

The machine may be shared: the load average before and after each timed run is recorded next to it,
and CPU seconds (``time.process_time``) alongside wall seconds.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from shieldkit.data import load_dataset
from shieldkit.utils.io import atomic_write_json, read_json
from shieldkit.utils.provenance import provenance

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "speed.json"
WORK = ROOT / "runs" / "speed"


# ------------------------------------------------------------------------------------------------ output
def merge_write(out: Path, key: str, value: dict) -> None:
    """Replace ``key`` in the JSON file ``out`` (under a lock; the other keys are kept)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        disk = read_json(out) if out.exists() else {}
        disk[key] = value
        disk.setdefault("benchmark", "speed (issue 17)")
        atomic_write_json(out, disk)


def timed(fn: Callable[[], object]) -> tuple[object, dict]:
    load0 = os.getloadavg()
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, {"wall_s": round(time.perf_counter() - t, 2), "cpu_s": round(time.process_time() - c, 2),
                 "load_avg_before": [round(v, 2) for v in load0],
                 "load_avg_after": [round(v, 2) for v in os.getloadavg()]}


# -------------------------------------------------------------------------------------------- autoattack
def pgdat_model(device: str) -> tuple[torch.nn.Module, str]:
    from shieldkit.models import create_model, load_model, save_model
    from shieldkit.training.robust import RobustTrainConfig, init_student, train_robust
    from shieldkit.training.standard import StandardTrainConfig, train_classifier

    cached = WORK / "pgdat_mnist_cnn.safetensors"
    desc = (f"PGD-AT mnist_cnn (teacher 2 epochs, then PGD-AT 2 epochs, PGD-5, linf eps=0.1, real MNIST-5k "
            f"train) - {cached.relative_to(ROOT)}")
    if cached.exists():
        return load_model(cached, device=device), desc
    train = load_dataset("mnist5k", "train")
    teacher = create_model("mnist_cnn", dataset="mnist5k")
    train_classifier(teacher, train, StandardTrainConfig(epochs=2, batch_size=32, seed=0), device)
    cfg = RobustTrainConfig(objective="pgd_at", eps=0.1, attack_steps=5, attack_start="uniform", epochs=2,
                            batch_size=100, lr=0.02, seed=0)
    student, _ = train_robust(init_student(teacher.eval()), train.x, cfg, y=train.y, out_dir=WORK / "pgdat_ckpt",
                              device=device)
    save_model(student, cached)
    return student, desc


#: Each AutoAttack run is its own fresh process (``--aa-worker``), so that what one backend does to the process
#: (the fast backend keeps freed memory mapped: ``shieldkit.utils.allocator``) cannot speed up or slow down
#: another; "pyautoattack" is the package as shipped in a default process, "pyautoattack_tuned" the same with
#: only the allocator setting (how much of the gain is the allocator alone).
AA_RUNS = ("fast", "pyautoattack", "pyautoattack_tuned", "torchattacks")


def _aa_worker(args: argparse.Namespace) -> None:
    """One AutoAttack run in this (fresh) process; robust flags, x_adv and timings saved to ``--aa-worker-out``."""
    from shieldkit.attacks.library import run_autoattack_detailed, run_torchattack
    from shieldkit.models import load_model
    from shieldkit.utils.allocator import allocator_state, tune_allocator

    kind = args.aa_worker
    model = load_model(args.aa_model or WORK / "pgdat_mnist_cnn.safetensors", device=args.device).eval()
    sub = load_dataset("mnist5k", "test").subset(args.aa_n, seed=args.seed)
    if kind in ("fast", "pyautoattack_tuned") and not tune_allocator()["applied"]:  # fast: as the CLI runs it
        raise SystemExit(f"{kind}: the allocator setting was not applied: {allocator_state()}")
    if kind == "torchattacks":
        (robust, _), t = timed(lambda: run_torchattack("AutoAttack", model, sub.x, sub.y, seed=args.seed,
                                                       device=args.device, norm="Linf", eps=args.aa_eps,
                                                       version="standard", n_classes=10))
        out = {**t, "robust_flags": robust, "robust": int(robust.sum()), "robust_acc": float(robust.float().mean())}
    else:
        backend = "fast" if kind == "fast" else "pyautoattack"
        res, t = timed(lambda: run_autoattack_detailed(model, sub.x, sub.y, norm="linf", eps=args.aa_eps,
                                                       seed=args.seed, device=args.device, backend=backend))
        out = {**t, "robust_flags": res.robust, "x_adv": res.x_adv, "robust": int(res.robust.sum()),
               "robust_acc": float(res.robust.float().mean()), "per_attack_robust": res.per_attack,
               "per_attack_wall_s": {k: round(v, 2) for k, v in res.attack_time.items()},
               "how": res.backend}
    out["allocator"] = allocator_state() or {"applied": False, "reason": "not called (default process)"}
    out["threads"] = torch.get_num_threads()
    torch.save(out, args.aa_worker_out)


def _run_worker(kind: str, eps: float, n: int, args: argparse.Namespace) -> dict:
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        dst = Path(tmp) / "run.pt"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--section", "autoattack", "--aa-worker", kind,
               "--aa-worker-out", str(dst), "--aa-eps", str(eps), "--aa-n", str(n), "--seed", str(args.seed),
               "--device", args.device]
        if args.aa_model:
            cmd += ["--aa-model", str(args.aa_model)]
        # no malloc option reaches any run from the caller: each run's allocator is what its kind says
        env = {k: v for k, v in os.environ.items()
               if k not in ("SHIELDKIT_MALLOC", "GLIBC_TUNABLES", "LD_PRELOAD") and not k.startswith("MALLOC_")}
        subprocess.run(cmd, check=True, env=env)
        return torch.load(dst, weights_only=False)


def _compare(eps: float, n: int, args: argparse.Namespace, kinds: tuple[str, ...],
             log: Callable[[str], None]) -> dict:
    row: dict = {"eps": eps, "n": n}
    raw = {}
    for kind in kinds:
        raw[kind] = _run_worker(kind, eps, n, args)
        row[kind] = {k: v for k, v in raw[kind].items() if k not in ("robust_flags", "x_adv")}
        log(f"eps={eps} n={n} {kind}: {row[kind]['wall_s']} s wall, {row[kind]['cpu_s']} s CPU, "
            f"{row[kind]['robust']} robust")
    fast, ref = raw["fast"], raw["pyautoattack"]
    row["robust_identical"] = bool(torch.equal(fast["robust_flags"], ref["robust_flags"]))
    row["points_disagreeing"] = int((fast["robust_flags"] != ref["robust_flags"]).sum())
    row["x_adv_identical"] = bool(torch.equal(fast["x_adv"], ref["x_adv"]))
    row["time_vs_pyautoattack"] = round(row["fast"]["wall_s"] / row["pyautoattack"]["wall_s"], 3)
    row["cpu_time_vs_pyautoattack"] = round(row["fast"]["cpu_s"] / row["pyautoattack"]["cpu_s"], 3)
    for kind in (k for k in kinds if k not in ("fast", "pyautoattack")):
        other = raw[kind]["robust_flags"]
        row[kind]["points_disagreeing_with_pyautoattack"] = int((other != ref["robust_flags"]).sum())
        row[kind]["time_vs_pyautoattack"] = round(row[kind]["wall_s"] / row["pyautoattack"]["wall_s"], 3)
        if "x_adv" in raw[kind]:
            row[kind]["x_adv_identical"] = bool(torch.equal(raw[kind]["x_adv"], ref["x_adv"]))
    return row


def section_autoattack(args: argparse.Namespace) -> dict:
    import pyautoattack
    import torchattacks

    def log(msg: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} autoattack: {msg}", file=sys.stderr, flush=True)

    if args.aa_worker:
        _aa_worker(args)
        sys.exit(0)
    if args.aa_model:
        desc = f"given model {args.aa_model}"
    else:
        _, desc = pgdat_model(args.device)
    result: dict = {
        "what": "AutoAttack-standard (linf; APGD-CE, APGD-T, FAB-T, Square), same MNIST-5k test points and seed: "
                "shieldkit fast backend vs pyautoattack vs torchattacks.AutoAttack",
        "model": desc, "dataset": "mnist5k test, class-stratified subset(n, seed)", "seed": args.seed,
        "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "versions": {"pyautoattack": pyautoattack.__version__, "torchattacks": torchattacks.__version__,
                     "torch": torch.__version__},
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "isolation": "every run in its own fresh process (--aa-worker); pyautoattack in a default process",
    }
    kinds = tuple(k for k in AA_RUNS if k != "torchattacks" or not args.aa_skip_torchattacks)
    main = _compare(args.aa_eps, args.aa_n, args, kinds, log)
    result.update({
        "n": main["n"], "eps": main["eps"],
        "time_vs_pyautoattack": main["time_vs_pyautoattack"],
        "cpu_time_vs_pyautoattack": main["cpu_time_vs_pyautoattack"],
        "seconds": {k: main[k]["wall_s"] for k in AA_RUNS if k in main},
        "cpu_seconds": {k: main[k]["cpu_s"] for k in AA_RUNS if k in main},
        "main_run": main,
    })
    runs = [main]
    result["per_point_identical"] = main["robust_identical"]
    result["x_adv_identical"] = main["x_adv_identical"]
    merge_write(args.out, "autoattack", {**result, "partial": True})
    result["verification_runs"] = []
    for spec in [s for s in args.aa_verify.split(",") if s.strip()]:
        eps, n = (float(v) for v in spec.split(":"))
        if (eps, int(n)) == (main["eps"], main["n"]):
            continue
        row = _compare(eps, int(n), args, ("fast", "pyautoattack"), log)
        result["verification_runs"].append(row)
        runs.append(row)
        result["per_point_identical"] = all(r["robust_identical"] for r in runs)
        result["x_adv_identical"] = all(r["x_adv_identical"] for r in runs)
        merge_write(args.out, "autoattack", {**result, "partial": True})
    result["identity_checked_on"] = [{"eps": r["eps"], "n": r["n"], "robust_identical": r["robust_identical"],
                                      "x_adv_identical": r["x_adv_identical"]} for r in runs]
    result["provenance"] = provenance()
    return result


# --------------------------------------------------------------------------------------------- synthesis
#: Synthesis rows (item 4): the demo's synthesis budget and seed with one change each. "plain" is the plain
#: DeepInversion loop (fixed coefficients), "dss" DataFreeShield's DSS, "fast*" the meta-generator path (the
#: demo's method since this benchmark; the other rows name their method explicitly).
SYN_ROWS: dict[str, dict] = {
    "plain": {"method": "dss", "coefficients": "fixed"},
    "dss": {"method": "dss"},
    "fast": {"method": "fast"},  # synthesis.fast's defaults: 20 warm-up batches
    "fast_w100": {"method": "fast", "fast": {"warmup_batches": 100}},
    "fast_w300": {"method": "fast", "fast": {"warmup_batches": 300}},
}

SYN_TRAIN_EPOCHS = 25  # the demo's epochs when the rows were measured (10 since), pinned so a rerun is comparable


def _load_avg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def synthesis_row(name: str, args: argparse.Namespace) -> dict:
    """Synthesise row ``name`` afresh (timed), train the demo's student on it, evaluate like the demo."""
    import dataclasses

    from shieldkit.evaluation.basic import evaluate_basic
    from shieldkit.pipeline import demo_config, ensure_teacher
    from shieldkit.synthesis import SynthesisConfig, load_synthetic, synthesize
    from shieldkit.training.robust import init_student, train_robust

    cfg = demo_config()
    over = dict(SYN_ROWS[name])
    scfg = SynthesisConfig(**{**cfg.synthesis.to_dict(), **over})
    teacher = ensure_teacher(ROOT / "runs/teachers/mnist5k-mnist_cnn", device=args.device, progress=False)
    folder = WORK / "synthesis" / name
    before = _load_avg()
    t0 = time.perf_counter()
    synthesize(teacher, folder, scfg, device=args.device, progress=False, overwrite=True)
    syn_s = time.perf_counter() - t0
    syn_load = [before, _load_avg()]
    syn = load_synthetic(folder)
    agree = float((syn.t_logits.argmax(1) == syn.y).float().mean())
    student = init_student(teacher)
    tcfg = dataclasses.replace(cfg.training, epochs=SYN_TRAIN_EPOCHS)
    t1 = time.perf_counter()
    train_robust(student, syn.x, tcfg, y=syn.y, t_logits=syn.t_logits, device=args.device, progress=False)
    train_s = time.perf_counter() - t1
    ev = evaluate_basic(student, load_dataset("mnist5k", "test"), eps=tcfg.eps, n=cfg.evaluation.n,
                        aa_n=cfg.evaluation.aa_n, autoattack=True, device=args.device, seed=args.seed)
    return {"name": name, "synthesis": scfg.to_dict(), "n_samples": len(syn), "seconds": round(syn_s, 2),
            "samples_per_s": len(syn) / syn_s, "load_avg": syn_load,
            "warmup_seconds": syn.manifest.get("fast", {}).get("warmup_seconds"),
            "teacher_label_agreement": agree, "training": tcfg.to_dict(), "train_seconds": round(train_s, 2),
            "clean_acc": ev["clean_acc"], "pgd_acc": ev["pgd_acc"], "autoattack_acc": ev["autoattack_acc"],
            "n": ev["n"], "aa_n": ev["aa_n"], "clean": ev["clean"], "pgd": ev["pgd"], "autoattack": ev["autoattack"]}


def section_synthesis(args: argparse.Namespace) -> dict:
    """Rows ``--syn-rows`` (cached per row in ``runs/speed/synthesis/rows.json``, so several processes can
    each run some rows); the ratios are computed from whatever rows exist."""
    rows_file = WORK / "synthesis" / "rows.json"
    for name in filter(None, args.syn_rows.split(",")):  # --syn-rows "" rewrites the section from the cache
        row = synthesis_row(name, args)
        merge_write(rows_file, name, row)
    rows = {k: v for k, v in read_json(rows_file).items() if k in SYN_ROWS}
    out: dict = {"what": "demo synthesis budget (1,600 samples; DSS/plain 150 iterations at batch 200; fast: "
                         "meta-generator, 5 steps per batch of 50 after its warm-up), mnist5k mnist_cnn teacher; each "
                         "set trains the demo's student (PGD-3 step eps/2, 25 epochs) and is evaluated like the demo "
                         "(clean/PGD-20 on 1,000 real test points, AutoAttack-standard on 200)",
                 "command": "OMP_NUM_THREADS=1 python benchmarks/speed.py --section synthesis --syn-rows NAMES "
                            "(rows " + ", ".join(rows) + "; two processes at a time, one thread each)",
                 "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "rows": rows}
    if "plain" in rows:
        for k in (k for k in rows if k.startswith("fast")):
            out[f"{k}_vs_plain"] = round(rows[k]["samples_per_s"] / rows["plain"]["samples_per_s"], 2)
        out["dss_vs_plain"] = round(rows.get("dss", {}).get("samples_per_s", float("nan"))
                                    / rows["plain"]["samples_per_s"], 2)
    if "dss" in rows:
        for k in (k for k in rows if k.startswith("fast")):
            out[f"aa_gap_{k}_vs_dss"] = round(100 * (rows[k]["autoattack_acc"] - rows["dss"]["autoattack_acc"]), 1)
    return out



# -------------------------------------------------------------------------------------------------- demo
def section_demo(args: argparse.Namespace) -> dict:
    """``shieldkit demo`` as ``make demo`` runs it after the install: a subprocess in an empty working folder
    (so the teacher is trained, not reused), default threads; stage times and figures from its results.json."""
    import json
    import shutil
    import subprocess

    work = WORK / "demo"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    exe = Path(sys.executable).with_name("shieldkit")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # as make demo: torch's default
    before = _load_avg()
    t0 = time.perf_counter()
    subprocess.run([str(exe), "demo", "--out", str(work / "runs/demo")], cwd=work, env=env, check=True)
    wall = time.perf_counter() - t0
    res = json.loads((work / "runs/demo/results.json").read_text())
    sh = res["shielded"]
    return {"what": "`shieldkit demo` (what `make demo` runs after the install) in an empty folder: teacher trained, "
                    "synthesis, training, evaluation of teacher and shielded model, report",
            "command": "python benchmarks/speed.py --section demo", "cpu_count": os.cpu_count(),
            "load_avg": [before, _load_avg()], "seconds_after_install": round(wall, 1),
            "stage_seconds": {k: round(v, 1) for k, v in res["seconds"].items()},
            "synthesis": res["synthesis"]["config"], "clean_acc": sh["clean_acc"], "pgd_acc": sh["pgd_acc"],
            "autoattack_acc": sh["autoattack_acc"], "n": sh["n"], "aa_n": sh["aa_n"],
            "teacher": {k: res["teacher"].get(k) for k in ("clean_acc", "pgd_acc", "autoattack_acc")}}


SECTIONS: dict[str, Callable[[argparse.Namespace], dict]] = {"autoattack": section_autoattack,
                                                               "synthesis": section_synthesis,
                                                               "demo": section_demo}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--section", action="append", choices=sorted(SECTIONS), required=True,
                    help="section(s) to run (repeat the flag for several)")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--aa-model", default=None, help="evaluate this model file instead of the PGD-AT mnist_cnn")
    ap.add_argument("--aa-n", type=int, default=200, help="points of the main run")
    ap.add_argument("--aa-eps", type=float, default=0.1, help="linf eps of the main run")
    ap.add_argument("--aa-verify", default="0.2:200",
                    help="extra fast-vs-pyautoattack identity runs, 'eps:n' comma-separated ('' for none)")
    ap.add_argument("--aa-skip-torchattacks", action="store_true")
    ap.add_argument("--aa-worker", choices=AA_RUNS, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--aa-worker-out", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--syn-rows", default=",".join(SYN_ROWS), help=f"synthesis rows, from {sorted(SYN_ROWS)}")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    for name in dict.fromkeys(args.section):
        merge_write(args.out, name, SECTIONS[name](args))


if __name__ == "__main__":
    main()
