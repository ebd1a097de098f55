"""`bds bench speed` on the tiny random model: every method is measured, alternating."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from typer.testing import CliRunner

from bds_core.bench.cli import bench_app
from bds_core.bench.speed import SpeedConfig, run_speed
from bds_core.schedulers import SchedulerSettings


def write_toy_data(folder: Path) -> SimpleNamespace:
    """Customer and alignment files of a few short chats."""

    def chat(prompt: str, answer: str) -> str:
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
        return json.dumps({"messages": messages})

    train = [chat(f"Say okay to item {i}.", "Okay." * (1 + i % 3)) for i in range(12)]
    safety = [chat(f"Harmful request {j}?", "No, I refuse.") for j in range(4)]
    train_file, safety_file = folder / "train.jsonl", folder / "safety.jsonl"
    train_file.write_text("\n".join(train) + "\n")
    safety_file.write_text("\n".join(safety) + "\n")
    return SimpleNamespace(train_file=train_file, safety_file=safety_file)


def test_speed_measures_each_method_in_turns_with_a_bds_breakdown(tmp_path: Path) -> None:
    data = write_toy_data(tmp_path)
    config = SpeedConfig(
        train_file=data.train_file,
        safety_file=data.safety_file,
        out_dir=tmp_path / "work",
        model="tiny-random-llama",
        steps=3,
        warmup=1,
        memory_steps=1,
        batch_size=4,
        safety_batch_size=2,
        scheduler=SchedulerSettings(kind="scalar", reference="none", loss_timing="before"),
    )
    order: list[tuple[int, str]] = []
    report = run_speed(config, on_step=lambda r, m, s, timed: order.append((r, m)))
    # Every round runs every method once, in a rotating order.
    assert [m for r, m in order if r == 0] == ["sft", "mix", "bds"]
    assert [m for r, m in order if r == 1] == ["mix", "bds", "sft"]
    for name in ("sft", "mix", "bds"):
        speed = report.methods[name]
        assert len(speed.step_seconds) == 3 and speed.tokens > 0
        assert speed.peak_training_rss_mb is not None and speed.peak_training_rss_mb > 0
    # mix and bds train on 4 + 2 rows a step, sft on 4.
    assert report.methods["mix"].tokens == report.methods["bds"].tokens
    assert report.methods["bds"].tokens > report.methods["sft"].tokens
    breakdown = report.methods["bds"].breakdown()
    assert {"model_passes", "model_update", "scheduler_update", "other"} <= set(breakdown)
    assert "loss_after" not in breakdown  # `before` reuses the step's own losses
    assert sum(breakdown.values()) >= report.methods["bds"].seconds_per_step * 0.999
    assert report.ratio("sft", "time") == 1.0
    assert report.to_dict()["methods"]["bds"]["time_x_sft"] is not None
    assert "bds step breakdown" in report.to_markdown()


def test_speed_command_writes_json_and_markdown(tmp_path: Path) -> None:
    data = write_toy_data(tmp_path)
    out = tmp_path / "speed"
    result = CliRunner().invoke(
        bench_app,
        [
            "speed", "--model", "tiny-random-llama",
            "--train-file", str(data.train_file), "--safety-file", str(data.safety_file),
            "--steps", "2", "--memory-steps", "0", "--batch-size", "4",
            "--loss-timing", "after", "--out", str(out),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    document = json.loads((out / "speed.json").read_text())
    assert set(document["methods"]) == {"sft", "mix", "bds"}
    # No --safety-batch-size: the library's default budget, a quarter of the batch of 4.
    assert document["config"]["safety_batch_size"] is None
    assert document["config"]["resolved_safety_batch_size"] == 1
    # `after` (asked for; the default is `before`) times the extra pass.
    assert document["config"]["scheduler"]["loss_timing"] == "after"
    assert document["methods"]["bds"]["breakdown"]["loss_after"] > 0
    assert document["command"].startswith("bds bench speed")
    assert (out / "speed.md").read_text().startswith("| method")
