"""`bds bench speed`: what a step of sft, mix and bds costs, measured side by side.

Time: one trainer per method is set up in this process on the same model and data, and the
methods take their steps in turns (sft, mix, bds, then mix, bds, sft, ...: the order rotates
every round), so machine noise (other processes on shared cores) hits all of them alike. The
first `warmup` rounds are not timed.

Memory: peak resident memory cannot be told apart per method inside one process, so each
method also runs a few steps alone in a fresh child process, which reports its resident memory
after setup and the peak while training (sampled every few milliseconds).

A BDS step is broken down by the trainer's own phase clocks (`BDSTrainer.phase_seconds`): the
forward/backward passes over the customer and alignment rows, the optimizer update, the
scheduler step (with its `loss_after` recomputation and `reference` losses, when those run)
and the rest (data, weights, bookkeeping).
"""

from __future__ import annotations

import multiprocessing
import platform
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from bds_core.budget import resolve_safety_batch_size
from bds_core.schedulers import SchedulerSettings
from bds_core.training import BDSTrainer, TrainConfig
from bds_core.training.outputs import peak_rss_mb

SPEED_METHODS: tuple[str, ...] = ("sft", "mix", "bds")


@dataclass(frozen=True)
class SpeedConfig:
    """What `bds bench speed` measures."""

    train_file: Path = field(metadata={"help": "customer data D_ft (JSONL)"})
    safety_file: Path = field(metadata={"help": "alignment data D_safe (JSONL)"})
    out_dir: Path = field(metadata={"help": "scratch folder for the trainers"})
    model: str = field(default="smollm2-135m-instruct", metadata={"help": "base model"})
    methods: tuple[str, ...] = field(default=SPEED_METHODS, metadata={"help": "sft, mix, bds"})
    steps: int = field(default=6, metadata={"help": "timed steps per method"})
    warmup: int = field(default=1, metadata={"help": "untimed rounds first"})
    memory_steps: int = field(
        default=2, metadata={"help": "steps of each method alone in a child process (0: skip)"}
    )
    batch_size: int = field(default=8, metadata={"help": "customer rows per step"})
    safety_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "alignment rows per step (default: the library's, a quarter of batch_size rounded up)"
        },
    )
    safety_every: int = field(default=1, metadata={"help": "alignment batch every k steps"})
    max_length: int = field(default=128, metadata={"help": "token limit per row"})
    length_bucketing: bool = field(default=True, metadata={"help": "bucket rows by length"})
    max_batch_tokens: int | None = field(default=None, metadata={"help": "padded tokens per pass"})
    scheduler: SchedulerSettings = field(
        default_factory=SchedulerSettings, metadata={"help": "bds's scheduler settings"}
    )
    threads: int | None = field(default=None, metadata={"help": "torch CPU threads"})
    device: str = field(default="cpu", metadata={"help": "cpu or cuda"})
    seed: int = field(default=0, metadata={"help": "seed of every trainer"})

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in SPEED_METHODS]
        if unknown or not self.methods:
            raise ValueError(f"methods must be among {', '.join(SPEED_METHODS)}; got {unknown}")
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")
        if self.warmup < 0 or self.memory_steps < 0:
            raise ValueError("warmup and memory_steps must be >= 0")

    @property
    def resolved_safety_batch_size(self) -> int:
        """The alignment rows of every mix and bds step (one process)."""
        return resolve_safety_batch_size(self.batch_size, self.safety_batch_size)

    def train_config(self, method: str, out_dir: Path, steps: int) -> TrainConfig:
        return TrainConfig(
            model=self.model,
            train_file=self.train_file,
            safety_file=self.safety_file if method in ("mix", "bds") else None,
            out_dir=out_dir,
            method=method,
            batch_size=self.batch_size,
            safety_batch_size=self.resolved_safety_batch_size,
            safety_every=self.safety_every,
            length_bucketing=self.length_bucketing,
            max_batch_tokens=self.max_batch_tokens,
            max_steps=steps,
            max_length=self.max_length,
            seed=self.seed,
            scheduler=self.scheduler,
            checkpoint_every=0,
            device=self.device,
        )


@dataclass
class MethodSpeed:
    """One method's measured cost."""

    method: str
    step_seconds: list[float]
    tokens: int
    phase_seconds: dict[str, float]
    rss_after_setup_mb: float | None = None
    peak_training_rss_mb: float | None = None
    peak_gpu_memory_mb: float | None = None

    @property
    def seconds_per_step(self) -> float:
        return sum(self.step_seconds) / len(self.step_seconds)

    @property
    def median_seconds_per_step(self) -> float:
        ordered = sorted(self.step_seconds)
        mid = len(ordered) // 2
        return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / sum(self.step_seconds)

    def breakdown(self) -> dict[str, float]:
        """Seconds per step in each phase; `other` is the step time no phase clock saw."""
        steps = len(self.step_seconds)
        phases = {name: seconds / steps for name, seconds in self.phase_seconds.items()}
        inside = phases.pop("scheduler_step", 0.0)
        loss_after = phases.get("loss_after", 0.0)
        reference = phases.get("reference", 0.0)
        if inside:
            phases["scheduler_update"] = max(0.0, inside - loss_after - reference)
        timed = sum(phases.values())
        phases["other"] = max(0.0, self.seconds_per_step - timed)
        return phases


@dataclass
class SpeedReport:
    config: dict[str, Any]
    machine: dict[str, Any]
    methods: dict[str, MethodSpeed]
    wall_seconds: float

    def ratio(self, method: str, what: str) -> float | None:
        base, other = self.methods.get("sft"), self.methods.get(method)
        if base is None or other is None:
            return None
        if what == "time":
            return other.seconds_per_step / base.seconds_per_step
        if what == "median_time":
            return other.median_seconds_per_step / base.median_seconds_per_step
        if base.peak_training_rss_mb and other.peak_training_rss_mb:
            return other.peak_training_rss_mb / base.peak_training_rss_mb
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "machine": self.machine,
            "wall_seconds": round(self.wall_seconds, 1),
            "methods": {
                name: {
                    **asdict(speed),
                    "seconds_per_step": speed.seconds_per_step,
                    "median_seconds_per_step": speed.median_seconds_per_step,
                    "tokens_per_second": speed.tokens_per_second,
                    "breakdown": speed.breakdown(),
                    "time_x_sft": self.ratio(name, "time"),
                    "median_time_x_sft": self.ratio(name, "median_time"),
                    "memory_x_sft": self.ratio(name, "memory"),
                }
                for name, speed in self.methods.items()
            },
        }

    def to_markdown(self) -> str:
        lines = [
            "| method | s/step (mean, median) | tokens/s | peak RSS training (MB) | time x sft | memory x sft |",
            "|---|---|---|---|---|---|",
        ]
        for name, speed in self.methods.items():
            time_ratio = self.ratio(name, "time")
            memory_ratio = self.ratio(name, "memory")
            lines.append(
                f"| {name} | {speed.seconds_per_step:.2f}, {speed.median_seconds_per_step:.2f} "
                f"| {speed.tokens_per_second:.0f} "
                f"| {_fmt(speed.peak_training_rss_mb, '.0f')} "
                f"| {_fmt(time_ratio, '.2f')} | {_fmt(memory_ratio, '.2f')} |"
            )
        for name, speed in self.methods.items():
            if name == "sft":
                continue
            parts = ", ".join(f"{k} {v:.2f}" for k, v in speed.breakdown().items())
            lines.append("")
            lines.append(f"{name} step breakdown (s/step): {parts}")
        return "\n".join(lines)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    import os

    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


class _RssSampler:
    """Highest resident memory seen while active (polled every `interval` seconds)."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _current_rss_mb())
            time.sleep(self.interval)

    def __enter__(self) -> _RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _current_rss_mb())


def _memory_child(config: SpeedConfig, method: str, queue: Any) -> None:
    """Child process: set up `method` alone, run a few steps, report resident memory."""
    if config.threads:
        torch.set_num_threads(config.threads)
    steps = config.warmup + config.memory_steps
    trainer = BDSTrainer(config.train_config(method, config.out_dir / f"memory-{method}", steps))
    trainer.setup()
    after_setup = _current_rss_mb()
    with _RssSampler() as sampler:
        for _ in range(steps):
            trainer._train_step()
            trainer.step += 1
    queue.put((method, after_setup, sampler.peak, peak_rss_mb()))


def measure_memory(config: SpeedConfig) -> dict[str, tuple[float, float]]:
    """(RSS after setup, peak RSS while training) of each method alone, in MB."""
    context = multiprocessing.get_context("spawn")
    results: dict[str, tuple[float, float]] = {}
    for method in config.methods:
        queue = context.Queue()
        child = context.Process(target=_memory_child, args=(config, method, queue))
        child.start()
        name, after_setup, peak, _ = queue.get()
        child.join()
        if child.exitcode != 0:
            raise RuntimeError(f"the memory run of {method} exited with {child.exitcode}")
        results[name] = (after_setup, peak)
    return results


def run_speed(config: SpeedConfig, on_step: Any = None) -> SpeedReport:
    """Measure every method of `config` (see the module docstring)."""
    if config.threads:
        torch.set_num_threads(config.threads)
    started = time.monotonic()
    rounds = config.warmup + config.steps
    trainers: dict[str, BDSTrainer] = {}
    for method in config.methods:
        trainer = BDSTrainer(config.train_config(method, config.out_dir / method, rounds))
        trainer.setup()
        trainers[method] = trainer
    step_seconds: dict[str, list[float]] = {m: [] for m in config.methods}
    tokens = dict.fromkeys(config.methods, 0)
    methods = list(config.methods)
    cuda = torch.device(config.device).type == "cuda"
    for round_index in range(rounds):
        timed = round_index >= config.warmup
        if round_index == config.warmup:
            for trainer in trainers.values():
                trainer.phase_seconds.clear()
        shift = round_index % len(methods)
        for method in methods[shift:] + methods[:shift]:
            trainer = trainers[method]
            if cuda:
                torch.cuda.synchronize()
            begin = time.perf_counter()
            losses = trainer._train_step()
            if cuda:
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - begin
            trainer.step += 1
            if timed:
                step_seconds[method].append(elapsed)
                tokens[method] += losses.tokens
            if on_step is not None:
                on_step(round_index, method, elapsed, timed)
    speeds = {
        method: MethodSpeed(
            method=method,
            step_seconds=step_seconds[method],
            tokens=tokens[method],
            phase_seconds=dict(trainers[method].phase_seconds),
        )
        for method in methods
    }
    del trainers
    if config.memory_steps and not cuda:
        for method, (after_setup, peak) in measure_memory(config).items():
            speeds[method].rss_after_setup_mb = after_setup
            speeds[method].peak_training_rss_mb = peak
    machine = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_average_at_end": _load_average(),
    }
    settings = asdict(config)
    # The budget the steps trained with, not only what was asked (None: the default).
    settings["resolved_safety_batch_size"] = config.resolved_safety_batch_size
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in settings.items()}
    return SpeedReport(settings, machine, speeds, time.monotonic() - started)


def _load_average() -> list[float] | None:
    try:
        import os

        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


__all__ = ["SPEED_METHODS", "MethodSpeed", "SpeedConfig", "SpeedReport", "run_speed"]
