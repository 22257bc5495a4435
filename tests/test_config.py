"""YAML configs: presets build the real API configs, flags override files, typos are errors, run
metadata is written, TensorBoard logging works when asked for."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import pytest
import typer
import yaml
from typer.testing import CliRunner

from shieldkit.config import (
    ConfigError,
    TensorBoardLogger,
    config_option,
    explicit_params,
    list_presets,
    load_config,
    resolved_config,
    save_run_metadata,
    shield_config,
    stage_config,
)
from shieldkit.synthesis import SynthesisConfig
from shieldkit.training.robust import RobustTrainConfig

PAPER = ["paper/cifar10-resnet20-linf4", "paper/cifar10-wrn28_10-linf4", "paper/svhn-resnet20-linf4",
         "paper/medmnist-resnet18-linf8"]


@pytest.mark.parametrize("name", PAPER)
def test_paper_presets_build_the_api_configs(name):
    assert name in list_presets()
    cfg = shield_config(load_config(name))
    eps = 8 / 255 if "linf8" in name else 4 / 255
    assert cfg.training.eps == pytest.approx(eps) and cfg.training.attack_alpha == pytest.approx(eps / 4)
    assert (cfg.training.attack_steps, cfg.training.lr, cfg.training.momentum) == (10, 1e-4, 0.9)  # App. A.3
    assert cfg.training.grad_refine_batches in (10, 20) and cfg.training.tau == 0.5
    assert cfg.synthesis.batch_size == 200 and cfg.synthesis.lr == 0.1  # App. A.2
    medical = "medmnist" in name
    assert cfg.synthesis.iterations == (1000 if medical else 2000)
    assert cfg.synthesis.n_samples == (10_000 if medical else 60_000)
    assert cfg.training.epochs == (100 if "wrn" in name else 200)


def test_typos_and_bad_values_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown RobustTrainConfig setting 'grad_refine_batch'.*mean 'grad_refine_b"):
        stage_config(RobustTrainConfig, {"grad_refine_batch": 4}, where="training")
    with pytest.raises(ConfigError,
                       match="invalid SynthesisConfig settings: coefficients random: must be one of dss, fixed"):
        stage_config(SynthesisConfig, {"coefficients": "random"})
    (tmp_path / "bad.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="no such file or preset; presets: paper/"):
        load_config("paper/nope")
    with pytest.raises(ConfigError, match="unknown config sections"):
        shield_config({"trainning": {}})


def test_flags_override_the_file():
    cfg = stage_config(RobustTrainConfig, {"eps": "8/255", "epochs": 5}, {"epochs": 7})
    assert cfg.eps == pytest.approx(8 / 255) and cfg.epochs == 7


def _app(seen: dict) -> typer.Typer:
    app = typer.Typer()

    @app.command("synthesize")
    def synthesize(ctx: typer.Context, config: Annotated[Path | None, config_option()] = None, n_samples: int = 2000,
                   iterations: int = 200, seed: int = 0) -> None:
        seen.update(params=dict(ctx.params), explicit=explicit_params(ctx), resolved=resolved_config(ctx))

    @app.command("other")
    def other() -> None:  # a second command so typer keeps sub-command names
        pass

    return app


def test_cli_config_sets_defaults_and_flags_win(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump({"seed": 3, "synthesis": {"n_samples": 50, "iterations": 9, "lr": 0.2},
                                 "training": {"epochs": 4}}))
    seen: dict = {}
    res = CliRunner().invoke(_app(seen), ["synthesize", "--config", str(f), "--iterations", "11"])
    assert res.exit_code == 0, res.output
    assert (seen["params"]["n_samples"], seen["params"]["iterations"], seen["params"]["seed"]) == (50, 11, 3)
    assert seen["explicit"] == {"iterations": 11}
    assert seen["resolved"]["sources"] == {"config": "commandline", "n_samples": "config", "iterations": "commandline",
                                           "seed": "config"}
    assert seen["resolved"]["config_file"]["unused"] == ["synthesis.lr"]  # reported, not silently dropped


def test_cli_config_rejects_options_the_command_lacks(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("epochs: 3\n")
    res = CliRunner().invoke(_app({}), ["synthesize", "--config", str(f)])
    assert res.exit_code != 0 and "has no option for epochs" in res.output


def test_run_metadata_and_tensorboard(tmp_path):
    cfg = shield_config(load_config("paper/cifar10-resnet20-linf4"))
    path = save_run_metadata(tmp_path / "run", cfg, seed=0)
    meta = json.loads(path.read_text())
    assert meta["seed"] == 0 and meta["config"]["training"]["grad_refine_batches"] == 20
    assert "torch" in meta["packages"] and "git_revision" in meta
    again = shield_config(yaml.safe_load((tmp_path / "run" / "config.yaml").read_text()))
    assert again == cfg  # config.yaml re-creates the run's configuration
    tb = TensorBoardLogger(tmp_path / "tb")
    tb.scalars(1, loss=0.5)
    tb.log_history({"loss": [1.0, 0.8], "epoch_seconds": []})
    tb.close()
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_wrapped_validator_error_keeps_its_fix_line():
    """A value the section's own validator refuses (InputError with a hint) is re-raised as a ConfigError
    naming the section; the validator's fix line must survive the wrapping, since the CLI prints it."""
    from shieldkit.pipeline import EvalConfig

    with pytest.raises(ConfigError, match="invalid EvalConfig settings: evaluation.eps_curve") as info:
        stage_config(EvalConfig, {"eps_curve": [0, 1]}, where="evaluation")
    assert info.value.hint == "e.g. eps_curve: [0.5, 1.0, 1.5, 2.0]"
    assert info.value.lines()[-1] == "fix: e.g. eps_curve: [0.5, 1.0, 1.5, 2.0]"
