"""Configuration of a training run."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from bds_core.budget import resolve_safety_batch_size
from bds_core.models import LoraSettings
from bds_core.schedulers import SchedulerSettings

METHODS: tuple[str, ...] = ("bds", "sft", "mix", "filter")
PRECISIONS: tuple[str, ...] = ("fp32", "bf16")


@dataclass
class TrainConfig:
    """Everything a run needs; validated on construction with messages that name the field."""

    model: str = field(
        metadata={"help": "base model: catalog name, local HF directory, .gguf file or hub id"}
    )
    train_file: Path = field(metadata={"help": "customer dataset D_ft (JSONL)"})
    out_dir: Path = field(
        metadata={"help": "where checkpoints, the adapter, weights and metrics go"}
    )
    safety_file: Path | None = field(
        default=None, metadata={"help": "alignment dataset D_safe (JSONL); required by bds and mix"}
    )
    method: str = field(
        default="bds",
        metadata={
            "help": "'bds' (weighted by the scheduler), 'sft' (customer data only), 'mix' (customer + alignment data, weights 1) or 'filter' (drop what the pretrained scheduler flags, then sft)"
        },
    )
    lora: LoraSettings = field(
        default_factory=LoraSettings,
        metadata={"help": "LoRA rank, alpha, dropout and target modules"},
    )
    learning_rate: float = field(
        default=5e-4, metadata={"help": "AdamW learning rate of the LoRA parameters"}
    )
    weight_decay: float = field(
        default=0.1, metadata={"help": "AdamW weight decay of the LoRA parameters"}
    )
    adam_betas: tuple[float, float] = field(default=(0.9, 0.95), metadata={"help": "AdamW betas"})
    grad_clip: float = field(default=1.0, metadata={"help": "gradient-norm clip of the model step"})
    batch_size: int = field(default=8, metadata={"help": "customer examples per step"})
    safety_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "alignment examples per step (default: a quarter of batch_size, rounded up, then up to a multiple of the number of processes)"
        },
    )
    safety_every: int = field(
        default=1,
        metadata={
            "help": "alignment budget: one alignment batch every this many steps (bds and mix); 1: every step; with k > 1 the other steps train on the customer batch alone"
        },
    )
    length_bucketing: bool = field(
        default=True,
        metadata={
            "help": "sort each micro-batch's rows (customer and alignment together) by length and split them into the forward/backward passes that compute the least padding; off: one pass over all rows"
        },
    )
    max_batch_tokens: int | None = field(
        default=None,
        metadata={
            "help": "cap on the padded tokens (rows x longest row) of one forward pass; bounds a step's activation memory (a single longer row still goes alone); None: no cap"
        },
    )
    gradient_accumulation_steps: int = field(
        default=1,
        metadata={"help": "micro-batches per step; the loss is normalised over the whole step"},
    )
    epochs: float = field(
        default=1.0,
        metadata={
            "help": "passes over the training file D_ft (the alignment data cycles as needed); "
            "ignored when max_steps is set"
        },
    )
    max_steps: int | None = field(default=None, metadata={"help": "stop after this many steps"})
    max_length: int = field(
        default=256,
        metadata={"help": "token limit per example (prompt truncated first, then the answer)"},
    )
    seed: int = field(default=0, metadata={"help": "seed of data order, LoRA init and SGLD noise"})
    scheduler: SchedulerSettings = field(
        default_factory=SchedulerSettings, metadata={"help": "how BDS infers weights"}
    )
    checkpoint_every: int = field(
        default=50,
        metadata={"help": "write a resumable checkpoint every this many steps (0: only on cancel)"},
    )
    keep_checkpoints: int = field(
        default=2, metadata={"help": "number of newest checkpoints kept on disk"}
    )
    device: str | None = field(
        default=None,
        metadata={
            "help": "'cpu', 'cuda', ... (default: cuda when available); under torchrun each process takes cuda:LOCAL_RANK"
        },
    )
    precision: str = field(
        default="fp32",
        metadata={
            "help": "'fp32', or 'bf16': forward passes under bfloat16 autocast (weights, gradients and optimizer states stay float32; meant for CUDA)"
        },
    )
    gradient_checkpointing: bool = field(
        default=False,
        metadata={
            "help": "recompute the decoder layers' activations in the backward pass: less memory, about a third more compute, same result"
        },
    )

    def __post_init__(self) -> None:
        self.train_file = Path(self.train_file)
        self.out_dir = Path(self.out_dir)
        if self.safety_file is not None:
            self.safety_file = Path(self.safety_file)
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}; got {self.method!r}")
        if self.method in ("bds", "mix") and self.safety_file is None:
            raise ValueError(f"method {self.method!r} needs a safety_file (the alignment dataset)")
        _positive("learning_rate", self.learning_rate)
        _positive("grad_clip", self.grad_clip)
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not all(0 <= beta < 1 for beta in self.adam_betas):
            raise ValueError(f"adam_betas must lie in [0, 1), got {self.adam_betas}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}")
        if self.safety_batch_size is not None and self.safety_batch_size < 1:
            raise ValueError(f"safety_batch_size must be positive, got {self.safety_batch_size}")
        if self.safety_every < 1:
            raise ValueError(
                f"safety_every must be a positive number of steps, got {self.safety_every}"
            )
        if self.max_batch_tokens is not None and self.max_batch_tokens < 8:
            raise ValueError(
                f"max_batch_tokens must be at least 8 tokens (or None), got {self.max_batch_tokens}"
            )
        if self.gradient_accumulation_steps < 1:
            raise ValueError(
                f"gradient_accumulation_steps must be positive, got {self.gradient_accumulation_steps}"
            )
        if self.gradient_accumulation_steps > self.batch_size:
            raise ValueError(
                "gradient_accumulation_steps cannot exceed the batch size "
                f"({self.gradient_accumulation_steps} > {self.batch_size})"
            )
        if self.max_steps is None:
            _positive("epochs", self.epochs)
        elif self.max_steps < 1:
            raise ValueError(f"max_steps must be positive, got {self.max_steps}")
        if self.max_length < 8:
            raise ValueError(f"max_length must be at least 8 tokens, got {self.max_length}")
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be >= 0, got {self.checkpoint_every}")
        if self.keep_checkpoints < 1:
            raise ValueError(f"keep_checkpoints must be at least 1, got {self.keep_checkpoints}")
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"precision must be one of {', '.join(PRECISIONS)}; got {self.precision!r}"
            )

    def resolved_safety_batch_size(self, world_size: int = 1) -> int:
        """Alignment rows per step on `world_size` processes (`resolve_safety_batch_size`)."""
        return resolve_safety_batch_size(self.batch_size, self.safety_batch_size, world_size)

    @property
    def uses_safety_data(self) -> bool:
        return self.method in ("bds", "mix")

    def check_split(self, world_size: int) -> None:
        """Refuse batches too small to split over `world_size` processes x micro-batches.

        Each process trains on its slice of every step's batch, in gradient-accumulation
        micro-batches: every micro-batch needs at least one customer example, and every
        process at least one alignment row (a micro-batch may have none: the alignment loss
        is normalised over the whole step, so where its rows go does not change the step).
        The default budget is rounded up to a multiple of `world_size`, so it always splits.
        """
        parts = world_size * self.gradient_accumulation_steps
        if self.batch_size < parts:
            raise ValueError(
                f"batch_size {self.batch_size} cannot be split over {world_size} processes x "
                f"{self.gradient_accumulation_steps} micro-batches; each needs at least one "
                f"example, so batch_size must be at least {parts}"
            )
        if self.uses_safety_data:
            size = self.resolved_safety_batch_size(world_size)
            if size < world_size:
                raise ValueError(
                    f"safety_batch_size {size} cannot be split over {world_size} processes; "
                    f"each needs at least one alignment row, so safety_batch_size must be at "
                    f"least {world_size}"
                )

    def total_steps(self, num_train: int, num_safety: int) -> int:
        """Steps of the run: max_steps, or ``epochs`` passes over the training file.

        The alignment data does not lengthen the run: its sampler cycles through it as often
        as the training file's passes need (``num_safety`` is kept for callers' symmetry).
        """
        if self.max_steps is not None:
            return self.max_steps
        return max(1, math.ceil(self.epochs * num_train / self.batch_size))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["train_file"] = str(self.train_file)
        data["out_dir"] = str(self.out_dir)
        data["safety_file"] = str(self.safety_file) if self.safety_file else None
        data["adam_betas"] = list(self.adam_betas)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Inverse of `to_dict` (for a config handed to another process as JSON)."""
        values = dict(data)
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s): {', '.join(unknown)}")
        if isinstance(values.get("lora"), dict):
            values["lora"] = LoraSettings(**values["lora"])
        if isinstance(values.get("scheduler"), dict):
            values["scheduler"] = SchedulerSettings(**values["scheduler"])
        if values.get("adam_betas") is not None:
            values["adam_betas"] = tuple(values["adam_betas"])
        return cls(**values)

    def resume_fingerprint(self, data_digest: str, world_size: int = 1) -> str:
        """Hash of everything that must match for a checkpoint to be resumable by this run.

        The alignment budget enters resolved (on `world_size` processes), and the loss timing
        as set, so a checkpoint written under other defaults (an unset budget meaning
        batch_size, loss timing `after`) is not resumed under today's.
        """
        data = self.to_dict()
        if self.uses_safety_data:
            data["safety_batch_size"] = self.resolved_safety_batch_size(world_size)
        for volatile in (
            "out_dir",
            "checkpoint_every",
            "keep_checkpoints",
            "device",
            "max_steps",
            "epochs",
            # How the same computation is carried out, not what it computes: a run may resume
            # on another device, in another precision or with other memory settings.
            "precision",
            "gradient_checkpointing",
            "length_bucketing",
            "max_batch_tokens",
        ):
            data.pop(volatile)
        if data["safety_every"] == 1:
            # Checkpoints written before the setting existed trained with an alignment batch
            # every step: they stay resumable.
            data.pop("safety_every")
        data["data_digest"] = data_digest
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def _positive(name: str, value: float) -> None:
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a positive number, got {value}")
