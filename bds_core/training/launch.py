"""One training job on several GPUs: torchrun child processes, driven from a parent process.

The parent (a service worker, a script) calls `train_with_torchrun(config, nproc, ...)`. It
starts ``python -m torch.distributed.run --standalone --nproc-per-node N -m
bds_core.training.launch ...`` in a new process group and stays responsive while the children
train: it replays their progress to its own callbacks, asks its `should_cancel` between polls
and passes a cancellation on, and stops the children if it is interrupted itself (a lost
lease, a raised callback). It returns the same `TrainResult` as `train`.

The two sides talk through files in ``OUT/launch/``: ``config.json`` (the TrainConfig),
``events.jsonl`` (rank 0 appends one JSON object per callback: start, resume, step,
checkpoint, end; any rank appends an error), ``cancel`` (created by the parent; every rank
looks for it before each step and the ranks agree to stop together) and ``torchrun.log``
(the children's output, quoted when they fail). The children also stop, at a checkpoint, when
the parent process is gone (killed with SIGKILL, say), so that they never train on after the
job's lease has lapsed and another worker has taken it over.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bds_core.training.callbacks import ProgressEvent, TrainerCallback
from bds_core.training.config import TrainConfig
from bds_core.training.outputs import TrainResult

LAUNCH_DIR = "launch"
CONFIG_FILE = "config.json"
EVENTS_FILE = "events.jsonl"
CANCEL_FILE = "cancel"
LOG_FILE = "torchrun.log"
_STOP_GRACE_S = 30.0
_LOG_TAIL_LINES = 30


class DistributedLaunchError(RuntimeError):
    """The torchrun children failed; the message quotes their error or their log's tail."""


def visible_gpu_count() -> int:
    """CUDA devices this process can use (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def torchrun_command(nproc: int, arguments: Sequence[str]) -> list[str]:
    """The command that runs this module's `main` on `nproc` local processes.

    ``--standalone`` gives every launch its own rendezvous on a free port, so several jobs
    can run on one host.
    """
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nnodes=1",
        f"--nproc-per-node={nproc}",
        "-m",
        "bds_core.training.launch",
        *arguments,
    ]


# --------------------------------------------------------------------------------- parent
def train_with_torchrun(
    config: TrainConfig,
    nproc: int,
    callbacks: Sequence[TrainerCallback] = (),
    should_cancel: Callable[[], bool] | None = None,
    resume: bool = True,
    poll_seconds: float = 1.0,
    env: dict[str, str] | None = None,
) -> TrainResult:
    """Train `config` data-parallel on `nproc` local processes (one per GPU) under torchrun.

    Callbacks see the run as they would in-process (replayed from rank 0's events, at most
    `poll_seconds` late); `should_cancel` is asked every `poll_seconds`. Raises ValueError
    when the children refuse the configuration or data, DistributedLaunchError when they fail
    otherwise. If this function is interrupted (an exception from a callback or from
    `should_cancel`), the children are stopped before it returns.
    """
    if nproc < 1:
        raise ValueError(f"nproc must be at least 1, got {nproc}")
    config.check_split(nproc)  # before any process starts
    control = config.out_dir / LAUNCH_DIR
    control.mkdir(parents=True, exist_ok=True)
    for name in (EVENTS_FILE, CANCEL_FILE):
        (control / name).unlink(missing_ok=True)
    config_path = control / CONFIG_FILE
    config_path.write_text(json.dumps(config.to_dict(), indent=2, default=str))
    events_path = control / EVENTS_FILE
    events_path.touch()
    cancel_path = control / CANCEL_FILE
    arguments = [
        "--config",
        str(config_path),
        "--events",
        str(events_path),
        "--cancel-file",
        str(cancel_path),
        "--parent-pid",
        str(os.getpid()),
    ]
    if not resume:
        arguments.append("--fresh")
    cancel = should_cancel or (lambda: False)
    log_path = control / LOG_FILE
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            torchrun_command(nproc, arguments),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
    try:
        reader = _EventReader(events_path)
        result: TrainResult | None = None
        errors: list[dict[str, Any]] = []
        cancel_sent = False
        while True:
            exited = _wait(process, poll_seconds)
            for event in reader.read_new():
                result = _dispatch(event, callbacks, errors) or result
            if exited:
                break
            if not cancel_sent and cancel():
                cancel_path.touch()
                cancel_sent = True
        if process.returncode != 0 or result is None:
            raise _launch_failure(nproc, process.returncode, errors, log_path)
        return result
    finally:
        if process.poll() is None:
            _stop(process)


def _wait(process: subprocess.Popen[bytes], seconds: float) -> bool:
    try:
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        return False
    return True


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the launcher's process group (torchrun passes it on), then SIGKILL it."""
    for sig, grace in ((signal.SIGTERM, _STOP_GRACE_S), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def _launch_failure(
    nproc: int, returncode: int | None, errors: list[dict[str, Any]], log_path: Path
) -> Exception:
    if errors:
        first = errors[0]
        message = f"rank {first.get('rank')}: {first.get('message')}"
        if first.get("invalid"):
            return ValueError(message)
        return DistributedLaunchError(f"{first.get('type', 'Error')} on {message}")
    tail = log_path.read_text(errors="replace").splitlines()[-_LOG_TAIL_LINES:]
    return DistributedLaunchError(
        f"torchrun with {nproc} processes exited with status {returncode} without a result; "
        f"last lines of {log_path}:\n" + "\n".join(tail)
    )


class _EventReader:
    """Reads the complete lines appended to the events file since the last call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""

    def read_new(self) -> list[dict[str, Any]]:
        with self.path.open("rb") as handle:
            handle.seek(self.offset)
            data = handle.read()
        self.offset += len(data)
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        return [json.loads(line) for line in lines if line.strip()]


def _dispatch(
    event: dict[str, Any], callbacks: Sequence[TrainerCallback], errors: list[dict[str, Any]]
) -> TrainResult | None:
    kind = event.get("event")
    if kind == "start":
        for callback in callbacks:
            callback.on_start(event["info"])
    elif kind == "resume":
        for callback in callbacks:
            callback.on_resume(int(event["step"]), Path(event["path"]))
    elif kind == "step":
        progress = ProgressEvent(**event["progress"])
        for callback in callbacks:
            callback.on_step(progress)
    elif kind == "checkpoint":
        for callback in callbacks:
            callback.on_checkpoint(int(event["step"]), Path(event["path"]))
    elif kind == "end":
        result = _result_from_dict(event["result"])
        for callback in callbacks:
            callback.on_end(result)
        return result
    elif kind == "error":
        errors.append(event)
    return None


def _result_to_dict(result: TrainResult) -> dict[str, Any]:
    def path(value: Path | None) -> str | None:
        return str(value) if value is not None else None

    return {
        "out_dir": str(result.out_dir),
        "adapter_dir": path(result.adapter_dir),
        "weights_file": path(result.weights_file),
        "metrics_file": path(result.metrics_file),
        "metrics": result.metrics,
        "steps": result.steps,
        "cancelled": result.cancelled,
        "resumed_from_step": result.resumed_from_step,
        "world_size": result.world_size,
    }


def _result_from_dict(data: dict[str, Any]) -> TrainResult:
    def path(value: str | None) -> Path | None:
        return Path(value) if value is not None else None

    return TrainResult(
        out_dir=Path(data["out_dir"]),
        adapter_dir=path(data["adapter_dir"]),
        weights_file=path(data["weights_file"]),
        metrics_file=path(data["metrics_file"]),
        metrics=data["metrics"],
        steps=int(data["steps"]),
        cancelled=bool(data["cancelled"]),
        resumed_from_step=data["resumed_from_step"],
        world_size=int(data["world_size"]),
    )


# --------------------------------------------------------------------------------- children
def process_alive(pid: int) -> bool:
    """Whether a process with this id exists (and is not a zombie awaiting its parent)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def _append_event(path: Path, event: dict[str, Any]) -> None:
    """Append one JSON line; a single write of a short line, flushed at once."""
    line = (json.dumps(event, default=str) + "\n").encode()
    with path.open("ab") as handle:
        handle.write(line)
        handle.flush()


class EventFileWriter(TrainerCallback):
    """Trainer callback of a child: every hook becomes a line of the events file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_start(self, info: dict[str, Any]) -> None:
        _append_event(self.path, {"event": "start", "info": info})

    def on_resume(self, step: int, path: Path) -> None:
        _append_event(self.path, {"event": "resume", "step": step, "path": str(path)})

    def on_step(self, event: ProgressEvent) -> None:
        progress = {k: v for k, v in event.to_dict().items() if k != "percent"}
        _append_event(self.path, {"event": "step", "progress": progress})

    def on_checkpoint(self, step: int, path: Path) -> None:
        _append_event(self.path, {"event": "checkpoint", "step": step, "path": str(path)})

    def on_end(self, result: TrainResult) -> None:
        _append_event(self.path, {"event": "end", "result": _result_to_dict(result)})


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of each torchrun child: train the config, report through the files."""
    from bds_core.training.trainer import train

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--config", type=Path, required=True, help="TrainConfig as JSON")
    parser.add_argument("--events", type=Path, required=True, help="events file to append to")
    parser.add_argument("--cancel-file", type=Path, required=True, help="stop when it exists")
    parser.add_argument("--fresh", action="store_true", help="ignore existing checkpoints")
    parser.add_argument(
        "--parent-pid", type=int, default=None, help="stop (at a checkpoint) once it is gone"
    )
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))

    def should_cancel() -> bool:
        if args.parent_pid is not None and not process_alive(args.parent_pid):
            return True
        return bool(args.cancel_file.exists())

    try:
        config = TrainConfig.from_dict(json.loads(args.config.read_text()))
        train(
            config,
            callbacks=[EventFileWriter(args.events)],
            should_cancel=should_cancel,
            resume=not args.fresh,
        )
    except Exception as error:
        _append_event(
            args.events,
            {
                "event": "error",
                "rank": rank,
                "type": type(error).__name__,
                "message": str(error),
                # Bad settings or data (DatasetError and ModelLoadError are ValueErrors too).
                "invalid": isinstance(error, ValueError),
            },
        )
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = [
    "DistributedLaunchError",
    "EventFileWriter",
    "process_alive",
    "torchrun_command",
    "train_with_torchrun",
    "visible_gpu_count",
]
