"""DataFreeShield claims benchmark at CPU scale (issue 4).

Regenerate (from the repo root; each part is resumable — finished rows are read back, not recomputed):

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/dfs_claims.py --part main
    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/dfs_claims.py --part second
    .venv/bin/python benchmarks/dfs_claims.py --merge-only

Parts write ``benchmarks/results/dfs_claims.<part>.json``
row by row; every row also re-merges them into ``dfs_claims.json`` + the markdown table ``dfs_claims.md``,
so a partial run still yields a table.

What it runs (paper table → rows), every defence starting from the same teacher copy:

* Table 1 — methods × clean / PGD / AA: the undefended teacher, **Original** (PGD-AT on the real
  training images, hard labels), **Public** (AT on another real dataset with the teacher's soft labels,
  KL(S(x')‖T(x)) as Fig 1), the four adapted baselines (``synthesis.baselines``), and **DataFreeShield**
  (DSS + L_DFShield + GradRefine);
* Table 7 — training losses STD / TRADES / MART / ARD / RSLAD / L_DFShield on one DSS set (no GradRefine);
* Table 8 — ablation (TRADES+fixed, L_DFShield+fixed, +DSS, +GradRefine);
* Table 6 — diversification: fixed coefficients, + Mixup / Cutout / CutMix, DSS — accuracy and
  recall / coverage / NDB / JSD vs the real training images (teacher features);
* Appendix C — accuracy vs number of synthetic samples (seeded prefixes of the DSS set);
* figures — sample grids, PCA of features (Fig 8), loss surfaces with/without GradRefine (Fig 4).

Budget (CPU, shared cores): equal compute per row — every robust training sees the same number of
minibatch passes (``epochs × n_synth / batch``); GradRefine with ℬ minibatches per update therefore
makes ℬ× fewer updates. Threat model ℓ∞, ε = 0.2 (MNIST-scale).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch

from shieldkit.data import load_dataset
from shieldkit.evaluation.basic import evaluate_basic
from shieldkit.evaluation.diversity import diversity_metrics, extract_features
from shieldkit.models import create_model, load_model, save_model
from shieldkit.reporting.figures import loss_surface, plot_feature_pca, plot_loss_surfaces, sample_grid
from shieldkit.synthesis import SynthesisConfig, load_synthetic, synthesize
from shieldkit.synthesis.augment import augment_synthetic
from shieldkit.synthesis.baselines import BaselineConfig, run_baseline
from shieldkit.training.robust import RobustTrainConfig, init_student, train_robust
from shieldkit.training.standard import StandardTrainConfig, accuracy, train_classifier
from shieldkit.utils.io import atomic_write_json, atomic_write_text
from shieldkit.utils.provenance import provenance

REPO = Path(__file__).resolve().parents[1]

PARTS = {
    # part: (dataset, arch, public dataset for the "Public" row)
    "main": ("mnist5k", "mnist_cnn", "digits"),
    "second": ("digits", "mnist_cnn", "mnist5k"),
}


STAGES = ("table1", "ablation", "losses", "figures")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.a = args
        self.part = args.part
        self.dataset, self.arch, self.public = PARTS[args.part]
        self.work = Path(args.work) / args.part
        self.work.mkdir(parents=True, exist_ok=True)
        self.results_dir = Path(args.results)
        self.results_dir.mkdir(parents=True, exist_ok=True)
        self.tag = args.tag or args.part
        self.only = set(args.only.split(",")) if args.only else set()
        self.stages = set(args.stages.split(","))
        if bad := self.stages - set(STAGES):
            raise SystemExit(f"unknown stages {sorted(bad)}; choose from {STAGES}")
        self.path = self.results_dir / f"dfs_claims.{self.tag}.json"
        self.res = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.res.setdefault("rows", {})
        self.res["part"] = args.part
        self.res["settings"] = {
            "dataset": self.dataset,
            "arch": self.arch,
            "public": self.public,
            "eps": args.eps,
            "norm": "linf",
            "n_synth": args.n_synth,
            "synth_iterations": args.synth_iters,
            "train_epochs": args.epochs,
            "batch_size": args.batch,
            "train_attack_steps": args.train_steps,
            "grad_refine_B": args.B,
            "lr": args.lr,
            "eval_n": args.eval_n,
            "pgd_steps": 20,
            "aa_n": args.aa_n,
            "aa_table1": "AutoAttack standard (APGD-CE, APGD-T, FAB-T, Square)"
            if args.aa_full_table1
            else "APGD-CE + APGD-T",
            "aa_other": "APGD-CE + APGD-T",
            "seed": args.seed,
            "teacher_epochs": args.teacher_epochs,
        }
        self.train = load_dataset(self.dataset, "train")
        self.test = load_dataset(self.dataset, "test")
        self.models: dict[str, torch.nn.Module] = {}

    # ------------------------------------------------------------------ persistence
    def save(self) -> None:
        self.res["provenance"] = provenance()
        atomic_write_json(self.path, self.res)
        merge(self.results_dir)

    def done(self, key: str) -> bool:
        """Finished here, or by another process of the same part (another --tag), or not selected (--only)."""
        if key in self.res["rows"] or (self.only and key not in self.only):
            return True
        for p in self.results_dir.glob("dfs_claims.*.json"):
            if p != self.path:
                other = json.loads(p.read_text())
                if other.get("part") == self.part and key in other.get("rows", {}):
                    return True
        return False

    # ------------------------------------------------------------------ stages
    def teacher(self) -> torch.nn.Module:
        d = self.work / "teacher"
        if not d.with_suffix(".safetensors").exists():
            log(f"training teacher {self.arch} on {self.dataset}")
            m = create_model(
                self.arch,
                num_classes=self.train.num_classes,
                in_channels=self.train.x.shape[1],
                image_size=self.train.x.shape[-1],
                dataset=self.dataset,
                classes=self.train.classes,
            )
            train_classifier(
                m,
                self.train,
                StandardTrainConfig(epochs=self.a.teacher_epochs, seed=self.a.seed),
                progress=False,
            )
            save_model(m, d)
        t = load_model(d).eval()
        self.res["teacher_clean_acc_full_test"] = accuracy(t, self.test)
        return t

    def synth(self, teacher: torch.nn.Module, tag: str, n: int, **kw) -> object:
        cfg = SynthesisConfig(
            n_samples=n, batch_size=min(200, n), iterations=self.a.synth_iters, seed=self.a.seed, **kw
        )
        out = self.work / f"synth_{tag}"
        t0 = time.perf_counter()
        synthesize(teacher, out, cfg, progress=False)
        s = load_synthetic(out)
        self.res.setdefault("synthesis", {})[tag] = {
            "n": len(s),
            "config": cfg.to_dict(),
            **s.throughput(),
            "wall_s": time.perf_counter() - t0,
        }
        return s

    def evaluate(self, model: torch.nn.Module, full_aa: bool) -> dict:
        a = self.a
        r = evaluate_basic(
            model, self.test, norm="linf", eps=a.eps, n=a.eval_n, seed=a.seed, pgd_steps=20, autoattack=True,
            aa_n=a.aa_n, aa_attacks=None if full_aa else ["apgd-ce", "apgd-t"],
        )  # AutoAttack on a class-stratified aa_n of the eval points (mnist5k's test split is in class order)
        aa = r["autoattack"]
        return {
            "clean": r["clean_acc"],
            "pgd": r["pgd_acc"],
            "aa": r["autoattack_acc"],
            "clean_ci": r["clean"].get("ci"),
            "pgd_ci": r["pgd"].get("ci"),
            "aa_detail": {
                **{k: v for k, v in aa.items() if k not in ("attack", "implementation")},
                "attacks": "standard" if full_aa else "apgd-ce+apgd-t",
            },
            "n": r["n"],
            "aa_n": r["aa_n"],
            "eval_seconds": r["seconds"]["pgd"] + aa["seconds"],
        }

    def row(
        self,
        key: str,
        table: str,
        label: str,
        fn,
        full_aa: bool = False,
        keep: bool = False,
        extra: dict | None = None,
    ) -> None:
        if self.done(key):
            log(f"skip {key} (done)")
            return
        log(f"row {key}: {label}")
        t0 = time.perf_counter()
        model, info = fn()
        train_s = time.perf_counter() - t0
        ev = self.evaluate(model, full_aa)
        save_model(model, self.work / f"model_{key}")  # every row: lets a later fix re-evaluate without retraining
        if keep:
            self.models[key] = model
        self.res["rows"][key] = {
            "table": table,
            "label": label,
            **ev,
            "train_seconds": train_s,
            **(info or {}),
            **(extra or {}),
        }
        log(
            f"  {key}: clean {ev['clean']:.3f} pgd {ev['pgd']:.3f} aa {ev['aa']:.3f} "
            f"(train {train_s:.0f}s, eval {ev['eval_seconds']:.0f}s)"
        )
        self.save()

    def robust_cfg(self, objective: str, n: int, B: int = 1, **kw) -> RobustTrainConfig:
        a = self.a
        return RobustTrainConfig(
            objective=objective,
            eps=a.eps,
            attack_steps=a.train_steps,
            epochs=a.epochs,
            batch_size=a.batch,
            lr=a.lr,
            grad_refine_batches=B,
            seed=a.seed,
            **kw,
        )

    def train_on(
        self,
        teacher,
        objective: str,
        x,
        y=None,
        t_logits=None,
        B: int = 1,
        epochs: int | None = None,
        **obj_kw,
    ):
        cfg = self.robust_cfg(objective, len(x), B, objective_kwargs=obj_kw)
        if epochs is not None:
            cfg.epochs = epochs
        student, hist = train_robust(init_student(teacher), x, cfg, y=y, t_logits=t_logits, progress=False)
        return student, {
            "objective": objective,
            "updates": len(hist["loss"]),
            "n_train": len(x),
            "final_loss": hist["loss"][-1] if hist["loss"] else None,
            "kept_fraction_mean": (
                sum(hist["kept_fraction"]) / len(hist["kept_fraction"]) if hist["kept_fraction"] else None
            ),
        }

    # ------------------------------------------------------------------ the benchmark
    def run_ablation(self, teacher, figs: Path) -> None:
        a, N = self.a, self.a.n_synth
        # ---------------- Table 8 + Table 6 (fixed coefficients)
        log("synthesis: fixed coefficients")
        fixed = self.synth(teacher, "fixed", N, coefficients="fixed")
        self.save()
        sample_grid(fixed.x, fixed.y, self.train.classes, figs / f"{self.part}_samples_fixed.png")
        self.row(
            "abl_trades_fixed",
            "8",
            "TRADES, fixed coefficients (no DFS components)",
            lambda: self.train_on(teacher, "trades", fixed.x, fixed.y, fixed.t_logits),
        )
        self.row(
            "abl_dfs_fixed",
            "8",
            "+ L_DFShield (fixed coefficients)",
            lambda: self.train_on(teacher, "dfshield", fixed.x, fixed.y, fixed.t_logits),
        )
        for aug in ("mixup", "cutout", "cutmix"):

            def fn_aug(aug: str = aug):
                xa, ya, ta = augment_synthetic(fixed.x, fixed.y, teacher, aug, seed=a.seed)
                sample_grid(xa, ya, self.train.classes, figs / f"{self.part}_samples_fixed_{aug}.png")
                self.res.setdefault("diversity", {})[f"fixed+{aug}"] = diversity_metrics(
                    teacher, self.train.x, xa, bins=a.ndb_bins, seed=a.seed
                )
                return self.train_on(teacher, "dfshield", xa, ya, ta)

            self.row(f"div_{aug}", "6", f"+ {aug.capitalize()}", fn_aug)
        if "fixed" not in self.res.get("diversity", {}):
            self.res.setdefault("diversity", {})["fixed"] = diversity_metrics(
                teacher, self.train.x, fixed.x, bins=a.ndb_bins, seed=a.seed
            )
            self.save()

    def run(self) -> None:
        a = self.a
        teacher = self.teacher()
        figs = self.results_dir / "figures"
        N = a.n_synth
        if "ablation" in self.stages:  # first: it needs only the fixed-coefficient set (parallel-friendly)
            self.run_ablation(teacher, figs)
        if self.stages & {"table1", "losses", "figures"}:
            log("synthesis: DSS")
            dss = self.synth(teacher, "dss", N, coefficients="dss")
            self.save()
            sample_grid(dss.x, dss.y, self.train.classes, figs / f"{self.part}_samples_dss.png")
        if "table1" in self.stages:
            self.run_table1(teacher, dss, figs)
        if "losses" in self.stages:
            self.run_losses(teacher, dss)
        if "figures" in self.stages:
            self.run_figures(teacher, dss, figs)
        log("done")

    def run_table1(self, teacher, dss, figs: Path) -> None:
        a, N = self.a, self.a.n_synth
        self.row("teacher", "1", "Teacher (no defence)", lambda: (teacher, {}), full_aa=a.aa_full_table1)
        self.row(
            "ours",
            "1",
            "DataFreeShield (DSS + L_DFShield + GradRefine)",
            lambda: self.train_on(teacher, "dfshield", dss.x, dss.y, dss.t_logits, B=a.B),
            full_aa=a.aa_full_table1,
            keep=True,
        )
        budget = a.epochs * N // a.batch  # minibatch passes per row
        for name in ("dast", "dfme", "ait", "dfard"):

            def fn(name: str = name):
                cfg = BaselineConfig(
                    student_steps=budget,
                    batch_size=a.batch,
                    lr_student=a.lr,
                    eps=a.eps,
                    attack_steps=a.train_steps,
                    seed=a.seed,
                )
                st, gen, hist = run_baseline(name, teacher, cfg, progress=False)
                xs, _ = gen.generate(200, torch.Generator().manual_seed(a.seed))
                with torch.no_grad():  # rows = the teacher's class (an unconditional generator has no label)
                    ys = teacher(xs).argmax(1)
                sample_grid(xs, ys, self.train.classes, figs / f"{self.part}_samples_{name}.png")
                return st, {
                    "baseline": name,
                    "student_updates": budget,
                    "generator_seconds": hist["seconds"],
                    "final_g_loss": hist["g_loss"][-1],
                    "final_s_loss": hist["s_loss"][-1],
                }

            self.row(name, "1", name.upper(), fn, full_aa=a.aa_full_table1)
        # Equal compute: the real-data rows process as many images as a synthetic row (epochs × N), i.e. one
        # epoch over a seeded class-stratified subset of that size (all images when the set is smaller).
        n_img = a.epochs * N
        real = self.train.subset(n_img, seed=a.seed)
        ep_real = max(1, round(n_img / len(real)))
        self.row(
            "original",
            "1",
            f"Original (PGD-AT, hard labels, on {len(real)} of the {len(self.train)} real {self.dataset} "
            f"training images × {ep_real} epoch)",
            lambda: self.train_on(teacher, "pgd_at", real.x, real.y, epochs=ep_real),
            full_aa=a.aa_full_table1,
        )
        pub_all = load_dataset(self.public, "train")
        if pub_all.x.shape[1:] != self.train.x.shape[1:]:
            raise ValueError(f"public set {self.public} has another image shape")
        pub = pub_all.subset(n_img, seed=a.seed)
        ep_pub = max(1, round(n_img / len(pub)))
        with torch.no_grad():
            t_pub = torch.cat([teacher(pub.x[i : i + 500]) for i in range(0, len(pub), 500)])
        self.row(
            "public",
            "1",
            f"Public (AT with teacher soft labels KL(S(x')‖T(x)) on {len(pub)} {self.public} images × {ep_pub} epoch)",
            lambda: self.train_on(teacher, "rslad", pub.x, None, t_pub, epochs=ep_pub, alpha=1.0),
            full_aa=a.aa_full_table1,
        )

    def run_losses(self, teacher, dss) -> None:
        a, N = self.a, self.a.n_synth
        # ---------------- Table 7 (DSS, no GradRefine)
        self.row(
            "loss_dfshield",
            "7",
            "L_DFShield",
            lambda: self.train_on(teacher, "dfshield", dss.x, dss.y, dss.t_logits),
            keep=True,
        )
        for obj in ("std", "trades", "mart", "ard", "rslad"):
            self.row(
                f"loss_{obj}",
                "7",
                obj.upper(),
                lambda obj=obj: self.train_on(teacher, obj, dss.x, dss.y, dss.t_logits),
            )
        if "dss" not in self.res.get("diversity", {}):
            self.res.setdefault("diversity", {})["dss"] = diversity_metrics(
                teacher, self.train.x, dss.x, bins=a.ndb_bins, seed=a.seed
            )
            self.save()
        # GradRefine at equal *updates* (ℬ× the epochs): separates its effect from the ℬ× fewer updates it makes
        # at equal compute
        self.row(
            "gr_equal_updates",
            "8",
            f"L_DFShield + DSS + GradRefine, {a.B}× epochs (as many updates as without GradRefine)",
            lambda: self.train_on(teacher, "dfshield", dss.x, dss.y, dss.t_logits, B=a.B, epochs=a.epochs * a.B),
        )
        # ---------------- Appendix C (prefixes of the DSS set; same epochs → fewer updates)
        for n in a.sample_counts:
            if n >= N:
                continue
            self.row(
                f"count_{n}",
                "C",
                f"{n} DSS samples (L_DFShield)",
                lambda n=n: self.train_on(teacher, "dfshield", dss.x[:n], dss.y[:n], dss.t_logits[:n]),
            )

    def run_figures(self, teacher, dss, figs: Path) -> None:
        a = self.a
        fixed = self.synth(teacher, "fixed", a.n_synth, coefficients="fixed")
        # ---------------- Fig 8: PCA (fixed vs DSS, high / low L_class)
        if "pca" not in self.res.get("figures", {}):
            n_small = a.n_pca
            hi = self.synth(teacher, "high_class", n_small, coefficients="fixed", weights=(1.0, 0.0, 2.5e-5))
            lo = self.synth(teacher, "low_class", n_small, coefficients="fixed", weights=(0.0, 1.0, 2.5e-5))
            for tag, s in (("high_class", hi), ("low_class", lo)):
                self.res.setdefault("diversity", {})[tag] = diversity_metrics(
                    teacher, self.train.x, s.x, bins=min(a.ndb_bins, 20), seed=a.seed
                )
            real_f = extract_features(teacher, self.train.x[:1000])
            p = plot_feature_pca(
                real_f,
                {
                    k: extract_features(teacher, s.x)
                    for k, s in (("fixed", fixed), ("DSS", dss), ("high L_class", hi), ("low L_class", lo))
                },
                figs / f"{self.part}_pca.png",
                title=f"{self.dataset} teacher features",
            )
            self.res.setdefault("figures", {})["pca"] = str(p.relative_to(self.results_dir))
            self.save()
        # ---------------- Fig 4: loss surface with / without GradRefine
        if "loss_surface" not in self.res.get("figures", {}):
            surf = {}
            ev = self.test.subset(a.surface_n, seed=a.seed)
            from shieldkit.attacks.pgd import PGDConfig, pgd

            def robust_loss(m: torch.nn.Module) -> float:
                xa = pgd(m, ev.x, ev.y, PGDConfig(eps=a.eps, steps=5), generator=torch.Generator().manual_seed(0))
                with torch.no_grad():
                    return torch.nn.functional.cross_entropy(m(xa), ev.y).item()

            for key, label in (("loss_dfshield", "L_DFShield"), ("ours", "L_DFShield + GradRefine")):
                if key not in self.models and not (self.work / f"model_{key}.safetensors").exists():
                    log(f"loss surface: model {key} not trained yet, skipped")
                    continue
                m = self.models.get(key) or load_model(self.work / f"model_{key}")
                surf[label] = loss_surface(m, robust_loss, steps=a.surface_steps, span=a.surface_span, seed=a.seed)
            p = plot_loss_surfaces(
                surf,
                figs / f"{self.part}_loss_surface.png",
                title="robust CE on real test points (filter-normalised directions)",
            )
            self.res.setdefault("figures", {})["loss_surface"] = str(p.relative_to(self.results_dir))
            self.res["loss_surface"] = {
                k: {
                    "min": min(map(min, v["loss"])),
                    "max": max(map(max, v["loss"])),
                    "center": v["loss"][len(v["loss"]) // 2][len(v["loss"]) // 2],
                }
                for k, v in surf.items()
            }
            self.save()
        log("part done")


# ------------------------------------------------------------------------------------------ merge / markdown
def merge(results_dir: Path) -> None:
    parts: dict[str, dict] = {}
    for p in sorted(results_dir.glob("dfs_claims.*.json")):
        res = json.loads(p.read_text())
        part = res.get("part", p.name.split(".")[1])
        if part not in parts:
            parts[part] = {**res, "rows": dict(res.get("rows", {})), "sources": [p.name]}
            continue
        m = parts[part]  # same teacher run by several processes (--tag): union of their rows
        m["sources"].append(p.name)
        for key in ("rows", "diversity", "figures", "synthesis", "loss_surface"):
            m.setdefault(key, {}).update(res.get(key, {}))
    merged = {"description": "DataFreeShield claims at CPU scale (benchmarks/dfs_claims.py)", "parts": parts}
    atomic_write_json(results_dir / "dfs_claims.json", merged)
    atomic_write_text(results_dir / "dfs_claims.md", render_markdown(parts))


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def _table(
    rows: dict, keys: list[str], extra_cols: tuple[str, ...] = (), labels: dict[str, str] | None = None
) -> list[str]:
    out = [
        "| Method | Clean | PGD-20 | AA | train s |" + "".join(f" {c} |" for c in extra_cols),
        "|---|---:|---:|---:|---:|" + "---:|" * len(extra_cols),
    ]
    for k in keys:
        r = rows.get(k)
        if r is None:
            out.append(f"| {k} | (not run) | | | |" + " |" * len(extra_cols))
            continue
        label = (labels or {}).get(k, r["label"])
        out.append(
            f"| {label} | {_pct(r['clean'])} | {_pct(r['pgd'])} | {_pct(r['aa'])} | "
            f"{r.get('train_seconds', 0):.0f} |" + "".join(f" {r.get(c, '')} |" for c in extra_cols)
        )
    return out


def render_markdown(parts: dict) -> str:
    L = [
        "# DataFreeShield claims at CPU scale",
        "",
        "Generated by `benchmarks/dfs_claims.py` (regenerate: `OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python "
        "benchmarks/dfs_claims.py --part main` and `--part second`, then `--merge-only`). "
        "Accuracies in %, on "
        "real test images; robust accuracy counts a point only if it is also clean-correct.",
        "",
    ]
    for part, res in parts.items():
        s, rows = res["settings"], res["rows"]
        L += [
            f"## Part `{part}`: {s['arch']} teacher on {s['dataset']}",
            "",
            f"ℓ∞ ε = {s['eps']}; clean & PGD-20 (step 2.5ε/20, 1 restart) on n = {s['eval_n']} test points; "
            f"AA on a class-stratified n = {s['aa_n']} of them. Table 1 AA = {s['aa_table1']}; other tables AA = "
            f"{s['aa_other']}. Synthetic set: {s['n_synth']} samples × {s['synth_iterations']} Adam "
            "iterations. "
            f"Robust training: {s['train_epochs']} epochs-equivalent, batch {s['batch_size']}, PGD-"
            f"{s['train_attack_steps']} (step ε/4) inner max, SGD lr {s['lr']} cosine; GradRefine ℬ = "
            f"{s['grad_refine_B']}. Teacher clean acc (full test): "
            f"{_pct(res.get('teacher_clean_acc_full_test'))}."
            f" Seed {s['seed']}.",
            "",
        ]
        L += (
            ["### Table 1 — methods", ""]
            + _table(rows, ["teacher", "original", "public", "dast", "dfme", "ait", "dfard", "ours"])
            + [""]
        )
        if any(r["table"] == "7" for r in rows.values()):
            L += (
                ["### Table 7 — training losses (DSS set, no GradRefine)", ""]
                + _table(rows, [f"loss_{k}" for k in ("std", "trades", "mart", "ard", "rslad", "dfshield")])
                + [""]
            )
            L += (
                ["### Table 8 — ablation (the last row is extra: GradRefine given as many updates as the others)", ""]
                + _table(
                    rows,
                    ["abl_trades_fixed", "abl_dfs_fixed", "loss_dfshield", "ours", "gr_equal_updates"],
                    labels={
                        "abl_trades_fixed": "none (fixed coefficients + TRADES)",
                        "abl_dfs_fixed": "L_DFShield",
                        "loss_dfshield": "L_DFShield + DSS",
                        "ours": "L_DFShield + DSS + GradRefine",
                        "gr_equal_updates": "L_DFShield + DSS + GradRefine, ℬ× epochs (equal updates)",
                    },
                )
                + [""]
            )
            div = res.get("diversity", {})
            L += [
                "### Table 6 — diversification (all trained with L_DFShield)",
                "",
                "| Method | Clean | PGD-20 | AA | Recall ↑ | Coverage ↑ | NDB ↓ | JSD ↓ |",
                "|---|---:|---:|---:|---:|---:|---:|---:|",
            ]
            for key, dkey, label in (
                ("abl_dfs_fixed", "fixed", "L_Synth (fixed)"),
                ("div_mixup", "fixed+mixup", "+ Mixup"),
                ("div_cutout", "fixed+cutout", "+ Cutout"),
                ("div_cutmix", "fixed+cutmix", "+ CutMix"),
                ("loss_dfshield", "dss", "+ DSS"),
                (None, "high_class", "high L_class only (no training)"),
                (None, "low_class", "low L_class only (no training)"),
            ):
                r, d = rows.get(key) if key else None, div.get(dkey)
                acc = f"{_pct(r['clean'])} | {_pct(r['pgd'])} | {_pct(r['aa'])}" if r else "– | – | –"
                dv = (
                    f"{d['recall']:.3f} | {d['coverage']:.3f} | {d['ndb']}/{d['bins']} | {d['jsd']:.3f}"
                    if d
                    else "– | – | – | –"
                )
                L.append(f"| {label} | {acc} | {dv} |")
            L += [
                "",
                "### Appendix C — number of synthetic samples (L_DFShield, no GradRefine, same epochs)",
                "",
                "| n synthetic | Clean | PGD-20 | AA | updates |",
                "|---:|---:|---:|---:|---:|",
            ]
            counts = sorted(
                [(r["n_train"], r) for k, r in rows.items() if k.startswith("count_")]
                + ([(rows["loss_dfshield"]["n_train"], rows["loss_dfshield"])] if "loss_dfshield" in rows else []),
                key=lambda t: t[0],
            )
            for n, r in counts:
                L.append(f"| {n} | {_pct(r['clean'])} | {_pct(r['pgd'])} | {_pct(r['aa'])} | {r.get('updates')} |")
            L.append("")
        figs = res.get("figures", {})
        if figs:
            L += ["Figures: " + ", ".join(f"`{v}`" for v in figs.values()), ""]
        if res.get("loss_surface"):
            L += [
                "Loss surface (robust CE on real points, filter-normalised grid): "
                + "; ".join(
                    f"{k}: centre {v['center']:.3f}, max {v['max']:.3f}" for k, v in res["loss_surface"].items()
                ),
                "",
            ]
    notes = Path(__file__).with_name("dfs_claims_notes.md")
    if notes.exists():
        L += [notes.read_text()]
    return "\n".join(L) + "\n"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=sorted(PARTS), default="main")
    p.add_argument("--merge-only", action="store_true")
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma list of {STAGES}")
    p.add_argument("--only", default="", help="comma list of row keys to run (default: all of the stages)")
    p.add_argument(
        "--tag",
        default=None,
        help="results file tag (default: the part); parts of one teacher "
        "run as several processes with different tags are merged by part",
    )
    p.add_argument("--results", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--work", default=os.environ.get("DFS_WORK", "/tmp/dfs_claims_work"))
    p.add_argument("--eps", type=float, default=0.2)
    p.add_argument("--n-synth", type=int, default=1000)
    p.add_argument("--synth-iters", type=int, default=100)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--train-steps", type=int, default=5)
    p.add_argument("--B", type=int, default=4)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--eval-n", type=int, default=500)
    p.add_argument("--aa-n", type=int, default=100)
    p.add_argument("--aa-full-table1", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--teacher-epochs", type=int, default=15)
    p.add_argument("--ndb-bins", type=int, default=50)
    p.add_argument("--sample-counts", type=int, nargs="*", default=[250, 500])
    p.add_argument("--n-pca", type=int, default=200)
    p.add_argument("--surface-n", type=int, default=100)
    p.add_argument("--surface-steps", type=int, default=7)
    p.add_argument("--surface-span", type=float, default=0.5)
    p.add_argument("--all-tables", action="store_true", help="run Tables 6/7/8/C for the second part too")
    p.add_argument("--teacher-from", default=None, help="copy a pre-trained teacher dir (same recipe) into work")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if args.merge_only:
        merge(Path(args.results))
        return 0
    b = Bench(args)
    if args.teacher_from and not (b.work / "teacher.safetensors").exists():
        for suffix in (".safetensors", ".json"):  # save_model writes <path>.safetensors + <path>.json
            shutil.copy(Path(args.teacher_from).with_suffix(suffix), b.work / f"teacher{suffix}")
    b.run()
    return 0


if __name__ == "__main__":
    from shieldkit.utils.allocator import tune_allocator

    tune_allocator()  # the process policy of every shieldkit command (recorded in provenance)
    sys.exit(main())
