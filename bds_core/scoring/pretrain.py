"""Amortization: train the neural scheduler's head over one or more label-free BDS runs.

Each customer dataset gets a full BDS run (`bds_core.training`) with the neural scheduler; the
head trained in one run starts the next (`SchedulerSettings.init_path`), so phi accumulates
what every run taught it. No harmful labels are read for training: the signal is BDS's own
(loss under the safety-aware model minus the reference loss). Labels, when the data has them,
only appear in the provenance as the weight AUROC of each run, for evaluation.

At the end the score calibration is fitted (label-free) to the logits of all pretraining
examples and the scheduler is saved with its provenance: the exact settings, the files and
their sha256, steps and timings.
"""

from __future__ import annotations

import hashlib
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from bds_core.budget import PRE_SWITCH_LOSS_TIMING
from bds_core.models import LoraSettings
from bds_core.schedulers import SchedulerSettings
from bds_core.schedulers.neural import (
    NeuralOptions,
    NeuralScheduler,
    ScoreCalibration,
    save_scheduler,
)
from bds_core.training import TrainConfig, TrainerCallback
from bds_core.training.trainer import BDSTrainer


@dataclass
class PretrainConfig:
    """Settings of `pretrain_scheduler` (one BDS run per train file, head carried over)."""

    model: str = field(
        metadata={"help": "base model of the BDS runs (catalog name, HF directory, .gguf)"}
    )
    train_files: list[Path] = field(
        metadata={"help": "label-free customer datasets, one BDS run each, in order"}
    )
    safety_file: Path = field(
        metadata={"help": "alignment dataset D_safe (harmful prompts with refusals)"}
    )
    out: Path = field(metadata={"help": "folder the trained scheduler is saved to"})
    work_dir: Path | None = field(
        default=None,
        metadata={
            "help": "folder of the runs' checkpoints (default: under $BDS_CACHE_DIR/pretrain)"
        },
    )
    steps: int = field(default=150, metadata={"help": "BDS steps per train file"})
    batch_size: int = field(default=8, metadata={"help": "customer examples per step"})
    safety_batch_size: int | None = field(
        default=None, metadata={"help": "alignment examples per step (default: batch_size)"}
    )
    learning_rate: float = field(default=5e-4, metadata={"help": "LoRA learning rate"})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank"})
    max_length: int = field(default=256, metadata={"help": "token limit per training example"})
    scheduler_learning_rate: float = field(
        default=3e-3, metadata={"help": "AdamW learning rate of the head"}
    )
    reference: str = field(
        default="initial", metadata={"help": "reference loss: none, initial or agnostic"}
    )
    update: str = field(default="batch", metadata={"help": "scheduler update: batch or global"})
    entropy_weight: float = field(default=0.0, metadata={"help": "collapse penalty strength"})
    encoder: str = field(
        default="minilm-l6-v2",
        metadata={"help": "frozen encoder: minilm-l6-v2, minilm-static or llm-hidden"},
    )
    head: str = field(default="mlp", metadata={"help": "head: mlp or linear"})
    hidden: int = field(default=128, metadata={"help": "hidden width of the MLP head"})
    init_path: Path | None = field(
        default=None, metadata={"help": "continue from a saved scheduler instead of a fresh head"}
    )
    seed: int = field(default=0, metadata={"help": "seed of data order, LoRA and head init"})
    checkpoint_every: int = field(
        default=25, metadata={"help": "checkpoint every this many steps (runs resume)"}
    )
    device: str | None = field(
        default=None, metadata={"help": "'cpu', 'cuda' (default: cuda when available)"}
    )

    def __post_init__(self) -> None:
        self.train_files = [Path(path) for path in self.train_files]
        self.safety_file = Path(self.safety_file)
        self.out = Path(self.out)
        if self.work_dir is not None:
            self.work_dir = Path(self.work_dir)
        if self.init_path is not None:
            self.init_path = Path(self.init_path)
        if not self.train_files:
            raise ValueError("pretraining needs at least one train file")
        for path in [*self.train_files, self.safety_file]:
            if not path.is_file():
                raise ValueError(f"no such file: {path}")
        if self.steps < 1:
            raise ValueError(f"steps must be positive, got {self.steps}")
        NeuralOptions(encoder=self.encoder, head=self.head, hidden=self.hidden)

    @property
    def runs_dir(self) -> Path:
        """Where the runs write checkpoints (never inside `out`, which may be a package asset)."""
        if self.work_dir is not None:
            return self.work_dir
        root = Path(os.environ.get("BDS_CACHE_DIR", Path.home() / ".cache" / "bds"))
        tag = hashlib.sha256(str(self.out.resolve()).encode()).hexdigest()[:12]
        return root / "pretrain" / f"{self.out.name}-{tag}"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key, value in data.items():
            if isinstance(value, Path):
                data[key] = str(value)
        data["train_files"] = [str(path) for path in self.train_files]
        return data


@dataclass
class PretrainResult:
    """The saved scheduler and what each run reported."""

    scheduler_dir: Path
    runs: list[dict[str, Any]]
    calibration: ScoreCalibration


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pretrain_run_config(
    config: PretrainConfig,
    index: int,
    train_file: Path,
    previous: Path | None,
    options: dict[str, Any],
) -> TrainConfig:
    """The BDS run of pretraining on its `index`-th train file (chained from `previous`)."""
    run_dir = config.runs_dir / f"run{index}_{train_file.stem}"
    return TrainConfig(
        model=config.model,
        train_file=train_file,
        safety_file=config.safety_file,
        out_dir=run_dir,
        method="bds",
        lora=LoraSettings(r=config.lora_r, alpha=2.0 * config.lora_r),
        learning_rate=config.learning_rate,
        batch_size=config.batch_size,
        # Pretraining pins its own budget (the library's defaults before the candidate
        # budget became them): unset means batch_size alignment rows, losses recomputed
        # after the model step, so a shipped scheduler's provenance keeps its meaning.
        safety_batch_size=config.safety_batch_size or config.batch_size,
        max_steps=config.steps,
        max_length=config.max_length,
        seed=config.seed + index,
        checkpoint_every=config.checkpoint_every,
        device=config.device,
        scheduler=SchedulerSettings(
            kind="neural",
            learning_rate=config.scheduler_learning_rate,
            reference=config.reference,  # type: ignore[arg-type]
            update=config.update,  # type: ignore[arg-type]
            entropy_weight=config.entropy_weight,
            loss_timing=PRE_SWITCH_LOSS_TIMING,
            init_path=str(previous) if previous else None,
            # A chained run takes the encoder and head from the saved scheduler.
            options={} if previous else options,
        ),
    )


def pretrain_scheduler(
    config: PretrainConfig, callbacks: Sequence[TrainerCallback] = (), command: str | None = None
) -> PretrainResult:
    """Run BDS on each train file in turn, carrying the head over, then calibrate and save it."""
    options = {"encoder": config.encoder, "head": config.head, "hidden": config.hidden}
    previous: Path | None = config.init_path
    runs: list[dict[str, Any]] = []
    final: NeuralScheduler | None = None
    all_embeddings: list[torch.Tensor] = []
    started = time.monotonic()
    for index, train_file in enumerate(config.train_files):
        train_config = pretrain_run_config(config, index, train_file, previous, options)
        run_dir = train_config.out_dir
        trainer = BDSTrainer(train_config, callbacks=callbacks)
        trainer.setup()
        result = trainer.train()
        if result.cancelled:
            raise RuntimeError(f"pretraining run on {train_file} was cancelled")
        scheduler = trainer.scheduler
        if not isinstance(scheduler, NeuralScheduler):
            raise RuntimeError("pretraining expected a neural scheduler in the BDS run")
        all_embeddings.append(scheduler.embeddings.detach().cpu())
        stats = result.metrics.get("weight_stats", {})
        run_summary = {
            "train_file": str(train_file),
            "train_file_sha256": _sha256(train_file),
            "n_examples": len(trainer.data.train_examples),
            "steps": result.steps,
            "seconds_per_step": result.metrics.get("seconds_per_step"),
            # Evaluation only: labels never reach the scheduler.
            "weight_auroc_against_labels": stats.get("auroc"),
            "weight_ess_ratio": stats.get("ess_ratio"),
        }
        runs.append(run_summary)
        step_dir = run_dir / "scheduler"
        scheduler.save(step_dir, provenance={"run": run_summary})
        previous = step_dir
        final = scheduler
        del trainer
    assert final is not None
    # Calibrate the final head on every pretraining example (label-free).
    with torch.no_grad():
        head = final.head.cpu()
        final_logits = head(torch.cat(all_embeddings))
    calibration = ScoreCalibration.fit(final_logits)
    provenance = {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command,
        "config": config.to_dict(),
        "safety_file_sha256": _sha256(config.safety_file),
        "runs": runs,
        "total_seconds": round(time.monotonic() - started, 1),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "label_free": True,
    }
    save_scheduler(config.out, final.head, final.encoder, calibration, provenance)
    return PretrainResult(scheduler_dir=config.out, runs=runs, calibration=calibration)


__all__ = ["PretrainConfig", "PretrainResult", "pretrain_run_config", "pretrain_scheduler"]
