"""The ``mot-neuro`` command line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers import EXPERIMENT, run_cli

from mot_neuro.cli import main


def test_describe_reports_equal_flops_and_tripled_parameters(capsys):
    args = ["describe", "--modalities", "gene=6", "brain=8", "behaviour=4", "--dim", "32", "--heads", "4"]
    assert main([*args, "--layers", "2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    dense, mot = report["variants"]
    assert (dense["variant"], mot["variant"]) == ("dense", "mot")
    assert mot["training_flops_per_token"] == dense["training_flops_per_token"] > 0
    assert mot["params_total"] == 3 * dense["params_total"]
    assert report["layout"] == {"gene": 6, "brain": 8, "behaviour": 4}


def test_describe_ffn_only_untying(capsys):
    assert (
        main(["describe", "--modalities", "a=4", "b=4", "--dim", "16", "--heads", "2", "--untie", "ffn", "--json"]) == 0
    )
    dense, mot = json.loads(capsys.readouterr().out)["variants"]
    assert mot["untie"] == ["ffn"]
    assert dense["params_total"] < mot["params_total"] < 2 * dense["params_total"]


@pytest.mark.slow  # a process of its own
def test_bad_configuration_is_one_line_without_traceback():
    proc = subprocess.run(
        [sys.executable, "-m", "mot_neuro.cli", "describe", "--dim", "30"], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "dim=30 is not divisible by n_heads=8" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow  # a process of its own
def test_bad_layout_argument_names_the_value():
    proc = subprocess.run(
        [sys.executable, "-m", "mot_neuro.cli", "describe", "--modalities", "gene=lots"], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "gene=lots" in proc.stderr


@pytest.mark.slow  # fits the demo experiment
def test_progress_bar_can_be_turned_off_although_the_trainer_config_lists_one(workdir):
    """configs/trainer/cpu.yaml lists a RichProgressBar; Lightning refuses it with enable_progress_bar false."""
    cli = run_cli(
        *("fit", "--config", EXPERIMENT, "--trainer.max_epochs", "1", "--test_after_fit", "false"),
        *("--trainer.enable_progress_bar", "false"),
    )
    assert cli.trainer.state.finished and cli.trainer.progress_bar_callback is None
