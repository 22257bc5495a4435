"""Benchmark: wall time of `shieldkit evaluate --suite standard` on a robust(-ish) MNIST-5k model, and
AutoAttack-standard through pyautoattack (shieldkit's path) vs torchattacks' AutoAttack on the same
points.

Model: the lead's shielded demo model (``runs/demo/shielded.safetensors``) when it exists, otherwise
a PGD-AT model made here (mnist_cnn teacher trained 2 epochs, then PGD-AT fine-tuning with
``shieldkit.training.robust.train_robust(objective="pgd_at")`` on the 4,000 real training images,
ℓ∞ ε = --eps, default 0.1 as the demo) and cached in ``runs/eval_speed/``. Which one was used is recorded in the JSON.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/eval_speed.py --n 100

Writes ``benchmarks/results/eval_speed.json`` (atomically, after every stage) and the evaluation
itself to ``runs/eval_speed/standard/`` (evaluation.json + report.html).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from shieldkit.attacks.library import run_autoattack, run_torchattack
from shieldkit.data import load_dataset
from shieldkit.evaluation.suite import evaluate
from shieldkit.models import create_model, load_model, save_model
from shieldkit.training.standard import StandardTrainConfig, accuracy, train_classifier
from shieldkit.utils.io import atomic_write_json
from shieldkit.utils.provenance import provenance

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "eval_speed.json"
WORK = ROOT / "runs" / "eval_speed"


def get_model(eps: float, device: str, path: str | None = None) -> tuple[torch.nn.Module, str]:
    if path is not None:
        return load_model(path, device=device), f"given model {path}"
    demo = ROOT / "runs" / "demo" / "shielded.safetensors"
    if demo.exists():
        return load_model(demo, device=device), f"shielded demo model ({demo.relative_to(ROOT)})"
    cached = WORK / "pgdat_mnist_cnn.safetensors"
    desc = (
        f"PGD-AT mnist_cnn (teacher 2 epochs, then PGD-AT 2 epochs, PGD-5, ℓ∞ ε={eps}, real MNIST-5k "
        f"train) — {cached.relative_to(ROOT)}; the shielded demo model did not exist"
    )
    if cached.exists():
        return load_model(cached, device=device), desc
    from shieldkit.training.robust import RobustTrainConfig, init_student, train_robust

    train = load_dataset("mnist5k", "train")
    teacher = create_model("mnist_cnn", dataset="mnist5k")
    if not (WORK / "pgdat_ckpt" / "checkpoint.pt").exists():  # a resumed run restores the student anyway
        train_classifier(teacher, train, StandardTrainConfig(epochs=2, batch_size=32, seed=0), device)
    student = init_student(teacher.eval())
    cfg = RobustTrainConfig(
        objective="pgd_at",
        eps=eps,
        attack_steps=5,
        attack_start="uniform",
        epochs=2,
        batch_size=100,
        lr=0.02,
        seed=0,
    )
    student, _ = train_robust(student, train.x, cfg, y=train.y, out_dir=WORK / "pgdat_ckpt", device=device)
    save_model(student, cached)
    return student, desc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--eps", type=float, default=0.1)  # the demo threat model
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default=None, help="evaluate this model file instead (description recorded)")
    ap.add_argument("--model-note", default="", help="where the --model file comes from (recorded)")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    WORK.mkdir(parents=True, exist_ok=True)
    res: dict = {
        "benchmark": "eval_speed",
        "n": args.n,
        "eps": args.eps,
        "norm": "linf",
        "seed": args.seed,
        "dataset": "mnist5k (test split)",
        "load_average_start": os.getloadavg(),
        "provenance": provenance(),
    }
    t0 = time.perf_counter()
    model, desc = get_model(args.eps, args.device, args.model)
    if args.model_note:
        desc += f" — {args.model_note}"
    model.eval()
    test = load_dataset("mnist5k", "test")
    res["model"] = desc
    res["model_prep_s"] = round(time.perf_counter() - t0, 1)
    res["model_clean_acc_full_test"] = accuracy(model, test)
    atomic_write_json(OUT, res)

    # 1) the standard suite
    t0 = time.perf_counter()
    ev = evaluate(
        model,
        test,
        norm="linf",
        eps=args.eps,
        suite="standard",
        n=args.n,
        seed=args.seed,
        device=args.device,
        out=WORK / "standard",
        train_data=load_dataset("mnist5k", "train"),
        verbose=True,
    )
    res["standard_suite"] = {
        "wall_time_s": round(time.perf_counter() - t0, 1),
        "clean_acc": ev["clean_acc"],
        "autoattack_acc": ev["autoattack_acc"],
        "pgd_acc": ev["pgd_acc"],
        "robust_acc": ev["robust_acc"],
        "robust_acc_ci": ev["robust_acc_ci"],
        "trustworthy": ev["trustworthy"],
        "audit": {c["name"]: c["verdict"] for c in ev["audit"]},
        "per_attack": [
            {k: a[k] for k in ("name", "acc", "wall_time_s", "forwards", "backwards")} for a in ev["attacks"]
        ],
        "report": str((WORK / "standard" / "report.html").relative_to(ROOT)),
    }
    atomic_write_json(OUT, res)

    # 2) AutoAttack-standard: pyautoattack (shieldkit) vs torchattacks, same points, same seed
    sub = test.subset(args.n, seed=args.seed)
    t0 = time.perf_counter()
    r_pya, _ = run_autoattack(model, sub.x, sub.y, norm="linf", eps=args.eps, seed=args.seed, device=args.device)
    t_pya = time.perf_counter() - t0
    t0 = time.perf_counter()
    r_ta, _ = run_torchattack(
        "AutoAttack",
        model,
        sub.x,
        sub.y,
        seed=args.seed,
        device=args.device,
        norm="Linf",
        eps=args.eps,
        version="standard",
        n_classes=10,
    )
    t_ta = time.perf_counter() - t0
    res["autoattack_comparison"] = {
        "n": args.n,
        "pyautoattack": {
            "version": "0.2.0",
            "wall_time_s": round(t_pya, 1),
            "robust_acc": r_pya.float().mean().item(),
        },
        "torchattacks": {
            "version": "3.5.1",
            "wall_time_s": round(t_ta, 1),
            "robust_acc": r_ta.float().mean().item(),
        },
        "points_disagreeing": int((r_pya != r_ta).sum()),
    }
    res["load_average_end"] = os.getloadavg()
    res["threads"] = torch.get_num_threads()
    res["note"] = (
        f"{os.cpu_count()} CPU cores, {torch.get_num_threads()} torch thread(s); load averages at start/end are "
        "recorded because wall times on a shared machine measure the scheduler as much as the code."
    )
    atomic_write_json(OUT, res)
    print(res["standard_suite"]["wall_time_s"], res["autoattack_comparison"])


if __name__ == "__main__":
    from shieldkit.utils.allocator import tune_allocator

    tune_allocator()  # the process policy of every shieldkit command (recorded in provenance)
    main()
