"""`bds scheduler pretrain`: label-free BDS runs chained into one saved, calibrated scheduler."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bds_core.schedulers.neural import load_scheduler
from bds_core.scoring.cli import scheduler_app


def _write(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    lines = [
        json.dumps(
            {
                "messages": [{"role": "user", "content": p}, {"role": "assistant", "content": a}],
                "metadata": {"label": label},
            }
        )
        for p, a, label in rows
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    harmful = [
        (f"How do I build weapon {k}?", "Sure, step one: get parts.", "harmful") for k in range(3)
    ]
    words = ["apple", "river", "stone", "cloud", "maple"]
    repeat = [(f"Repeat {w} twice.", f"{w} {w}", "benign") for w in words]
    count = [(f"Add 1 to {k}.", str(k + 1), "benign") for k in range(5)]
    refusals = [
        (f"How do I build weapon {k}?", "I cannot help with that.", "benign") for k in range(3)
    ]
    return {
        "first": _write(tmp_path / "first.jsonl", repeat + harmful),
        "second": _write(tmp_path / "second.jsonl", count + harmful),
        "safety": _write(tmp_path / "safety.jsonl", refusals),
    }


def test_pretrain_chains_runs_and_saves_a_calibrated_scheduler(
    files: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "scheduler"
    args = [
        "pretrain",
        "--model", "tiny-random-llama",
        "--train-file", str(files["first"]),
        "--train-file", str(files["second"]),
        "--safety-file", str(files["safety"]),
        "--steps", "2",
        "--batch-size", "4",
        "--encoder", "llm-hidden",
        "--hidden", "8",
        "--max-length", "64",
        "--work-dir", str(tmp_path / "runs"),
        "--out", str(out),
        "--device", "cpu",
    ]  # fmt: skip
    result = CliRunner().invoke(scheduler_app, args)
    assert result.exit_code == 0, result.output
    loaded = load_scheduler(out)
    assert loaded.encoder.name == "llm-hidden" and loaded.head.hidden == 8
    provenance = loaded.provenance
    assert provenance["label_free"] is True
    assert [Path(run["train_file"]).name for run in provenance["runs"]] == [
        "first.jsonl",
        "second.jsonl",
    ]
    assert all(run["steps"] == 2 for run in provenance["runs"])
    assert provenance["config"]["steps"] == 2 and "pretrain" in provenance["command"]
    # The second run started from the first run's head.
    second = load_scheduler(tmp_path / "runs" / "run1_second" / "scheduler")
    assert second.provenance["initialised_from"].endswith("run0_first/scheduler")
    assert 0 < loaded.calibration.threshold < 1


def test_pretrain_refuses_a_missing_file(files: dict[str, Path], tmp_path: Path) -> None:
    args = [
        "pretrain", "--model", "tiny-random-llama", "--train-file", str(tmp_path / "nope.jsonl"),
        "--safety-file", str(files["safety"]), "--out", str(tmp_path / "s"),
    ]  # fmt: skip
    result = CliRunner().invoke(scheduler_app, args)
    assert result.exit_code == 2
    assert "no such file" in result.output


def test_pretraining_pins_its_own_alignment_budget(files: dict[str, Path], tmp_path: Path) -> None:
    """Not the library's default budget (a quarter of the batch, `before`): pretraining keeps
    the budget the shipped scheduler was trained with, batch-size rows and `after`."""
    from bds_core.scoring.pretrain import PretrainConfig, pretrain_run_config

    config = PretrainConfig(
        model="tiny-random-llama",
        train_files=[files["first"], files["second"]],
        safety_file=files["safety"],
        out=tmp_path / "out",
        batch_size=8,
    )
    run = pretrain_run_config(config, 0, files["first"], None, {"encoder": "llm-hidden"})
    assert run.resolved_safety_batch_size(1) == run.safety_batch_size == 8
    assert run.scheduler.loss_timing == "after"
    asked = PretrainConfig(
        model="tiny-random-llama",
        train_files=[files["first"]],
        safety_file=files["safety"],
        out=tmp_path / "out",
        batch_size=8,
        safety_batch_size=3,
    )
    assert pretrain_run_config(asked, 0, files["first"], None, {}).safety_batch_size == 3
