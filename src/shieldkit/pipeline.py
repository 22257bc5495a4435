"""End-to-end jobs: ``shield`` (synthesize → train → evaluate on a given teacher) and the ``demo``.

These functions are the Python API behind ``shieldkit shield`` and ``make demo``; every stage is
resumable because each writes its outputs under the run directory and is skipped when complete.

Integrity (see :mod:`shieldkit.utils.fingerprint`): a shield run folder's ``fingerprints.json`` pins
``teacher`` (weights + card), ``synthesis`` / ``training`` / ``evaluation`` (the full configs),
``eval_data`` (name, split, root, size, content digest of the real test set) and ``version``; its
``synthetic/`` and ``train/`` sub-folders pin their own inputs. A teacher cache records, in its card
(``extra["fingerprints"]``), ``dataset`` (the name asked for), ``data`` (name, split, root, size, content
digest of the training set), ``arch``, ``epochs``, ``seed`` and ``version``. A re-run with other inputs
is refused unless ``overwrite=True``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from shieldkit.data import load_dataset
from shieldkit.evaluation.basic import evaluate_basic
from shieldkit.models import NormalizedClassifier, create_model, load_model, save_model
from shieldkit.synthesis import SynthesisConfig, load_synthetic, synthesize
from shieldkit.synthesis.losses import BNStatistics
from shieldkit.training.robust import RobustTrainConfig, init_student, train_robust
from shieldkit.training.standard import StandardTrainConfig, accuracy, train_classifier
from shieldkit.utils.fingerprint import (
    RunManifest,
    check_finite_teacher,
    fingerprint_dataset,
    fingerprint_model,
    fingerprint_synthetic,
    first_difference,
    mismatch_error,
    shieldkit_version,
)
from shieldkit.utils.io import atomic_write_json, read_json
from shieldkit.utils.provenance import provenance


@dataclass
class EvalConfig:
    n: int = 1000  # real test points for clean / PGD
    aa_n: int = 200  # of those, points attacked with AutoAttack (slow on CPU)
    pgd_steps: int = 20
    aa_version: str = "standard"
    seed: int = 0

    def __post_init__(self) -> None:
        from shieldkit.utils.validate import check_choice, check_nonnegative_int, check_positive_int

        self.n = check_positive_int(self.n, "evaluation.n")
        self.aa_n = check_nonnegative_int(self.aa_n, "evaluation.aa_n")
        self.pgd_steps = check_positive_int(self.pgd_steps, "evaluation.pgd_steps")
        self.aa_version = check_choice(self.aa_version, ("standard", "plus", "rand", "custom"), "evaluation.aa_version")


@dataclass
class ShieldConfig:
    synthesis: SynthesisConfig = field(default_factory=SynthesisConfig)
    training: RobustTrainConfig = field(default_factory=RobustTrainConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)


def ensure_teacher(path: str | Path, data: str = "mnist5k", arch: str = "mnist_cnn", epochs: int = 15, seed: int = 0,
                   device: str | torch.device = "cpu", progress: bool = True, data_root: str | None = None,
                   overwrite: bool = False) -> NormalizedClassifier:
    """Load the cached teacher at ``path`` if it was made from the same inputs, or train a standard
    (non-robust) one and cache it. A cache made from other inputs is refused unless ``overwrite``."""
    from shieldkit.utils.validate import check_dataset, check_nonnegative_int

    path = Path(path)
    check_dataset(data, data_root, flag="data")
    epochs = check_nonnegative_int(epochs, "epochs")
    train = load_dataset(data, "train", root=data_root)
    fps = {"dataset": data, "data": fingerprint_dataset(train, split="train", root=data_root), "arch": arch,
           "epochs": epochs, "seed": seed, "version": shieldkit_version()}
    weights, sidecar = path.with_name(path.name + ".safetensors"), path.with_name(path.name + ".json")
    if weights.exists() and sidecar.exists() and not overwrite:
        card = read_json(sidecar)
        old = (card.get("extra") or {}).get("fingerprints")
        if old is None:  # cached by an older shieldkit: compare what its card records
            extra = card.get("extra") or {}
            old = {**fps, "dataset": card.get("dataset"), "arch": card.get("arch"), "epochs": extra.get("epochs"),
                   "seed": extra.get("seed")}
        diff = first_difference(old, fps)
        if diff is not None:
            raise mismatch_error(path, *diff)
        return load_model(path, device=str(device))
    test = load_dataset(data, "test", root=data_root)
    c, h, _ = train.image_shape
    mean = train.x.mean(dim=(0, 2, 3)).tolist()
    std = train.x.std(dim=(0, 2, 3)).tolist()
    torch.manual_seed(seed)  # weight initialisation
    model = create_model(arch, num_classes=train.num_classes, in_channels=c, image_size=h, mean=mean, std=std,
                         dataset=data, classes=train.classes)
    t0 = time.perf_counter()
    train_classifier(model, train, StandardTrainConfig(epochs=epochs, seed=seed), device=device, progress=progress)
    check_finite_teacher(model, f"{path}: trained teacher")
    acc = accuracy(model, test, device=device)
    # the sidecar (written last by save_model) is the completion marker and carries the fingerprints
    save_model(model, path, test_acc=acc, train_seconds=time.perf_counter() - t0, epochs=epochs, seed=seed,
               fingerprints=fps)
    return model


def shield(teacher: NormalizedClassifier, run_dir: str | Path, cfg: ShieldConfig, *, test_data=None,
           device: str | torch.device = "cpu", progress: bool = True, evaluate_teacher: bool = True,
           overwrite: bool = False) -> dict:
    """DataFreeShield on ``teacher``: synthesize (DSS) → robust training (L_DFShield, GradRefine) →
    evaluate teacher and shielded model on real ``test_data`` (evaluation only — never training or
    checkpoint selection). Returns the results dict (also written to ``run_dir/results.json``)."""
    run = Path(run_dir)
    BNStatistics(teacher)  # refuse a BN-less or non-finite teacher before anything is written
    check_finite_teacher(teacher)
    t_fp = fingerprint_model(teacher)
    fps = {"teacher": t_fp, "synthesis": cfg.synthesis.to_dict(), "training": cfg.training.to_dict(),
           "evaluation": cfg.evaluation, "eval_data": None if test_data is None else fingerprint_dataset(test_data)}
    status = RunManifest.check_or_init(run, fps, overwrite)
    try:
        return _shield(teacher, run, cfg, t_fp, test_data, device, progress, evaluate_teacher)
    except BaseException:
        if status == "fresh":
            RunManifest.discard_if_unused(run)
        raise


def _shield(teacher: NormalizedClassifier, run: Path, cfg: ShieldConfig, t_fp: str, test_data, device,
            progress: bool, evaluate_teacher: bool) -> dict:  # noqa: ANN001
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    synthesize(teacher, run / "synthetic", cfg.synthesis, device=device, progress=progress)
    syn = load_synthetic(run / "synthetic")
    timings["synthesis"] = time.perf_counter() - t0

    shielded_path = run / "shielded"
    t0 = time.perf_counter()
    if shielded_path.with_suffix(".json").exists():  # the sidecar is written last: a complete model
        student = load_model(shielded_path, device=str(device))
    else:
        student = init_student(teacher)
        train_robust(student, syn.x, cfg.training, y=syn.y, t_logits=syn.t_logits, out_dir=run / "train",
                     device=device, progress=progress,
                     inputs={"teacher": t_fp, "synthetic": fingerprint_synthetic(syn)})
        save_model(student, shielded_path, method="DataFreeShield", training=cfg.training.to_dict(),
                   synthesis=cfg.synthesis.to_dict())
    timings["training"] = time.perf_counter() - t0

    results: dict = {"synthesis": {"n_samples": len(syn), **syn.throughput(), "config": cfg.synthesis.to_dict()},
                     "training": cfg.training.to_dict()}
    if test_data is not None:
        e = cfg.evaluation
        kw = dict(norm=cfg.training.norm, eps=cfg.training.eps, n=e.n, seed=e.seed, pgd_steps=e.pgd_steps,
                  aa_version=e.aa_version, aa_n=e.aa_n, device=device)
        t0 = time.perf_counter()
        if evaluate_teacher:
            results["teacher"] = evaluate_basic(teacher, test_data, **kw)
        results["shielded"] = evaluate_basic(student, test_data, **kw)
        timings["evaluation"] = time.perf_counter() - t0
    results["seconds"] = timings
    results["provenance"] = provenance()
    atomic_write_json(run / "results.json", results)
    return results


def demo_config(quick: bool = False) -> ShieldConfig:
    """Settings sized for 2 CPU cores (the paper's GPU-scale settings are in ``configs/paper/``).

    Demo threat model: ℓ∞, ε = 0.1 on MNIST-5k — argued in the README: at ε = 0.2 the synthetic set a
    66k-parameter teacher yields does not support robust training (measured: the student collapses
    to 26-37 % clean accuracy whatever the BN handling, lr or clipping; with λ1 = λ2 = 0.2 it keeps
    78 % clean but 0.3 % PGD-20), while at ε = 0.1 the same data gives a robust student.

    Sized to finish ``make demo`` (install included) in ≤ 15 min on 2 idle cores. Measured trade-offs on
    the same teacher (clean / PGD-20, n = 1,000): 1,600 samples × 100 synthesis iterations, PGD-10
    training → 75.9 / 37.3 (synthesis quality matters most); × 150 iterations, 20 epochs PGD-10 →
    82.3 / 45.0; × 150 iterations, 25 epochs PGD-7 (step ε/4) → 83.7 / 48.5 at the same cost — the
    setting chosen. Appendix A.3's PGD-10 is the default everywhere else.
    """
    if quick:
        return ShieldConfig(
            synthesis=SynthesisConfig(n_samples=400, batch_size=200, iterations=40, seed=0),
            training=RobustTrainConfig(eps=0.1, epochs=3, lr=0.01, batch_size=100, seed=0),
            evaluation=EvalConfig(n=200, aa_n=50),
        )
    return ShieldConfig(
        synthesis=SynthesisConfig(n_samples=1600, batch_size=200, iterations=150, seed=0),
        training=RobustTrainConfig(eps=0.1, epochs=25, lr=0.01, batch_size=200, seed=0, attack_steps=7),
        evaluation=EvalConfig(n=1000, aa_n=200),
    )


def run_demo(out: str | Path = "runs/demo", *, quick: bool = False, device: str | torch.device = "cpu",
             progress: bool = True, overwrite: bool = False) -> dict:
    """``make demo``: train/reuse the MNIST-5k teacher, run DataFreeShield, evaluate both on real test
    images, print the before/after table, write ``results.json`` and ``report.html``."""
    from shieldkit.reporting.demo_report import print_summary, write_report
    from shieldkit.reporting.figures import sample_grid

    out = Path(out)
    t0 = time.perf_counter()
    teacher = ensure_teacher(Path("runs/teachers/mnist5k-mnist_cnn"), data="mnist5k", arch="mnist_cnn",
                             epochs=15, device=device, progress=progress)
    t_teacher = time.perf_counter() - t0
    test = load_dataset("mnist5k", "test")
    cfg = demo_config(quick)
    results = shield(teacher, out, cfg, test_data=test, device=device, progress=progress, overwrite=overwrite)
    results["seconds"] = {"teacher": t_teacher, **results["seconds"]}
    syn = load_synthetic(out / "synthetic")
    grid = sample_grid(syn.x, syn.y, teacher.card.classes, out / "synthetic_grid.png")
    atomic_write_json(out / "results.json", results)
    write_report(results, out / "report.html", grid_png=grid,
                 title="shieldkit demo — DataFreeShield on the MNIST-5k teacher" + (" (quick)" if quick else ""))
    print_summary(results)
    return results
