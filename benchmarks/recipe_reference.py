"""An independent ~100-line reference loop (issue 16): DeepInversion synthesis + L_DFShield training written
from the papers alone, sharing nothing with ``shieldkit.synthesis`` / ``shieldkit.training`` except the
teacher and the evaluation. It tells apart "shieldkit's implementation loses robustness" (this loop does
better on the same teacher) from "the teacher / budget limits it" (it does no better).

Synthesis (Yin et al. 2020, DataFreeShield Eq 3-5 with fixed coefficients): x ∈ [0, 1] optimised by Adam,
projected onto [0, 1] after every step; loss = CE(T(x), y) + Σ_l ‖μ_l(x) − μ_l‖₂ + ‖σ²_l(x) − σ²_l‖₂ + w_tv·TV(x);
random labels; jitter ±2 px. Training (DataFreeShield Eq 9 at T = 1): student ← teacher; PGD-k from a
uniform start, step ε/4, maximising KL(T(x) ‖ S(x')); loss KL(T(x)‖S(x)) + KL(T(x)‖S(x')) + KL(S(x)‖S(x'))
with the clean and the adversarial batch in two train-mode passes; SGD 0.01, momentum 0.9, cosine.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/recipe_reference.py --eps 0.2 [--arch mnist_cnn]

Appends a row ``eps<ε>_reference_<arch>`` to ``benchmarks/results/recipe.json`` (see ``recipe.py``).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from shieldkit.data import load_dataset
from shieldkit.evaluation.basic import evaluate_basic
from shieldkit.pipeline import ensure_teacher

REPO = Path(__file__).resolve().parents[1]


def bn_hooks(model: nn.Module, terms: list) -> list:
    def hook(m: nn.BatchNorm2d, inp: tuple, _out: torch.Tensor) -> None:
        x = inp[0]
        var, mean = torch.var_mean(x, dim=[0, 2, 3], unbiased=False)
        terms.append((m.running_mean - mean).norm() + (m.running_var - var).norm())
    return [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


def synthesize(teacher: nn.Module, n: int, batch: int, iters: int, lr: float, w_tv: float, seed: int,
               k: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    teacher.eval()
    terms: list = []
    handles = bn_hooks(teacher, terms)
    xs, ys = [], []
    for start in range(0, n, batch):
        b = min(batch, n - start)
        y = torch.randint(0, k, (b,), generator=g)
        x = torch.rand((b, 1, 28, 28), generator=g).requires_grad_(True)
        opt = torch.optim.Adam([x], lr=lr)
        for _ in range(iters):
            dx, dy = torch.randint(-2, 3, (2,), generator=g).tolist()
            xj = torch.roll(x, (dx, dy), (2, 3))
            terms.clear()
            out = teacher(xj)
            tv = (xj[..., 1:, :] - xj[..., :-1, :]).norm() + (xj[..., :, 1:] - xj[..., :, :-1]).norm()
            loss = F.cross_entropy(out, y) + torch.stack(terms).sum() + w_tv * tv
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                x.clamp_(0, 1)
        xs.append(x.detach())
        ys.append(y)
        print(f"  synthesised {start + b}/{n} (CE {F.cross_entropy(out, y).item():.3f})", flush=True)
    for h in handles:
        h.remove()
    return torch.cat(xs), torch.cat(ys)


def kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax p ‖ softmax q), batch mean."""
    return F.kl_div(F.log_softmax(q_logits, 1), F.log_softmax(p_logits, 1), reduction="batchmean", log_target=True)


def train(teacher: nn.Module, x: torch.Tensor, eps: float, epochs: int, batch: int, steps: int, lr: float,
          seed: int) -> nn.Module:
    torch.manual_seed(seed)
    student = copy.deepcopy(teacher)
    teacher.eval()
    with torch.no_grad():
        t_all = torch.cat([teacher(x[i:i + 500]) for i in range(0, len(x), 500)])
    opt = torch.optim.SGD(student.parameters(), lr=lr, momentum=0.9)
    total = epochs * (-(-len(x) // batch))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, total)
    for ep in range(epochs):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), batch):
            idx = perm[i:i + batch]
            xb, tb = x[idx], t_all[idx]
            student.eval()
            xa = (xb + torch.empty_like(xb).uniform_(-eps, eps)).clamp(0, 1)
            for _ in range(steps):
                xa.requires_grad_(True)
                g, = torch.autograd.grad(kl(tb, student(xa)), xa)
                xa = torch.min(torch.max(xa.detach() + eps / 4 * g.sign(), xb - eps), xb + eps).clamp(0, 1)
            student.train()
            s_clean, s_adv = student(xb), student(xa.detach())
            loss = kl(tb, s_clean) + kl(tb, s_adv) + kl(s_clean, s_adv)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        print(f"  epoch {ep + 1}/{epochs} loss {loss.item():.3f}", flush=True)
    return student.eval()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--eps", type=float, default=0.2)
    p.add_argument("--arch", default="mnist_cnn")
    p.add_argument("--n-syn", type=int, default=1200)
    p.add_argument("--iters", type=int, default=200)
    p.add_argument("--syn-lr", type=float, default=0.05)
    p.add_argument("--w-tv", type=float, default=1e-4)
    p.add_argument("--epochs", type=int, default=25)
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--aa-n", type=int, default=0)
    a = p.parse_args()
    teacher = ensure_teacher(REPO / f"runs/teachers/mnist5k-{a.arch}", arch=a.arch, progress=False)
    t0 = time.perf_counter()
    x, _ = synthesize(teacher, a.n_syn, 200, a.iters, a.syn_lr, a.w_tv, seed=0)
    t_syn = time.perf_counter() - t0
    student = train(teacher, x, a.eps, a.epochs, 100, 10, 0.01, seed=0)
    t_train = time.perf_counter() - t0 - t_syn
    ev = evaluate_basic(student, load_dataset("mnist5k", "test"), eps=a.eps, n=a.n, aa_n=a.aa_n or None,
                        autoattack=a.aa_n > 0)
    row = {"name": f"reference_{a.arch}", "eps": a.eps, "args": vars(a), "clean_acc": ev["clean_acc"],
           "pgd_acc": ev["pgd_acc"], "autoattack_acc": ev.get("autoattack_acc"), "n": ev["n"],
           "aa_n": ev.get("aa_n"), "clean": ev["clean"], "pgd": ev["pgd"], "autoattack": ev.get("autoattack"),
           "updates": a.epochs * 12, "seconds": {"synthesis": t_syn, "training": t_train}}
    print(json.dumps({k: row[k] for k in ("name", "eps", "clean_acc", "pgd_acc", "autoattack_acc")}), flush=True)
    out = REPO / "benchmarks/results/recipe_reference.json"
    rows = json.loads(out.read_text()) if out.exists() else {}
    rows[f"eps{a.eps:g}_{row['name']}_it{a.iters}"] = row
    out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    from shieldkit.utils.allocator import tune_allocator

    tune_allocator()  # the process policy of every shieldkit command (recorded in provenance)
    main()
