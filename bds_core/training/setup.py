"""The pieces `BDSTrainer.setup` builds: data, model and adapters, optimizers, samplers, scheduler.

Each function returns what the trainer stores. `setup` calls them in a fixed order: the LoRA
adapters and the scheduler draw their initial values from the global random stream, so the
order is part of what makes a run reproducible.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from bds_core.data import Example, encode_example, load_examples
from bds_core.data.tokenize import EncodedExample
from bds_core.models import CATALOG, apply_lora, load_model
from bds_core.schedulers import DataScheduler, SchedulerContext, build_scheduler
from bds_core.schedulers.base import make_scheduler_optimizer
from bds_core.training.config import TrainConfig
from bds_core.training.distributed import DataParallel
from bds_core.training.outputs import MAIN_ADAPTER
from bds_core.training.reference import AGNOSTIC_ADAPTER
from bds_core.training.sampling import EpochSampler

ExampleSelection = Callable[[Sequence[Example]], list[Example]]
"""Which of the customer examples to train on (a subset, in file order)."""


@dataclass
class TrainingData:
    """The examples of a run."""

    all_train_examples: list[Example]
    """Every example of the customer file (all are reported in `weights.jsonl`)."""
    train_examples: list[Example]
    """The customer examples trained on: all of them, or the selection."""
    dropped_ids: set[str]
    """Ids of the customer examples the selection left out (reported with weight 0)."""
    safety_examples: list[Example]
    """The alignment examples (none for `sft` and `filter`)."""


def load_training_data(
    config: TrainConfig, parallel: DataParallel, select_examples: ExampleSelection | None
) -> TrainingData:
    """The customer examples (selected by `select_examples`, if given) and alignment examples."""
    all_train_examples = load_examples(config.train_file)
    train_examples = all_train_examples
    dropped_ids: set[str] = set()
    if select_examples is not None:
        # Rank 0 first: a selection that scores the data fills its embedding cache once.
        with parallel.main_first():
            train_examples = select_examples(all_train_examples)
        kept = {id(example) for example in train_examples}
        dropped_ids = {ex.id for ex in all_train_examples if id(ex) not in kept}
        if not train_examples:
            raise ValueError(f"no example of {config.train_file} was selected for training")
    safety_examples = (
        load_examples(config.safety_file)
        if config.uses_safety_data and config.safety_file is not None
        else []
    )
    return TrainingData(all_train_examples, train_examples, dropped_ids, safety_examples)


def setup_model(
    config: TrainConfig, parallel: DataParallel, device: torch.device
) -> tuple[Any, Any]:
    """The base model with the main LoRA adapter (and, for reference `agnostic`, a second).

    Returns `(model, tokenizer)`; the main adapter is the active one.
    """
    # A catalog model is converted into a cache on first use: rank 0 fills it, then the others
    # read it.
    with parallel.main_first(active=config.model in CATALOG):
        loaded = load_model(config.model, device=device)
    model = apply_lora(loaded.model, config.lora)
    model.to(device)
    causal_lm: Any = model.get_base_model()
    if config.gradient_checkpointing:
        # Non-reentrant checkpointing needs no input gradients, so frozen embeddings and
        # LoRA-only training work as they are.
        causal_lm.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False}
        )
        causal_lm.config.use_cache = False
    if uses_agnostic_adapter(config):
        model.add_adapter(AGNOSTIC_ADAPTER, model.peft_config[MAIN_ADAPTER])
        model.set_adapter(MAIN_ADAPTER)
    return model, loaded.tokenizer


def uses_agnostic_adapter(config: TrainConfig) -> bool:
    """Whether the run trains a second, agnostic adapter (method `bds`, reference `agnostic`)."""
    return config.method == "bds" and config.scheduler.reference == "agnostic"


def encode_examples(
    examples: Sequence[Example], tokenizer: Any, config: TrainConfig
) -> list[EncodedExample]:
    """`examples` tokenized for training, each cut to `config.max_length`."""
    return [encode_example(ex, tokenizer, config.max_length) for ex in examples]


def adapter_optimizer(
    config: TrainConfig, params: list[torch.nn.Parameter]
) -> torch.optim.Optimizer:
    """AdamW over an adapter's parameters, with the run's learning rate, decay and betas."""
    return torch.optim.AdamW(
        params,
        lr=config.learning_rate,
        weight_decay=config.weight_decay,
        betas=config.adam_betas,
    )


def setup_samplers(
    config: TrainConfig, num_train: int, num_safety: int, world_size: int = 1
) -> tuple[EpochSampler, EpochSampler | None]:
    """The global orders of the customer and the alignment data (None without alignment data).

    Every process walks the same order; the trainer takes this rank's slice of each batch.
    The alignment batch is the budget resolved for `world_size` processes.
    """
    train_sampler = EpochSampler(num_train, config.batch_size, config.seed)
    safety_sampler = (
        EpochSampler(num_safety, config.resolved_safety_batch_size(world_size), config.seed + 1)
        if num_safety
        else None
    )
    return train_sampler, safety_sampler


def setup_scheduler(
    config: TrainConfig,
    context: SchedulerContext,
    parallel: DataParallel,
    total_steps: int,
    noise_generator: torch.Generator,
) -> tuple[DataScheduler | None, torch.optim.Optimizer | None]:
    """The data scheduler and its optimizer (method `bds`; None and None otherwise)."""
    if config.method != "bds":
        return None, None
    # The neural scheduler embeds every example through an on-disk cache: rank 0 fills it, the
    # others read it.
    with parallel.main_first(active=config.scheduler.kind != "scalar"):
        scheduler = build_scheduler(config.scheduler, context).to(context.device)
    # Burn-in is a share of the run's scheduler updates (one per step).
    scheduler.total_updates = total_steps
    return scheduler, make_scheduler_optimizer(scheduler, noise_generator)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of `precision` on `device` (None: plain float32)."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ValueError(f"precision bf16: the GPU of {device} does not support bfloat16")
        # bfloat16 autocast also works on CPU (slowly); it is meant for CUDA.
        return torch.bfloat16
    raise ValueError(f"unknown precision {precision!r}")


__all__ = [
    "ExampleSelection",
    "TrainingData",
    "adapter_optimizer",
    "autocast_dtype",
    "encode_examples",
    "load_training_data",
    "setup_model",
    "setup_samplers",
    "setup_scheduler",
    "uses_agnostic_adapter",
]
