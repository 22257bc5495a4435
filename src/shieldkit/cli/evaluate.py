"""`shieldkit evaluate` — the full robustness evaluation with the obfuscated-gradient audit.

A thin layer over :func:`shieldkit.evaluation.suite.evaluate`: loads the model (safetensors +
sidecar), the test split of the dataset (and its training split, for the transfer attack's
substitute), runs the suite, prints the table and writes ``OUT/evaluation.json`` + ``OUT/report.html``.
"""

from __future__ import annotations

from pathlib import Path

import typer

from shieldkit.cli.common import EPS_HELP_DATA

PREPROCESSORS_HELP = (
    "non-differentiable input processing in front of the model, attacked with BPDA: "
    "'quantize:K' (round to K+1 grey levels)"
)


def make_preprocess(spec: str | None):  # noqa: ANN201
    """Parse ``--preprocess`` ('quantize:K') into a callable (None if not given)."""
    if not spec:
        return None
    name, _, arg = spec.partition(":")
    if name == "quantize":
        try:
            levels = int(arg or 4)
        except ValueError as exc:
            raise typer.BadParameter(f"quantize needs an integer number of levels, got {arg!r}") from exc
        if levels < 1:
            raise typer.BadParameter("quantize levels must be ≥ 1")

        def quantize(x):  # noqa: ANN001, ANN202
            import torch

            return torch.round(x * levels) / levels

        quantize.__name__ = f"quantize:{levels}"
        return quantize
    raise typer.BadParameter(f"unknown preprocess {spec!r}; available: quantize:K")


def register(app: typer.Typer) -> None:
    @app.command("evaluate")
    def evaluate_cmd(
        model: Path = typer.Option(
            ..., "--model", "-m", help="model: X, X.safetensors or X.json (weights + JSON sidecar)"
        ),
        data: str = typer.Option(..., "--data", "-d", help="dataset name (e.g. mnist5k)"),
        data_root: Path | None = typer.Option(None, "--data-root", help="local dataset directory"),
        norm: str = typer.Option("linf", "--norm", help="threat model: linf | l2"),
        eps: str | None = typer.Option(None, "--eps", help=EPS_HELP_DATA),
        suite: str = typer.Option("standard", "--suite", help="quick | standard | full | query (score-based SQAs)"),
        n: int = typer.Option(1000, "--n", help="number of test points (stratified seeded subset)"),
        seed: int = typer.Option(0, "--seed"),
        out: Path = typer.Option(Path("runs/evaluate"), "--out", "-o", help="output directory"),
        device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
        teacher: Path | None = typer.Option(
            None,
            "--teacher",
            help="teacher weights: enables DataFreeShield Table 21 modified attacks (b), (c)",
        ),
        preprocess: str | None = typer.Option(None, "--preprocess", help=PREPROCESSORS_HELP),
        eot_samples: int = typer.Option(
            10,
            "--eot-samples",
            help="EOT samples if randomness is detected (0 disables EOT; the audit then fails)",
        ),
        no_transfer: bool = typer.Option(
            False, "--no-transfer", help="skip the substitute-model transfer attack"
        ),
        batch_size: int = typer.Option(250, "--batch-size"),
        budgets: str = typer.Option("100,2500", "--budgets", help="query suite: comma-separated query budgets"),
    ) -> None:
        """Evaluate robustness honestly: white-box, black-box, transfer and adaptive attacks, the
        obfuscated-gradient audit, curves, confidence intervals; JSON + HTML report."""
        from shieldkit.cli.common import console, parse_budgets, resolve_threat_model
        from shieldkit.data import load_dataset
        from shieldkit.data import validate as dv
        from shieldkit.evaluation.suite import SUITES, evaluate
        from shieldkit.models import load_model
        from shieldkit.reporting.eval_report import print_table
        from shieldkit.utils import validate as v

        v.check_choice(suite, (*SUITES, "query"), "--suite")
        v.check_norm(norm)
        if eps is not None:
            v.check_eps(eps, norm)
        v.check_positive_int(n, "--n")
        v.check_positive_int(batch_size, "--batch-size")
        v.check_nonnegative_int(eot_samples, "--eot-samples")
        if suite == "query":
            parse_budgets(budgets)
        v.check_model_path(model, "--model")
        if teacher is not None:
            v.check_model_path(teacher, "--teacher")
        dv.check_dataset(data, data_root)
        v.check_out_dir(out)
        device = str(v.resolve_device(device))
        make_preprocess(preprocess)
        e = resolve_threat_model(eps, norm, model=model, data=data).eps
        m = load_model(model)
        t = load_model(teacher) if teacher is not None else None
        test = load_dataset(data, "test", root=data_root)
        v.check_model_fits_data(m, test, data_name=data)
        if suite == "query":
            from shieldkit.evaluation.query import evaluate_query

            res = evaluate_query(m, test, eps=e, norm=norm, n=n, seed=seed, budgets=parse_budgets(budgets),
                                 device=device, out=out)
        else:
            train = None
            if not no_transfer and suite != "quick":
                try:
                    train = load_dataset(data, "train", root=data_root)
                except (FileNotFoundError, ValueError, KeyError) as exc:
                    console.print(f"[yellow]no training split for the transfer attack: {exc}[/]")
            res = evaluate(m, test, norm=norm, eps=e, suite=suite, n=n, seed=seed, device=device,
                           teacher=t, out=out, preprocess=make_preprocess(preprocess), eot_samples=eot_samples,
                           train_data=train, batch_size=batch_size, verbose=True)
        print_table(res, console)
        console.print(f"wrote {out / 'evaluation.json'} and {out / 'report.html'}")
