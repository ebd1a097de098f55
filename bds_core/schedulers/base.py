"""The data-scheduler interface: how a training example becomes a training weight.

A scheduler holds the parameters of BDS's safety attributes (one logit per example for the
scalar scheduler, a small network over example embeddings for the neural one) and turns them
into per-example weights. The trainer only talks to this interface. The settings are declared
in `settings.py`, the kinds and their builders registered in `registry.py`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from bds_core.schedulers.registry import SchedulerBuilder, register_scheduler, scheduler_builder
from bds_core.schedulers.settings import (
    LossTiming,
    ReferenceLoss,
    SchedulerSettings,
    SchedulerUpdate,
    WeightTransform,
)


def transform_logits(logits: torch.Tensor, transform: str) -> torch.Tensor:
    """Map safety logits to weights; softmax weights are scaled to sum to len(logits)."""
    if transform == "softmax":
        return logits.shape[-1] * torch.softmax(logits, dim=-1)
    if transform == "sigmoid":
        return 2.0 * torch.sigmoid(logits)
    if transform == "identity":
        # Clamped: a negative weight would be gradient ascent on that example.
        return logits.clamp_min(0.0)
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
        # The run's number of scheduler updates (set by the trainer): burn-in is a share of it.
        self.total_updates: int | None = None

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

    @property
    def samples(self) -> bool:
        """Whether this scheduler samples its posterior (pSGLD) rather than optimising."""
        return self.settings.sgld

    def set_prior_centre(self) -> None:
        """Record the current parameters as the centre of the Gaussian prior (once, at build).

        Stored as buffers, so checkpoints keep the centre of a run that started from a
        pretrained scheduler.
        """
        for name, parameter in self.named_parameters():
            if parameter.requires_grad:
                self.register_buffer(_centre_name(name), parameter.detach().clone())

    def log_prior_penalty(self) -> torch.Tensor:
        """-log p(a) up to a constant: sum ||a - a_0||^2 / (2 sigma^2) over the parameters."""
        sigma = self.settings.prior_std
        buffers = dict(self.named_buffers())
        total = torch.zeros((), device=self.iterates.device)
        for name, parameter in self.named_parameters():
            if not parameter.requires_grad:
                continue
            centre = buffers.get(_centre_name(name))
            if centre is None:
                raise RuntimeError(
                    "the scheduler has no prior centre; build it with build_scheduler or call "
                    "set_prior_centre()"
                )
            total = total + ((parameter - centre) ** 2).sum() / (2.0 * sigma**2)
        return total

    def posterior_energy(
        self,
        indices: torch.Tensor,
        losses: torch.Tensor,
        reference: torch.Tensor,
        shard: BatchShard | None = None,
    ) -> torch.Tensor:
        """U(a): the N-scaled negative log posterior that pSGLD samples (exp(-U/T)).

        N times the batch's scheduler loss is an unbiased mini-batch estimate of the full-data
        term sum_i w_i (l_i - r_i) (for the batch update, of its batch-centred form), and the
        Gaussian prior is added once per global batch (each data-parallel slice its share).
        """
        if shard is None:
            shard = BatchShard(indices, 0)
        energy = self.num_examples * self.scheduler_loss(indices, losses, reference, shard)
        share = len(indices) / len(shard.batch_indices)
        return energy + share * self.log_prior_penalty()

    @torch.no_grad()
    def after_update(self) -> None:
        """Count the update and keep the weights as a sample (iterate) when one is due.

        Sampling, the first `sgld_burn_in` share of the run's `total_updates` is burn-in and
        not kept; then every `record_every`-th state is kept (thinning). Optimising, every
        `record_every`-th iterate is kept.
        """
        self.n_updates += 1
        since = int(self.n_updates) - self.burn_in_updates()
        if since > 0 and since % self.settings.record_every == 0:
            slot = int(self.n_recorded) % self.settings.record_last
            self.iterates[slot] = self.all_weights().to(self.iterates.device)
            self.n_recorded += 1

    def burn_in_updates(self) -> int:
        """Updates discarded before samples are kept (0 when optimising or the run length is
        unknown)."""
        if not self.samples or self.total_updates is None:
            return 0
        return int(self.settings.sgld_burn_in * self.total_updates)

    @torch.no_grad()
    def weight_summary(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-example mean and standard deviation of the weight over the kept samples.

        Without kept samples (no update yet) the mean is the current weight and the spread
        is zero. See `summarise_weights` for the interval and what the spread means.
        """
        summary = self.summarise_weights()
        return summary.mean, summary.std

    @torch.no_grad()
    def summarise_weights(self, level: float = 0.9) -> WeightSummary:
        """Per-example mean, spread and central `level` interval over the kept samples.

        Sampling, these are posterior summaries (kind "posterior"); optimising, they describe
        the optimiser's last iterates (kind "optimisation"), which is not an uncertainty.
        """
        count = min(int(self.n_recorded), self.settings.record_last)
        kind: UncertaintyKind = "posterior" if self.samples else "optimisation"
        if count == 0:
            current = self.all_weights()
            return WeightSummary(current, torch.zeros_like(current), current, current, 0, kind)
        recorded = self.iterates[:count].float()
        std = recorded.std(dim=0, unbiased=False) if count > 1 else torch.zeros_like(recorded[0])
        tail = (1.0 - level) / 2.0
        quantiles = torch.quantile(
            recorded, torch.tensor([tail, 1.0 - tail], device=recorded.device), dim=0
        )
        return WeightSummary(recorded.mean(dim=0), std, quantiles[0], quantiles[1], count, kind)


UncertaintyKind = Literal["posterior", "optimisation", "none"]


@dataclass(frozen=True)
class WeightSummary:
    """Each example's weight over the kept samples: mean, standard deviation and interval.

    `kind` says what the spread is: "posterior" (pSGLD samples of the posterior),
    "optimisation" (the optimiser's last iterates: jitter, not uncertainty) or "none" (fixed
    weights).
    """

    mean: torch.Tensor
    std: torch.Tensor
    low: torch.Tensor
    high: torch.Tensor
    n_samples: int
    kind: UncertaintyKind


def _centre_name(parameter_name: str) -> str:
    return "prior_centre__" + parameter_name.replace(".", "__")


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


def build_scheduler(settings: SchedulerSettings, context: SchedulerContext) -> DataScheduler:
    """Build the scheduler of `settings.kind`, with its prior centred on its starting point."""
    scheduler = scheduler_builder(settings.kind)(settings, context)
    scheduler.set_prior_centre()
    return scheduler


def make_scheduler_optimizer(
    scheduler: DataScheduler, generator: torch.Generator
) -> torch.optim.Optimizer:
    """AdamW on the scheduler parameters, or the pSGLD sampler when `settings.sgld` is on.

    `generator` supplies the sampler's noise (the trainer seeds and checkpoints it).
    """
    from bds_core.schedulers.sampling import PreconditionedSGLD

    settings = scheduler.settings
    trainable = [p for p in scheduler.parameters() if p.requires_grad]
    if settings.sgld:
        return PreconditionedSGLD(
            trainable,
            lr=settings.learning_rate,
            generator=generator,
            temperature=settings.sgld_temperature,
            decay=settings.sgld_step_decay,
            adapt_steps=scheduler.burn_in_updates(),
        )
    return torch.optim.AdamW(
        trainable, lr=settings.learning_rate, weight_decay=settings.weight_decay
    )


__all__ = [
    "BatchShard",
    "DataScheduler",
    "LossTiming",
    "ReferenceLoss",
    "SchedulerBuilder",
    "SchedulerContext",
    "SchedulerSettings",
    "SchedulerUpdate",
    "WeightSummary",
    "WeightTransform",
    "build_scheduler",
    "initial_logit",
    "make_scheduler_optimizer",
    "register_scheduler",
    "transform_logits",
]
