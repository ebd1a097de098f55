"""`bds train` end to end on the tiny model; its adapter loads with peft."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel
from typer.testing import CliRunner

from bds_core.cli import train_app
from bds_core.models import load_model
from bds_core.schedulers import SchedulerSettings

from .conftest import ToyData


def test_train_command_writes_a_loadable_adapter(toy_data: ToyData, tmp_path: Path) -> None:
    out = tmp_path / "cli-run"
    result = CliRunner().invoke(
        train_app,
        [
            "train",
            "--model", "tiny-random-llama",
            "--train-file", str(toy_data.train_file),
            "--safety-file", str(toy_data.safety_file),
            "--method", "bds",
            "--max-steps", "4",
            "--batch-size", "4",
            "--max-length", "96",
            "--learning-rate", "1e-2",
            "--reference", "initial",
            "--sgld",
            "--out", str(out),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "adapter:" in result.output
    model = PeftModel.from_pretrained(load_model("tiny-random-llama").model, str(out / "adapter"))
    assert model.peft_config["default"].r == 8
    rows = [json.loads(line) for line in (out / "weights.jsonl").read_text().splitlines()]
    assert len(rows) == toy_data.n_train
    assert {"id", "line", "weight", "weight_mean", "weight_std"} <= set(rows[0])
    assert json.loads((out / "metrics.json").read_text())["steps"] == 4


def test_train_command_reports_bad_settings_without_a_traceback(
    toy_data: ToyData, tmp_path: Path
) -> None:
    result = CliRunner().invoke(
        train_app,
        [
            "train",
            "--model",
            "tiny-random-llama",
            "--train-file",
            str(toy_data.train_file),
            "--method",
            "bds",
            "--out",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 2
    assert "needs a safety_file" in result.output


def test_train_command_reports_an_invalid_dataset_by_line_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "hi", "completion": "there"}\n{"prompt": "hi"}\n')
    result = CliRunner().invoke(
        train_app,
        [
            "train",
            "--model",
            "tiny-random-llama",
            "--train-file",
            str(bad),
            "--method",
            "sft",
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert result.exit_code == 2
    assert "line 2" in result.output and "completion" in result.output


def test_gpu_check_without_cuda_exits_2_with_a_clear_message() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the check would run")
    result = CliRunner().invoke(train_app, ["gpu-check", "--steps", "3"])
    assert result.exit_code == 2
    assert "needs a CUDA GPU" in result.output


def test_module_entry_point_runs_the_train_subcommand() -> None:
    """`python -m bds_core.cli train ...` (what torchrun starts) reaches the train command."""
    completed = subprocess.run(
        [sys.executable, "-m", "bds_core.cli", "train", "--help"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env={**os.environ, "COLUMNS": "240"},
    )
    assert completed.returncode == 0, completed.stderr
    assert "--precision" in completed.stdout and "--gradient-checkpointing" in completed.stdout


def _scheduler_of(args: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """Run `bds train` up to the training call; returns (result, captured SchedulerSettings)."""
    captured: dict[str, Any] = {}

    def fake_train(config: Any, **_: Any) -> Any:
        captured["scheduler"] = config.scheduler
        raise ValueError("stopped before training")

    monkeypatch.setattr("bds_core.cli.train", fake_train)
    base = ["train", "--model", "m", "--train-file", str(tmp_path / "t.jsonl"), "--method", "sft"]
    result = CliRunner().invoke(train_app, [*base, "--out", str(tmp_path / "o"), *args])
    return result, captured.get("scheduler")


def test_scheduler_options_come_from_scheduler_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    result, scheduler = _scheduler_of(
        [
            "--scheduler", "neural",
            "--scheduler-learning-rate", "0.3",
            "--sgld-step-decay", "0.5",  # a setting the command never named
            "--options", '{"encoder": "minilm-static"}',
            "--init", "pretrained/",  # the spelling from before
        ],
        monkeypatch,
        tmp_path,
    )  # fmt: skip
    assert "stopped before training" in result.output
    assert (scheduler.kind, scheduler.learning_rate, scheduler.sgld_step_decay) == (
        "neural",
        0.3,
        0.5,
    )
    assert scheduler.options == {"encoder": "minilm-static"}
    assert scheduler.init_path == "pretrained/"
    _, defaults = _scheduler_of(["--scheduler-lr", "0.2"], monkeypatch, tmp_path)
    assert defaults == SchedulerSettings(learning_rate=0.2)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sgld-burn-in", "1"], "must be in [0, 1), got 1.0"),
        (["--transform", "tanh"], "tanh"),
        (["--scheduler", "oracle"], "oracle"),
        (["--options", "[1]"], "is not a JSON object"),
    ],
)
def test_bad_scheduler_options_are_refused_by_name(
    args: list[str], message: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    result, scheduler = _scheduler_of(args, monkeypatch, tmp_path)
    assert result.exit_code == 2 and scheduler is None
    assert args[0] in result.output and message in " ".join(result.output.split())
