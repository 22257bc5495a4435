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
  raw seconds, ``n``, ``eps``, ``model``.

Model (``--aa-model`` to override): a PGD-AT ``mnist_cnn`` — a teacher trained 2 epochs, then PGD-AT
fine-tuning (``train_robust(objective="pgd_at")``, PGD-5, ℓ∞ ε = 0.1, 2 epochs) on the 4,000 real
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


def _compare(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, seed: int, device: str,
             torchattacks: bool, log: Callable[[str], None]) -> dict:
    from shieldkit.attacks.library import run_autoattack_detailed, run_torchattack

    row: dict = {"eps": eps, "n": len(y)}
    runs = {}
    for backend in ("fast", "pyautoattack"):
        res, t = timed(lambda b=backend: run_autoattack_detailed(model, x, y, norm="linf", eps=eps, seed=seed,
                                                                 device=device, backend=b))
        runs[backend] = res
        row[backend] = {**t, "robust": int(res.robust.sum()), "robust_acc": float(res.robust.float().mean()),
                        "per_attack_robust": res.per_attack,
                        "per_attack_wall_s": {k: round(v, 2) for k, v in res.attack_time.items()},
                        "how": res.backend}
        log(f"eps={eps} n={len(y)} {backend}: {t['wall_s']} s wall, {t['cpu_s']} s CPU, "
            f"{row[backend]['robust']} robust")
    fast, ref = runs["fast"], runs["pyautoattack"]
    row["robust_identical"] = bool(torch.equal(fast.robust, ref.robust))
    row["points_disagreeing"] = int((fast.robust != ref.robust).sum())
    row["x_adv_identical"] = bool(torch.equal(fast.x_adv, ref.x_adv))
    row["time_vs_pyautoattack"] = round(row["fast"]["wall_s"] / row["pyautoattack"]["wall_s"], 3)
    row["cpu_time_vs_pyautoattack"] = round(row["fast"]["cpu_s"] / row["pyautoattack"]["cpu_s"], 3)
    if torchattacks:
        (ta_robust, _), t = timed(lambda: run_torchattack("AutoAttack", model, x, y, seed=seed, device=device,
                                                          norm="Linf", eps=eps, version="standard", n_classes=10))
        row["torchattacks"] = {**t, "robust": int(ta_robust.sum()), "robust_acc": float(ta_robust.float().mean()),
                               "points_disagreeing_with_pyautoattack": int((ta_robust != ref.robust).sum()),
                               "time_vs_pyautoattack": round(t["wall_s"] / row["pyautoattack"]["wall_s"], 3)}
        log(f"eps={eps} n={len(y)} torchattacks: {t['wall_s']} s wall, {int(ta_robust.sum())} robust, "
            f"{row['torchattacks']['points_disagreeing_with_pyautoattack']} points disagree with pyautoattack")
    return row


def section_autoattack(args: argparse.Namespace) -> dict:
    import pyautoattack
    import torchattacks

    def log(msg: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} autoattack: {msg}", file=sys.stderr, flush=True)

    if args.aa_model:
        from shieldkit.models import load_model

        model, desc = load_model(args.aa_model, device=args.device), f"given model {args.aa_model}"
    else:
        model, desc = pgdat_model(args.device)
    model.eval()
    test = load_dataset("mnist5k", "test")
    result: dict = {
        "what": "AutoAttack-standard (linf; APGD-CE, APGD-T, FAB-T, Square), same MNIST-5k test points and seed: "
                "shieldkit fast backend vs pyautoattack vs torchattacks.AutoAttack",
        "model": desc, "dataset": "mnist5k test, class-stratified subset(n, seed)", "seed": args.seed,
        "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "versions": {"pyautoattack": pyautoattack.__version__, "torchattacks": torchattacks.__version__,
                     "torch": torch.__version__},
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    sub = test.subset(args.aa_n, seed=args.seed)
    main = _compare(model, sub.x, sub.y, args.aa_eps, args.seed, args.device, not args.aa_skip_torchattacks, log)
    result.update({
        "n": main["n"], "eps": main["eps"],
        "time_vs_pyautoattack": main["time_vs_pyautoattack"],
        "cpu_time_vs_pyautoattack": main["cpu_time_vs_pyautoattack"],
        "seconds": {k: main[k]["wall_s"] for k in ("fast", "pyautoattack", "torchattacks") if k in main},
        "cpu_seconds": {k: main[k]["cpu_s"] for k in ("fast", "pyautoattack", "torchattacks") if k in main},
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
        v = test.subset(int(n), seed=args.seed)
        row = _compare(model, v.x, v.y, eps, args.seed, args.device, False, log)
        result["verification_runs"].append(row)
        runs.append(row)
        result["per_point_identical"] = all(r["robust_identical"] for r in runs)
        result["x_adv_identical"] = all(r["x_adv_identical"] for r in runs)
        merge_write(args.out, "autoattack", {**result, "partial": True})
    result["identity_checked_on"] = [{"eps": r["eps"], "n": r["n"], "robust_identical": r["robust_identical"],
                                      "x_adv_identical": r["x_adv_identical"]} for r in runs]
    result["provenance"] = provenance()
    return result


SECTIONS: dict[str, Callable[[argparse.Namespace], dict]] = {"autoattack": section_autoattack}


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
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    for name in dict.fromkeys(args.section):
        merge_write(args.out, name, SECTIONS[name](args))


if __name__ == "__main__":
    main()
