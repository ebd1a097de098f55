"""`train_with_torchrun`: a parent process drives 2 torchrun children (gloo on CPU).

What the service's worker relies on: progress replayed to the parent's callbacks, a
cancellation that stops every rank at a checkpoint, the children stopped when the parent is
interrupted (a lost lease raises from a callback), and a bad configuration reported as such.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bds_core.training import ProgressEvent, TrainConfig, TrainerCallback, TrainResult
from bds_core.training.checkpoint import latest_valid_checkpoint
from bds_core.training.launch import process_alive, train_with_torchrun

ConfigFactory = Callable[..., TrainConfig]
pytestmark = pytest.mark.slow
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


def test_data_the_children_refuse_is_a_value_error(make_config: ConfigFactory) -> None:
    config = make_config()
    config.train_file.write_text('{"prompt": "hi", "completion": "there"}\n{"prompt": "hi"}\n')
    with pytest.raises(ValueError, match=r"(?s)rank \d: .*not a valid training file.*line 2"):
        train_with_torchrun(config, 2, poll_seconds=0.2, env=_ENV)


def test_a_batch_too_small_to_split_is_refused_before_any_process_starts(
    make_config: ConfigFactory,
) -> None:
    config = make_config(batch_size=2, gradient_accumulation_steps=2)
    with pytest.raises(ValueError, match=r"batch_size 2 cannot be split over 2 processes"):
        train_with_torchrun(config, 2, env=_ENV)
    assert not (config.out_dir / "launch").exists()


PARENT = """
import json, sys
from bds_core.training import TrainConfig
from bds_core.training.launch import train_with_torchrun
config = TrainConfig.from_dict(json.loads(sys.argv[1]))
train_with_torchrun(config, 2, poll_seconds=0.2, env={"OMP_NUM_THREADS": "1"})
"""


def _wait_until(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {seconds} s")
        time.sleep(0.2)


def test_children_of_a_killed_parent_stop_at_a_checkpoint(make_config: ConfigFactory) -> None:
    """A SIGKILLed worker cannot stop its children; they notice and stop by themselves, so
    they never train on after the job's lease lapses and another worker resumes it."""
    config = make_config(max_steps=5000)
    parent = subprocess.Popen([sys.executable, "-c", PARENT, json.dumps(config.to_dict())])
    events = config.out_dir / "launch" / "events.jsonl"
    try:
        _wait_until(
            lambda: events.is_file() and '"event": "step"' in events.read_text(),
            240,
            "a first step",
        )
    finally:
        parent.kill()
        parent.wait()
    _wait_until(
        lambda: _children_of(config.out_dir / "launch" / "config.json") == [],
        120,
        "the children's exit",
    )
    checkpoint = latest_valid_checkpoint(config.out_dir / "checkpoints")
    assert checkpoint is not None
    assert 1 <= int(checkpoint.name.removeprefix("step-")) < 5000


def test_process_alive_tells_a_finished_process_from_a_running_one() -> None:
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    assert not process_alive(finished.pid)
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert process_alive(running.pid)
    finally:
        running.kill()
        running.wait()
