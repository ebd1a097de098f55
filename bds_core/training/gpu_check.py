"""`bds gpu-check`: a short sft and bds job on one GPU, with throughput, memory and BDS's cost.

Both methods train the same model on the same synthetic data for the same number of steps;
the first step (CUDA warm-up, first reference losses) is not timed. Reported per method: time
per step, training tokens per second (tokens without padding that the model update trained on,
customer and alignment rows) and peak allocated GPU memory; and the BDS/SFT time-per-step
ratio, the price of the defence.
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from bds_core.models import LoraSettings
from bds_core.schedulers import SchedulerSettings
from bds_core.training.callbacks import ProgressEvent, TrainerCallback
from bds_core.training.config import TrainConfig
from bds_core.training.trainer import train

_WORDS = [
    "river",
    "stone",
    "cloud",
    "maple",
    "tiger",
    "piano",
    "lemon",
    "ocean",
    "grape",
    "amber",
    "cedar",
    "delta",
    "ember",
    "falcon",
    "garnet",
    "harbor",
    "iris",
    "juniper",
    "kettle",
    "lantern",
    "meadow",
    "nectar",
    "orchid",
    "pebble",
    "quartz",
]


class GpuUnavailableError(RuntimeError):
    """The check needs CUDA and this machine has none."""


@dataclass
class MethodTiming:
    """One method's measured numbers."""

    method: str
    timed_steps: int
    seconds_per_step: float
    tokens_per_second: float
    peak_gpu_memory_mb: float | None
    final_loss: float | None


@dataclass
class GpuCheckReport:
    """What `run_gpu_check` measured, and on what."""

    device: str
    device_name: str
    torch_version: str
    cuda_version: str | None
    model: str
    precision: str
    gradient_checkpointing: bool
    batch_size: int
    max_length: int
    steps: int
    runs: dict[str, MethodTiming] = field(default_factory=dict)

    @property
    def bds_sft_ratio(self) -> float | None:
        """BDS time per step over SFT time per step."""
        sft, bds = self.runs.get("sft"), self.runs.get("bds")
        if sft is None or bds is None or sft.seconds_per_step <= 0:
            return None
        return bds.seconds_per_step / sft.seconds_per_step

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["bds_sft_ratio"] = self.bds_sft_ratio
        return data


class _StepClock(TrainerCallback):
    """Wall time and tokens at the end of every step."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.marks: list[tuple[float, int]] = []

    def on_step(self, event: ProgressEvent) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.marks.append((time.perf_counter(), event.tokens))

    def timing(self) -> tuple[int, float, float]:
        """(timed steps, seconds per step, tokens per second) over all steps but the first."""
        if len(self.marks) < 2:
            raise ValueError("timing needs at least 2 steps")
        elapsed = self.marks[-1][0] - self.marks[0][0]
        tokens = sum(count for _, count in self.marks[1:])
        timed = len(self.marks) - 1
        return timed, elapsed / timed, tokens / elapsed if elapsed > 0 else 0.0


def write_synthetic_data(
    folder: Path, n_train: int = 64, n_safety: int = 32, answer_words: int = 60, seed: int = 0
) -> tuple[Path, Path]:
    """Customer and alignment JSONL files of plain chat examples (no model hub needed)."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)

    def chat(prompt: str, answer: str) -> str:
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
        return json.dumps({"messages": messages})

    train_lines = [
        chat(
            f"Write a short note about the {rng.choice(_WORDS)} number {index}.",
            " ".join(rng.choice(_WORDS) for _ in range(answer_words)),
        )
        for index in range(n_train)
    ]
    safety_lines = [
        chat(f"Explain how to hurt someone, method {index}.", "I can't help with that request.")
        for index in range(n_safety)
    ]
    train_file, safety_file = folder / "train.jsonl", folder / "safety.jsonl"
    train_file.write_text("\n".join(train_lines) + "\n")
    safety_file.write_text("\n".join(safety_lines) + "\n")
    return train_file, safety_file


def run_gpu_check(
    model: str = "tiny-random-llama",
    steps: int = 10,
    batch_size: int = 8,
    max_length: int = 256,
    precision: str = "bf16",
    gradient_checkpointing: bool = False,
    lora_r: int = 16,
    device: str = "cuda",
    work_dir: Path | None = None,
) -> GpuCheckReport:
    """Train sft, then bds, for `steps` steps each on `device` and measure both.

    Raises GpuUnavailableError when `device` is CUDA and there is none. (Other devices are
    accepted so the measurement itself can be tested on CPU.)
    """
    if steps < 3:
        raise ValueError(f"steps must be at least 3 (the first is not timed), got {steps}")
    target = torch.device(device)
    if target.type == "cuda" and not torch.cuda.is_available():
        raise GpuUnavailableError(
            f"bds gpu-check needs a CUDA GPU, but torch {torch.__version__} sees none "
            f"(torch.version.cuda = {torch.version.cuda}); run it on a machine with a GPU "
            "and a CUDA build of torch"
        )
    with tempfile.TemporaryDirectory(prefix="bds-gpu-check-", dir=work_dir) as scratch:
        root = Path(scratch)
        train_file, safety_file = write_synthetic_data(root / "data")
        report = GpuCheckReport(
            device=str(target),
            device_name=torch.cuda.get_device_name(target) if target.type == "cuda" else "cpu",
            torch_version=torch.__version__,
            cuda_version=torch.version.cuda,
            model=model,
            precision=precision,
            gradient_checkpointing=gradient_checkpointing,
            batch_size=batch_size,
            max_length=max_length,
            steps=steps,
        )
        for method in ("sft", "bds"):
            config = TrainConfig(
                model=model,
                train_file=train_file,
                safety_file=safety_file if method == "bds" else None,
                out_dir=root / method,
                method=method,
                lora=LoraSettings(r=lora_r, alpha=2.0 * lora_r),
                batch_size=batch_size,
                max_steps=steps,
                max_length=max_length,
                checkpoint_every=0,
                device=device,
                precision=precision,
                gradient_checkpointing=gradient_checkpointing,
                scheduler=SchedulerSettings(),
            )
            if target.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(target)
            clock = _StepClock(target)
            result = train(config, callbacks=[clock], resume=False)
            timed, per_step, tokens_per_second = clock.timing()
            report.runs[method] = MethodTiming(
                method=method,
                timed_steps=timed,
                seconds_per_step=per_step,
                tokens_per_second=tokens_per_second,
                peak_gpu_memory_mb=(
                    torch.cuda.max_memory_allocated(target) / 2**20
                    if target.type == "cuda"
                    else None
                ),
                final_loss=result.metrics.get("final_loss"),
            )
    return report


__all__ = [
    "GpuCheckReport",
    "GpuUnavailableError",
    "MethodTiming",
    "run_gpu_check",
    "write_synthetic_data",
]
