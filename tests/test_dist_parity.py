"""Distributed (gloo, 2 CPU processes) == single process: synthesis shards, one training update
(GradRefine included, and plain data parallelism), and per-point evaluation results.

One spawn runs all three distributed jobs (process start-up dominates the cost); the parent runs the
single-process references and each test compares one part.
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from shieldkit.data import load_dataset
from shieldkit.distributed import dist
from shieldkit.distributed.evaluation import evaluate_distributed
from shieldkit.distributed.synthesis import synthesize_distributed, verify_synthetic_set
from shieldkit.distributed.training import minibatches_per_update, train_robust_distributed
from shieldkit.models import create_model
from shieldkit.synthesis import SynthesisConfig, load_synthetic, synthesize
from shieldkit.training.robust import RobustTrainConfig, init_student, train_robust

WORLD = 2
SYN = SynthesisConfig(n_samples=12, batch_size=4, iterations=3, seed=7)  # 3 shards: ranks get {0, 2} and {1}
N_TRAIN = 16


def _teacher():
    torch.manual_seed(0)
    return create_model("mnist_cnn", num_classes=10, in_channels=1, image_size=28).eval()


def _train_data():
    data = load_dataset("digits", "train").subset(N_TRAIN, seed=3)
    with torch.no_grad():
        t_logits = _teacher()(data.x)
    return data.x, t_logits


def _cfgs():
    common = dict(eps=0.1, attack_steps=2, batch_size=4, epochs=1, lr=0.05, seed=11, schedule="constant")
    return {"refine": RobustTrainConfig(grad_refine_batches=4, tau=0.5, **common),
            "plain": RobustTrainConfig(grad_refine_batches=1, **common)}


def _worker(rank: int, port: int, tmp: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    info = dist.init_distributed("cpu")
    assert (info.rank, info.world_size, info.backend) == (rank, WORLD, "gloo")
    try:
        out: dict = {}
        out["syn_summary"] = synthesize_distributed(_teacher(), os.path.join(tmp, "dist_syn"), SYN, progress=False)
        x, t = _train_data()
        for name, cfg in _cfgs().items():
            student, hist = train_robust_distributed(init_student(_teacher()), x, cfg, t_logits=t,
                                                     stop_after_updates=1, progress=False)
            out[f"train_{name}"] = {k: v.clone() for k, v in student.state_dict().items()}
            out[f"hist_{name}"] = hist
        out["eval"] = evaluate_distributed(_teacher(), load_dataset("digits", "test"), eps=0.1, n=12, seed=5,
                                           pgd_steps=2, autoattack=False, chunk_size=4)
        torch.save(out, os.path.join(tmp, f"rank{rank}.pt"))
    finally:
        dist.cleanup()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    mp.spawn(_worker, args=(_free_port(), str(tmp)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    single: dict = {"syn_dir": synthesize(_teacher(), tmp / "single_syn", SYN, progress=False)}
    x, t = _train_data()
    for name, cfg in _cfgs().items():
        m = minibatches_per_update(cfg, WORLD)  # the global M of the 2-rank job, in one process
        student, hist = train_robust_distributed(init_student(_teacher()), x, cfg, t_logits=t, minibatches=m,
                                                 stop_after_updates=1, progress=False)
        single[f"train_{name}"] = student.state_dict()
        single[f"hist_{name}"] = hist
    single["eval"] = evaluate_distributed(_teacher(), load_dataset("digits", "test"), eps=0.1, n=12, seed=5,
                                          pgd_steps=2, autoattack=False, chunk_size=4)
    return {"tmp": tmp, "ranks": ranks, "single": single}


def test_distributed_synthesis_is_bit_identical(runs):
    dist_set = load_synthetic(runs["tmp"] / "dist_syn")
    single_set = load_synthetic(runs["single"]["syn_dir"])
    for field in ("x", "y", "t_logits", "alphas"):
        assert torch.equal(getattr(dist_set, field), getattr(single_set, field)), field
    summary = runs["ranks"][1]["syn_summary"]  # rank 0's verification, broadcast to every rank
    assert summary["verified"] and summary["n_samples"] == 12 and summary["num_shards"] == 3
    assert verify_synthetic_set(runs["tmp"] / "dist_syn", SYN)["n_samples"] == 12


@pytest.mark.parametrize("mode", ["refine", "plain"])
def test_distributed_training_step_equals_single_process(runs, mode):
    r0, r1 = (r[f"train_{mode}"] for r in runs["ranks"])
    single = runs["single"][f"train_{mode}"]
    before = _teacher().state_dict()
    moved = False
    for k, v in single.items():
        assert torch.equal(r0[k], r1[k]), f"ranks disagree on {k}"
        assert torch.allclose(r0[k].double(), v.double(), rtol=1e-5, atol=1e-6), k
        moved |= not torch.equal(v, before[k])
    assert moved, "the update changed nothing: the comparison would be vacuous"
    h_dist, h_single = runs["ranks"][0][f"hist_{mode}"], runs["single"][f"hist_{mode}"]
    assert h_dist["minibatches"] == h_single["minibatches"] == (4 if mode == "refine" else 2)
    assert h_dist["loss"] == pytest.approx(h_single["loss"], rel=1e-5)
    if mode == "refine":  # GradRefine's mask (Eq 9-10) is computed from exact integer sign sums
        assert h_dist["kept_fraction"] == h_single["kept_fraction"]
        assert 0.0 < h_dist["kept_fraction"][0] < 1.0


def test_distributed_evaluation_merges_to_same_per_point_results(runs):
    d, s = runs["ranks"][0]["eval"], runs["single"]["eval"]
    assert d["per_point"] == s["per_point"] and len(d["per_point"]["clean_correct"]) == 12
    assert (d["clean_acc"], d["pgd_acc"]) == (s["clean_acc"], s["pgd_acc"])
    assert d["distributed"]["world_size"] == 2 and d["distributed"]["n_chunks"] == 3
    assert runs["ranks"][1]["eval"]["per_point"] == d["per_point"]


@pytest.mark.parametrize("extra", [{}, {"eps_warmup": 0.5, "grad_clip": 0.5}])
def test_single_process_plain_step_equals_lead_trainer(extra):
    """With one minibatch per update the distributed trainer is exactly ``train_robust`` (ε warm-up and
    gradient clipping included)."""
    import dataclasses

    x, t = _train_data()
    cfg = dataclasses.replace(_cfgs()["plain"], **extra)
    a, _ = train_robust_distributed(init_student(_teacher()), x, cfg, t_logits=t, stop_after_updates=2,
                                    progress=False)
    b, _ = train_robust(init_student(_teacher()), x, cfg, t_logits=t, stop_after_updates=2, progress=False)
    for k, v in b.state_dict().items():
        assert torch.allclose(a.state_dict()[k], v, rtol=1e-6, atol=1e-7), k


def test_gradrefine_batches_must_split_over_ranks():
    with pytest.raises(ValueError, match="multiple of the number of processes"):
        minibatches_per_update(RobustTrainConfig(grad_refine_batches=3), 2)
    assert minibatches_per_update(RobustTrainConfig(grad_refine_batches=1), 4) == 4
