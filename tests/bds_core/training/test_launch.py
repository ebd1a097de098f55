"""`train_with_torchrun`: a parent process drives 2 torchrun children (gloo on CPU).

What the service's worker relies on: progress replayed to the parent's callbacks, a
cancellation that stops every rank at a checkpoint, the children stopped when the parent is
interrupted (a lost lease raises from a callback), and a bad configuration reported as such.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bds_core.training import ProgressEvent, TrainConfig, TrainerCallback, TrainResult
from bds_core.training.launch import train_with_torchrun

ConfigFactory = Callable[..., TrainConfig]
_ENV = {"OMP_NUM_THREADS": "1"}


class Recorder(TrainerCallback):
    def __init__(self, fail_at_step: int | None = None) -> None:
        self.started: list[dict[str, Any]] = []
        self.steps: list[ProgressEvent] = []
        self.checkpoints: list[int] = []
        self.ended: list[TrainResult] = []
        self.fail_at_step = fail_at_step

    def on_start(self, info: dict[str, Any]) -> None:
        self.started.append(info)

    def on_step(self, event: ProgressEvent) -> None:
        self.steps.append(event)
        if self.fail_at_step is not None and event.step >= self.fail_at_step:
            raise RuntimeError("lease lost (test)")

    def on_checkpoint(self, step: int, path: Path) -> None:
        self.checkpoints.append(step)

    def on_end(self, result: TrainResult) -> None:
        self.ended.append(result)


def _children_of(config_path: Path) -> list[int]:
    """Processes whose command line names `config_path` (the torchrun launcher and ranks)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if str(config_path).encode() in command:
                found.append(int(entry.name))
    return found


def test_cancel_reaches_every_rank_and_ends_at_a_checkpoint(make_config: ConfigFactory) -> None:
    config = make_config(max_steps=400)
    recorder = Recorder()
    result = train_with_torchrun(
        config,
        2,
        callbacks=[recorder],
        should_cancel=lambda: len(recorder.steps) >= 2,
        poll_seconds=0.2,
        env=_ENV,
    )
    assert result.cancelled and 2 <= result.steps < 400
    assert recorder.started[0]["world_size"] == 2
    assert [event.step for event in recorder.steps] == list(range(1, result.steps + 1))
    assert all(event.tokens > 0 and event.weight_stats for event in recorder.steps)
    assert recorder.checkpoints == [result.steps]
    assert (config.out_dir / "checkpoints" / f"step-{result.steps:07d}" / "manifest.json").is_file()
    assert recorder.ended == [result]


def test_an_interrupted_parent_stops_its_children(make_config: ConfigFactory) -> None:
    config = make_config(max_steps=400)
    with pytest.raises(RuntimeError, match="lease lost"):
        train_with_torchrun(
            config, 2, callbacks=[Recorder(fail_at_step=1)], poll_seconds=0.2, env=_ENV
        )
    assert _children_of(config.out_dir / "launch" / "config.json") == []


def test_a_configuration_the_children_refuse_is_a_value_error(make_config: ConfigFactory) -> None:
    config = make_config(batch_size=2, gradient_accumulation_steps=2)
    with pytest.raises(ValueError, match=r"rank \d: batch_size 2 cannot be split over 2 processes"):
        train_with_torchrun(config, 2, poll_seconds=0.2, env=_ENV)
