"""The data-scheduler interface: how a training example becomes a training weight.

A scheduler holds the parameters of BDS's safety attributes (one logit per example for the
scalar scheduler, a small network over example embeddings for the neural one) and turns them
into per-example weights. The trainer only talks to this interface.
"""

from __future__ import annotations

import contextlib
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

WeightTransform = Literal["softmax", "sigmoid", "identity"]
SchedulerUpdate = Literal["batch", "global"]
ReferenceLoss = Literal["none", "initial", "agnostic"]
LossTiming = Literal["after", "before"]

WEIGHT_TRANSFORMS: tuple[str, ...] = ("softmax", "sigmoid", "identity")
SCHEDULER_UPDATES: tuple[str, ...] = ("batch", "global")
REFERENCE_LOSSES: tuple[str, ...] = ("none", "initial", "agnostic")
LOSS_TIMINGS: tuple[str, ...] = ("after", "before")


@dataclass
class SchedulerSettings:
    """How BDS infers per-example weights (see docs/bds-method.md)."""

    kind: str = field(
        default="scalar",
        metadata={"help": "'scalar' (one logit per example) or 'neural' (head over embeddings)"},
    )
    transform: WeightTransform = field(
        default="softmax",
        metadata={
            "help": "logits -> weights: 'softmax' (N*softmax, sums to N), 'sigmoid' (2*sigmoid), 'identity'"
        },
    )
    update: SchedulerUpdate = field(
        default="batch",
        metadata={
            "help": "'batch': batch-centred update (B*softmax over the batch); 'global': the release's update through N*softmax over all examples"
        },
    )
    reference: ReferenceLoss = field(
        default="initial",
        metadata={
            "help": "reference loss r_i: 'none' (r=0, the release), 'initial' (starting model), 'agnostic' (adapter trained on weighted customer data only)"
        },
    )
    loss_timing: LossTiming = field(
        default="after",
        metadata={
            "help": "scheduler step uses losses recomputed 'after' the model step (the paper; one more forward pass over the customer batch) or the per-example losses of the model step's own passes ('before' the update, as the release: no extra pass)"
        },
    )
    learning_rate: float = field(
        default=0.1, metadata={"help": "AdamW learning rate of the scheduler parameters"}
    )
    weight_decay: float = field(
        default=0.0, metadata={"help": "AdamW weight decay of the scheduler parameters"}
    )
    grad_clip: float = field(
        default=10.0, metadata={"help": "gradient-norm clip of the scheduler step"}
    )
    entropy_weight: float = field(
        default=0.0,
        metadata={
            "help": "strength of a KL(uniform || weights) prior that keeps weights from collapsing onto few examples"
        },
    )
    sgld: bool = field(
        default=False,
        metadata={"help": "add Langevin noise after each scheduler update (posterior sampling)"},
    )
    sgld_temperature: float = field(
        default=1000.0,
        metadata={"help": "T in the SGLD noise scale sqrt(2*lr/T); larger T means less noise"},
    )
    record_last: int = field(
        default=10,
        metadata={
            "help": "K: number of recent weight iterates kept for the per-example mean and spread"
        },
    )
    record_every: int = field(
        default=1, metadata={"help": "record a weight iterate every this many scheduler steps"}
    )
    init_path: str | None = field(
        default=None,
        metadata={
            "help": "pretrained neural scheduler to start from (neural kind, or scalar logits initialised from its scores)"
        },
    )
    options: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "kind-specific options (for example the neural scheduler's encoder and head)"
        },
    )

    def __post_init__(self) -> None:
        _check_choice("transform", self.transform, WEIGHT_TRANSFORMS)
        _check_choice("update", self.update, SCHEDULER_UPDATES)
        _check_choice("reference", self.reference, REFERENCE_LOSSES)
        _check_choice("loss_timing", self.loss_timing, LOSS_TIMINGS)
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise ValueError(
                f"scheduler learning_rate must be a positive number, got {self.learning_rate}"
            )
        if self.weight_decay < 0:
            raise ValueError(f"scheduler weight_decay must be >= 0, got {self.weight_decay}")
        if not self.grad_clip > 0:
            raise ValueError(f"scheduler grad_clip must be positive, got {self.grad_clip}")
        if self.entropy_weight < 0:
            raise ValueError(f"scheduler entropy_weight must be >= 0, got {self.entropy_weight}")
        if not self.sgld_temperature > 0:
            raise ValueError(f"sgld_temperature must be positive, got {self.sgld_temperature}")
        if self.record_last < 1:
            raise ValueError(f"record_last must be at least 1, got {self.record_last}")
        if self.record_every < 1:
            raise ValueError(f"record_every must be at least 1, got {self.record_every}")


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"scheduler {name} must be one of {', '.join(choices)}; got {value!r}")


def transform_logits(logits: torch.Tensor, transform: str) -> torch.Tensor:
    """Map safety logits to weights; softmax weights are scaled to sum to len(logits)."""
    if transform == "softmax":
        return logits.shape[-1] * torch.softmax(logits, dim=-1)
    if transform == "sigmoid":
        return 2.0 * torch.sigmoid(logits)
    if transform == "identity":
        return logits
    raise ValueError(f"unknown weight transform {transform!r}")


def initial_logit(transform: str) -> float:
    """The logit at which every example's weight is 1."""
    return 1.0 if transform == "identity" else 0.0


def _no_reduction(value: torch.Tensor) -> torch.Tensor:
    return value


@dataclass(frozen=True)
class BatchShard:
    """Where one process's examples sit in a data-parallel step's global batch.

    `batch_indices` are the example indices of the whole global batch (the same on every
    process), `start` the position of this process's first example in it, and
    `sum_across_ranks` sums a tensor over all processes (the identity in a single process).
    """

    batch_indices: torch.Tensor
    start: int
    sum_across_ranks: Callable[[torch.Tensor], torch.Tensor] = _no_reduction


class DataScheduler(nn.Module, ABC):
    """Per-example weights for the customer dataset D_ft.

    Subclasses define `logits_for(indices)` (safety logits of some examples) and
    `all_logits()`; this base class turns logits into weights, defines the scheduler loss of
    bds-method.md step 4 and keeps the recent weight iterates for posterior summaries.
    """

    iterates: torch.Tensor
    n_recorded: torch.Tensor
    n_updates: torch.Tensor

    def __init__(self, num_examples: int, settings: SchedulerSettings) -> None:
        super().__init__()
        if num_examples < 1:
            raise ValueError(f"a scheduler needs at least one example, got {num_examples}")
        self.num_examples = num_examples
        self.settings = settings
        self.register_buffer("iterates", torch.zeros(settings.record_last, num_examples))
        self.register_buffer("n_recorded", torch.zeros((), dtype=torch.long))
        self.register_buffer("n_updates", torch.zeros((), dtype=torch.long))

    @abstractmethod
    def logits_for(self, indices: torch.Tensor) -> torch.Tensor:
        """Safety logits of the examples at `indices` (LongTensor of shape (B,)), differentiable."""

    @abstractmethod
    def all_logits(self) -> torch.Tensor:
        """Safety logits of all N examples, differentiable."""

    def all_weights(self) -> torch.Tensor:
        """Current weight of every example, shape (N,), detached."""
        with torch.no_grad():
            return transform_logits(self.all_logits(), self.settings.transform).detach()

    def batch_weights(self, indices: torch.Tensor) -> torch.Tensor:
        """Weights of a batch as the model step uses them: the dataset-level transform."""
        if self.settings.transform == "softmax":
            return transform_logits(self.all_logits(), "softmax")[indices]
        return transform_logits(self.logits_for(indices), self.settings.transform)

    def scheduler_loss(
        self,
        indices: torch.Tensor,
        losses: torch.Tensor,
        reference: torch.Tensor,
        shard: BatchShard | None = None,
    ) -> torch.Tensor:
        """L_a = mean_B w_i * (l_i - r_i), the negative log-posterior direction in the weights.

        `losses` and `reference` are detached per-example losses of shape (B,). With the
        'global' update the weights are the dataset-level N*softmax (the release); with
        'batch' they are B*softmax over the batch's own logits, so the gradient on logit j is
        q_j * (d_j - weighted batch mean of d) and its sign carries the signal. Non-softmax
        transforms centre d on the batch mean for the same reason.

        Under data parallelism `indices`, `losses` and `reference` are this process's slice
        of the global batch described by `shard`; the result is this slice's share of the
        global batch's loss (batch softmax and mean over the whole global batch), so the sum
        over processes of the gradients is the gradient of the single-process loss.
        """
        if shard is None:
            shard = BatchShard(indices, 0)
        batch_size = len(shard.batch_indices)
        if not 0 <= shard.start <= shard.start + len(indices) <= batch_size:
            raise ValueError(
                f"shard of {len(indices)} examples at {shard.start} does not fit a batch of "
                f"{batch_size}"
            )
        advantage = (losses - reference).detach()
        if self.settings.update == "global":
            weights = self.batch_weights(indices)
        elif self.settings.transform == "softmax":
            batch_weights = transform_logits(self.logits_for(shard.batch_indices), "softmax")
            weights = batch_weights[shard.start : shard.start + len(indices)]
        else:
            weights = transform_logits(self.logits_for(indices), self.settings.transform)
            advantage = advantage - shard.sum_across_ranks(advantage.sum()) / batch_size
        loss = (weights * advantage).sum() / batch_size
        if self.settings.entropy_weight > 0:
            # Each slice carries its share of the prior, so the shares add up to one prior.
            share = len(indices) / batch_size
            loss = loss + self.settings.entropy_weight * share * self.collapse_penalty()
        return loss

    def collapse_penalty(self) -> torch.Tensor:
        """KL(uniform || normalised weights) over all examples: 0 when all weights are equal."""
        weights = transform_logits(self.all_logits(), self.settings.transform).clamp_min(1e-12)
        probs = weights / weights.sum()
        return -(torch.log(probs * self.num_examples)).mean()

    @torch.no_grad()
    def add_langevin_noise(self, learning_rate: float, generator: torch.Generator) -> None:
        """SGLD: add sqrt(2 * lr / T) * N(0, I) to every scheduler parameter."""
        scale = math.sqrt(2.0 * learning_rate / self.settings.sgld_temperature)
        for parameter in self.parameters():
            if parameter.requires_grad:
                noise = torch.randn(
                    parameter.shape, generator=generator, dtype=parameter.dtype, device="cpu"
                )
                parameter.add_(noise.to(parameter.device) * scale)

    @torch.no_grad()
    def after_update(self) -> None:
        """Count the update and record the weight iterate when it is due."""
        self.n_updates += 1
        if int(self.n_updates) % self.settings.record_every == 0:
            slot = int(self.n_recorded) % self.settings.record_last
            self.iterates[slot] = self.all_weights().to(self.iterates.device)
            self.n_recorded += 1

    @torch.no_grad()
    def weight_summary(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-example mean and standard deviation of the weight over the recorded iterates.

        Without recorded iterates (no update yet) the mean is the current weight and the
        spread is zero.
        """
        count = min(int(self.n_recorded), self.settings.record_last)
        if count == 0:
            current = self.all_weights()
            return current, torch.zeros_like(current)
        recorded = self.iterates[:count]
        std = recorded.std(dim=0, unbiased=False) if count > 1 else torch.zeros_like(recorded[0])
        return recorded.mean(dim=0), std


@dataclass
class SchedulerContext:
    """What a scheduler builder may need to know about the run."""

    num_examples: int
    examples: Sequence[Any] = ()
    model: Any = None
    tokenizer: Any = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0
    cache_dir: str | None = None


SchedulerBuilder = Callable[[SchedulerSettings, SchedulerContext], DataScheduler]
_BUILDERS: dict[str, SchedulerBuilder] = {}


def register_scheduler(kind: str) -> Callable[[SchedulerBuilder], SchedulerBuilder]:
    """Register a builder for a scheduler kind (used by `build_scheduler`)."""

    def decorator(builder: SchedulerBuilder) -> SchedulerBuilder:
        _BUILDERS[kind] = builder
        return builder

    return decorator


def build_scheduler(settings: SchedulerSettings, context: SchedulerContext) -> DataScheduler:
    """Build the scheduler of `settings.kind`."""
    # Import the built-in kinds so their builders are registered.
    from bds_core.schedulers import scalar  # noqa: F401

    with contextlib.suppress(ModuleNotFoundError):
        from bds_core.schedulers import neural  # noqa: F401
    if settings.kind not in _BUILDERS:
        known = ", ".join(sorted(_BUILDERS)) or "none"
        raise ValueError(f"unknown scheduler kind {settings.kind!r}; known kinds: {known}")
    return _BUILDERS[settings.kind](settings, context)
