"""`bds train` end to end on the tiny model; its adapter loads with peft."""

from __future__ import annotations

import json
from pathlib import Path

from peft import PeftModel
from typer.testing import CliRunner

from bds_core.cli import train_app
from bds_core.models import load_model

from .conftest import ToyData


def test_train_command_writes_a_loadable_adapter(toy_data: ToyData, tmp_path: Path) -> None:
    out = tmp_path / "cli-run"
    result = CliRunner().invoke(
        train_app,
        [
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
