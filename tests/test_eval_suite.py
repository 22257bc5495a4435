"""End-to-end: `shieldkit evaluate` on a real MNIST-5k teacher, on deliberately masked versions of it,
and the audit's individual checks on hand-made evidence."""

import json
from html.parser import HTMLParser

import pytest
import torch
from torch import nn

from shieldkit.data import load_dataset
from shieldkit.evaluation import audit as A
from shieldkit.evaluation.suite import SUITE_SPECS, evaluate
from shieldkit.models import create_model, load_model, save_model
from shieldkit.training.standard import StandardTrainConfig, train_classifier

EPS = 0.2  # the demo threat model (ℓ∞, ε = 0.2 on MNIST-5k)
# quick suite with AutoAttack reduced to APGD-CE: keeps each masked-model run to a few seconds
FAST = SUITE_SPECS["quick"].__class__(
    **{
        **SUITE_SPECS["quick"].__dict__,
        "aa_attacks": ("apgd-ce",),
        "iter_curve": (1, 5, 20),
        "eps_factors": (0.5, 1.0),
    }
)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    torch.manual_seed(0)
    m = create_model("mnist_cnn", dataset="mnist5k")
    train_classifier(m, load_dataset("mnist5k", "train"), StandardTrainConfig(epochs=2, batch_size=32, seed=0), "cpu")
    m.eval()
    path = tmp_path_factory.mktemp("teacher") / "teacher.safetensors"
    save_model(m, path)
    return m, path


@pytest.fixture(scope="module")
def test_set():
    return load_dataset("mnist5k", "test")


class _Imgs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs, self.text = [], []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.imgs.append(dict(attrs))

    def handle_data(self, data):
        self.text.append(data)


def test_cli_on_standard_teacher_breaks_it_and_audit_passes(teacher, tmp_path):
    from typer.testing import CliRunner

    from shieldkit.cli.main import app

    _, path = teacher
    out = tmp_path / "eval"
    r = CliRunner().invoke(
        app,
        [
            "evaluate",
            "--model",
            str(path),
            "--data",
            "mnist5k",
            "--eps",
            "0.2",
            "--suite",
            "quick",
            "--n",
            "40",
            "--seed",
            "0",
            "--out",
            str(out),
            "--device",
            "cpu",
        ],
    )
    assert r.exit_code == 0, r.output
    res = json.loads((out / "evaluation.json").read_text())
    for key in (
        "clean_acc",
        "autoattack_acc",
        "robust_acc",
        "pgd_acc",
        "eps",
        "norm",
        "threat_model",
        "n",
        "audit",
        "attacks",
        "provenance",
        "seed",
    ):
        assert key in res
    assert res["threat_model"] == "Linf" and res["n"] == 40 and res["eps"] == pytest.approx(0.2)
    assert res["clean_acc"] >= 0.9
    assert res["pgd_acc"] <= 0.05 and res["autoattack_acc"] <= 0.05 and res["robust_acc"] <= 0.05
    assert [c["verdict"] for c in res["audit"]] == ["pass"] * len(res["audit"]), res["audit"]
    assert res["trustworthy"] and res["headline"].startswith("Trustworthy")
    for a in res["attacks"]:  # n, CI, time and forward/backward counts for every attack
        assert a["n"] == 40 and a["ci"][0] <= a["acc"] <= a["ci"][1] and a["wall_time_s"] >= 0
        assert a["forwards"] >= 40 or a["name"] == "clean"
    assert any(a["backwards"] > 0 for a in res["attacks"])
    # AutoAttack's per-sub-attack ledger reaches the JSON and the report: robust counts never rise along the
    # sub-attacks, and the last one is the AutoAttack row's robust count
    aa = res["autoattack_detail"]["standard"]
    counts = list(aa["per_attack_robust"].values())
    assert list(aa["per_attack_robust"]) == ["clean", "apgd-ce", "apgd-t"] and aa["n"] == 40, aa
    assert counts == sorted(counts, reverse=True) and counts[0] >= 36, aa
    assert counts[-1] == next(a["k"] for a in res["attacks"] if a["name"].startswith("autoattack")), aa
    assert "AutoAttack standard: robust after each sub-attack" in (out / "report.html").read_text()
    # the report: self-contained HTML with both curves embedded as PNG
    p = _Imgs()
    p.feed((out / "report.html").read_text())
    srcs = [i["src"] for i in p.imgs]
    assert len(srcs) >= 2 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert {i["alt"] for i in p.imgs} >= {"eps_curve", "iteration_curve"}
    assert "Trustworthy" in "".join(p.text)
    assert (out / "eps_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _quantize(x):
    return torch.round(x * 4) / 4


def test_quantised_input_is_flagged_and_bpda_breaks_it(teacher, test_set):
    m, _ = teacher
    res = evaluate(
        m,
        test_set,
        norm="linf",
        eps=EPS,
        suite="quick",
        n=20,
        seed=0,
        device="cpu",
        preprocess=_quantize,
        spec=FAST,
    )
    verdicts = {c["name"]: c["verdict"] for c in res["audit"]}
    assert verdicts["input_gradients"] == "fail"  # round() has zero gradient everywhere
    assert verdicts["adaptive_vs_standard"] == "fail"  # BPDA beats every standard attack
    assert not res["trustworthy"] and res["headline"].startswith("NOT TRUSTWORTHY")
    acc = {a["name"]: a["acc"] for a in res["attacks"]}
    assert acc["clean"] >= 0.9
    assert acc["fgsm"] >= 0.8  # the masked gradient fools single-step attacks
    bpda = min(v for k, v in acc.items() if k.startswith("bpda"))
    assert bpda <= 0.05 and res["robust_acc"] <= 0.05
    assert res["autoattack_acc"] > bpda + 0.2  # standard AutoAttack overestimates robustness


class _Temperature(nn.Module):
    """Saturated softmax: logits × T (what defensive distillation at T=100 amounts to at test time)."""

    def __init__(self, model, t):
        super().__init__()
        self.model, self.t = model, t

    def forward(self, x):
        return self.model(x) * self.t

    def features(self, x):
        return self.model.features(x)


def test_saturated_softmax_is_flagged_and_margin_attack_breaks_it(teacher, test_set):
    m, _ = teacher
    res = evaluate(
        _Temperature(m, 1000.0).eval(),
        test_set,
        norm="linf",
        eps=EPS,
        suite="quick",
        n=20,
        seed=0,
        device="cpu",
        spec=FAST,
    )
    verdicts = {c["name"]: c["verdict"] for c in res["audit"]}
    assert verdicts["input_gradients"] == "fail" and verdicts["loss_consistency"] == "warn"
    acc = {a["name"]: a["acc"] for a in res["attacks"]}
    assert acc["fgsm"] >= 0.8  # CE gradient is exactly/almost zero
    assert acc["cw-linf-margin-pgd-20"] <= 0.05  # the logit-margin (CW) loss ignores the temperature
    rescaled = [v for k, v in acc.items() if "logits/" in k]
    assert rescaled and rescaled[0] <= 0.05  # adaptive: CE on logits / T
    assert res["robust_acc"] <= 0.05 and not res["trustworthy"]


def test_probes_flag_softmax_train_mode_and_randomness(teacher, test_set):
    m, _ = teacher
    x = test_set.x[:16]
    assert A.check_softmax(nn.Sequential(m, nn.Softmax(1)), x)["verdict"] == "fail"
    assert A.check_softmax(m, x)["verdict"] == "pass"
    noisy = nn.Sequential(nn.Dropout(0.3), m)
    assert A.check_eval_mode(noisy.train())["verdict"] == "warn"
    probe = A.probe_randomness(noisy, x)
    assert probe["random"] and A.check_randomness(probe, eot_samples=0)["verdict"] == "fail"
    assert A.check_randomness(probe, eot_samples=10)["verdict"] == "warn"
    noisy.eval()
    assert not A.probe_randomness(noisy, x)["random"]


def test_audit_checks_on_hand_made_evidence():
    assert A.check_single_vs_iterative(0.10, 0.40, "PGD-20", 100)["verdict"] == "fail"
    assert A.check_single_vs_iterative(0.60, 0.40, "PGD-20", 100)["verdict"] == "pass"
    assert A.check_iterations([(1, 0.6), (10, 0.3), (100, 0.5)], 100)["verdict"] == "fail"
    assert A.check_iterations([(1, 0.6), (10, 0.45), (100, 0.30)], 100)["verdict"] == "warn"
    assert A.check_iterations([(1, 0.6), (10, 0.31), (100, 0.30)], 100)["verdict"] == "pass"
    assert A.check_restarts(0.40, 0.30, 5, 100)["verdict"] == "warn"
    assert A.check_restarts(0.40, 0.41, 5, 100)["verdict"] == "fail"
    assert A.check_unbounded(0.30, 1.0, 100)["verdict"] == "fail"
    assert A.check_unbounded(0.0, 1.0, 100)["verdict"] == "pass"
    assert A.check_eps_monotone([(0.1, 0.5), (0.2, 0.7)], 100)["verdict"] == "fail"
    assert A.check_blackbox({"square": 0.2}, {"pgd": 0.5}, 100)["verdict"] == "fail"
    assert A.check_blackbox({"square": 0.5}, {"pgd": 0.4}, 100)["verdict"] == "pass"
    stats = {
        "ce": {"nan": 0.0, "zero": 0.0, "vanishing": 0.5, "median_norm": 1e-20},
        "margin": {"nan": 0.0, "zero": 0.0, "vanishing": 0.0, "median_norm": 1.0},
    }
    assert A.check_gradients(stats)["verdict"] == "fail"
    ok, text = A.headline([{"name": "x", "verdict": "pass"}], 0.5, [0.4, 0.6])
    assert ok and "all 1 audit checks pass" in text


def test_bad_arguments_give_clear_errors(teacher, test_set):
    m, _ = teacher
    with pytest.raises(ValueError, match="suite"):
        evaluate(m, test_set, eps=0.1, suite="thorough", device="cpu")
    with pytest.raises(ValueError, match="eps"):
        evaluate(m, test_set, eps=0.0, suite="quick", device="cpu")
    with pytest.raises(ValueError, match="norm"):
        evaluate(m, test_set, norm="l1", eps=0.1, suite="quick", device="cpu")
    with pytest.raises(TypeError, match="ImageDataset"):
        evaluate(m, (test_set.x, test_set.y), eps=0.1, suite="quick", device="cpu")


def _tiny(**kw):
    return SUITE_SPECS["quick"].__class__(**{**FAST.__dict__, **kw})


def _record_attack_outputs(monkeypatch) -> list:
    """Spy on the suite's attack runner: every (AttackRun, attack output) pair, output = x_adv or
    (robust, x_adv). Nothing is changed — the runner still judges and records as before."""
    from shieldkit.evaluation import runner

    seen: list = []
    run = runner.Runner.run

    def spy(self, name, family, attack, *args, **kwargs):
        box = {}

        def recorded():
            box["out"] = attack()
            return box["out"]

        r = run(self, name, family, recorded, *args, **kwargs)
        seen.append((r, box["out"]))
        return r

    monkeypatch.setattr(runner.Runner, "run", spy)
    return seen


def test_every_attack_family_runs_with_tiny_budgets(teacher, test_set, monkeypatch):
    """Smoke test of the standard/full code paths (Square, SPSA, HopSkipJump, transfer, latent,
    DataFreeShield-modified attacks with a teacher, restarts) at tiny budgets on 12 points."""
    m, _ = teacher
    seen = _record_attack_outputs(monkeypatch)
    spec = _tiny(
        pgd_steps=5,
        pgd_restarts=2,
        cw_steps=5,
        square_queries=30,
        spsa_iters=1,
        spsa_samples=8,
        hopskipjump=True,
        hsj_iter=1,
        hsj_eval=20,
        transfer_epochs=1,
        latent=True,
        iter_curve=(1, 5),
        unbounded_steps=10,
        aa_rand="never",
    )
    train = load_dataset("mnist5k", "train").subset(300, seed=0)
    res = evaluate(
        m,
        test_set,
        norm="linf",
        eps=0.05,  # small enough that some points survive the white-box attacks: black-box paths run
        suite="full",
        n=12,
        seed=1,
        device="cpu",
        teacher=m,
        train_data=train,
        spec=spec,
    )
    fams = {a["family"] for a in res["attacks"]}
    assert fams == {"clean", "white-box", "black-box", "transfer", "adaptive"}
    names = " ".join(a["name"] for a in res["attacks"])
    for part in (
        "square-30",
        "spsa-1",
        "hopskipjump",
        "transfer",
        "latent",
        "dfs-modified-pgd (c)",
        "×2 restarts",
    ):
        assert part in names
    # robust accuracy is the per-point worst case over the attacks at the nominal ε — recomputed here
    # from the adversarial examples alone, not from any attack's own success flags: each must lie in the
    # ε-ball and in [0, 1], and a point is robust iff no recorded example fools the model on it
    sub = test_set.subset(12, seed=1)
    worst = [(r, out) for r, out in seen if r.in_worst_case]
    assert {r.name for r, _ in worst} == {a["name"] for a in res["attacks"] if a["in_worst_case"]}
    robust = torch.ones(12, dtype=torch.bool)
    for r, out in worst:
        x_adv = (out[1] if isinstance(out, tuple) else out).detach().cpu()
        assert (x_adv - sub.x).abs().amax().item() <= 0.05 + 1e-5, r.name
        assert x_adv.min().item() >= -1e-6 and x_adv.max().item() <= 1.0 + 1e-6, r.name
        with torch.no_grad():
            correct = m(x_adv).argmax(1) == sub.y
        if not isinstance(out, tuple):  # the suite's judge, redone: robust iff still classified correctly
            assert r.robust.tolist() == correct.tolist(), r.name
        robust &= correct
    assert res["per_point_robust"] == robust.int().tolist()
    assert res["robust_acc"] == pytest.approx(robust.float().mean().item())
    assert 0 < robust.sum() < 12  # ε = 0.05 is in the interesting range: some points fall, some survive
    bb = [a for a in res["attacks"] if a["family"] == "black-box"]
    assert all(a["backwards"] == 0 and a["forwards"] > 0 for a in bb)  # black-box: queries only


def test_l2_threat_model_and_randomised_model_use_eot(teacher, test_set):
    m, _ = teacher

    class Noisy(nn.Module):  # a randomised defence: Gaussian input noise at test time
        def __init__(self):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m((x + 0.05 * torch.randn_like(x)).clamp(0, 1))

    res = evaluate(
        Noisy().eval(),
        test_set,
        norm="l2",
        eps=2.0,
        suite="quick",
        n=8,
        seed=0,
        device="cpu",
        eot_samples=2,
        spec=_tiny(iter_curve=(1, 5), aa_rand="never", unbounded_steps=10),
    )
    assert res["threat_model"] == "L2" and res["randomised"] and res["eot_samples"] == 2
    verdicts = {c["name"]: c["verdict"] for c in res["audit"]}
    assert verdicts["randomness"] == "warn"
    assert any("EOT" in n for n in res["notes"])


def test_cli_query_suite_breaks_teacher_with_budgets_and_report(teacher, tmp_path, monkeypatch):
    """`--suite query`: the five SQAs through the budget-enforcing oracle, in the evaluation schema."""
    from typer.testing import CliRunner

    import shieldkit.attacks.query.suite as qsuite
    from shieldkit.cli.main import app

    _, path = teacher
    m = load_model(path).eval()  # the file the CLI evaluates (the fixture's module may have run in train mode)
    runs: dict = {}  # spy: each attack's QueryResult, as the suite received it
    run_query_attack = qsuite.run_query_attack

    def spy(model, x, y, attack, *args, **kwargs):
        res = run_query_attack(model, x, y, attack, *args, **kwargs)
        runs[attack.name] = (x.cpu(), y.cpu(), res)
        return res

    monkeypatch.setattr(qsuite, "run_query_attack", spy)
    out = tmp_path / "q"
    r = CliRunner().invoke(app, ["evaluate", "--model", str(path), "--data", "mnist5k", "--eps", "0.2",
                                 "--suite", "query", "--budgets", "20,300", "--n", "12", "--out", str(out),
                                 "--device", "cpu"])
    assert r.exit_code == 0, r.output
    res = json.loads((out / "evaluation.json").read_text())
    assert res["suite"] == "query" and res["n"] == 12 and res["query_suite"]["budgets"] == [20, 300]
    names = {a["name"] for a in res["attacks"]}
    assert {f"{a}@{b}" for a in ("square", "simba_dct", "signhunter", "nes", "bandits") for b in (20, 300)} <= names
    at = {a["name"]: a for a in res["attacks"]}
    attacks = ("square", "simba_dct", "signhunter", "nes", "bandits")
    assert set(runs) == set(attacks)
    # checked independently of the attacks' own success bookkeeping: each returned x_adv lies in the
    # ε-ball and in [0, 1], no point spent more than the 300-query budget, and re-classifying x_adv with
    # the teacher reproduces each attack's robust accuracy at 300 queries and the per-point worst case
    robust = torch.ones(12, dtype=torch.bool)
    for name in attacks:
        x, y, r = runs[name]
        x_adv = r.x_adv.cpu()
        assert (x_adv - x).abs().amax().item() <= 0.2 + 1e-5, name
        assert x_adv.min().item() >= -1e-6 and x_adv.max().item() <= 1.0 + 1e-6, name
        assert int(r.queries.max()) <= 300, name
        with torch.no_grad():
            ok = (m(x).argmax(1) == y) & (m(x_adv).argmax(1) == y)
        assert at[f"{name}@300"]["acc"] == pytest.approx(ok.float().mean().item()), name
        robust &= ok
    assert res["per_point_robust"] == robust.int().tolist()
    assert res["robust_acc"] == pytest.approx(robust.float().mean().item())
    # the budget is really spent: 280 more queries break more points for some attacks
    assert any(at[f"{a}@300"]["acc"] < at[f"{a}@20"]["acc"] for a in attacks)
    assert res["robust_acc"] <= 0.25 < res["clean_acc"]  # a standard teacher falls to score-based attacks
    verdicts = {c["name"]: c["verdict"] for c in res["audit"]}
    assert verdicts["query-scope"] == "warn" and verdicts["logits_not_softmax"] == "pass"
    p = _Imgs()
    p.feed((out / "report.html").read_text())
    assert {i["alt"] for i in p.imgs} == {"accuracy_vs_queries"}
    r = CliRunner().invoke(app, ["evaluate", "--model", str(path), "--data", "mnist5k", "--suite", "query",
                                 "--budgets", "10,x", "--out", str(tmp_path / "bad")])
    assert r.exit_code != 0 and "--budgets" in r.output
