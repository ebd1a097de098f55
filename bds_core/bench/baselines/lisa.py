"""Lisa: lazy safety alignment (Huang et al., arXiv 2405.18641, NeurIPS 2024).

A fine-tuning-stage defence. Bi-State Optimization alternates two states inside the user's
fine-tune: an alignment state (steps on the alignment set D_safe, loss ``f``) and a fine-tuning
state (steps on the user's data D_ft, loss ``h``). Lisa adds a proximal term to each state
(the paper's Algorithm 1) that keeps it from drifting too far from where the other state left
the weights:

    alignment state:   min_w  f(w) + rho / 2 * ||w - w_ft||^2
    fine-tuning state: min_w  h(w) + rho / 2 * ||w - w_al||^2

where ``w_ft`` is the checkpoint at the end of the last fine-tuning state (the starting weights
before the first one) and ``w_al`` the checkpoint at the end of the last alignment state. Each
round runs the alignment state first, then the fine-tuning state, so the model handed back is
the last fine-tuning iterate. The norm is over the trainable (LoRA) parameters.

Hyperparameters: ``rho = 1``, the paper's default proximal intensity. The paper switches
states after 100 alignment and 900 fine-tuning steps of 1000-step runs; a benchmark cell here
has about 125 user steps, where that split would mean a single switch, so a round here is
``round_user_steps`` user steps (default 10) and the alignment steps of a round are set by the
alignment budget that mix and BDS get: ``alignment_rows_per_step * user steps / batch size``
(8 alignment rows a step: as many alignment steps as user steps; the reduced budget of 2: one
alignment step per four user steps), with ``ceil(user steps / k)`` in place of the user steps
when mix and BDS take their alignment batch every k-th step only (``safety_every``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from bds_core.bench.baselines.common import (
    BatchStream,
    answer_loss,
    parameter_vector,
    squared_distance,
    trainable_parameters,
)

LisaState = Literal["alignment", "fine-tuning"]


@dataclass(frozen=True)
class LisaSettings:
    """Lisa's proximal intensity and how its two states alternate."""

    rho: float = field(default=1.0, metadata={"help": "proximal intensity (the paper's default)"})
    round_user_steps: int = field(
        default=10, metadata={"help": "fine-tuning-state (user) steps per round"}
    )

    def __post_init__(self) -> None:
        if not (self.rho >= 0 and math.isfinite(self.rho)):
            raise ValueError(f"lisa rho must be a number >= 0, got {self.rho}")
        if self.round_user_steps < 1:
            raise ValueError(
                f"lisa round_user_steps must be at least 1, got {self.round_user_steps}"
            )


def lisa_schedule(user_steps: int, alignment_steps: int, round_user_steps: int) -> list[LisaState]:
    """The state of every step: rounds of alignment steps, then ``round_user_steps`` user steps;
    the alignment steps are spread over the rounds as evenly as whole steps allow."""
    if user_steps < 1:
        raise ValueError(f"user_steps must be at least 1, got {user_steps}")
    if alignment_steps < 0:
        raise ValueError(f"alignment_steps must be >= 0, got {alignment_steps}")
    rounds = math.ceil(user_steps / round_user_steps)
    schedule: list[LisaState] = []
    for index in range(rounds):
        aligned_before = alignment_steps * index // rounds
        aligned_after = alignment_steps * (index + 1) // rounds
        users = min(round_user_steps, user_steps - index * round_user_steps)
        schedule += ["alignment"] * (aligned_after - aligned_before)
        schedule += ["fine-tuning"] * users
    return schedule


def alignment_steps_for(
    user_steps: int, alignment_rows_per_step: int, batch_size: int, alignment_every: int = 1
) -> int:
    """Alignment steps (of ``batch_size`` rows) that spend the same alignment rows as mix/BDS,
    which take ``alignment_rows_per_step`` rows on every ``alignment_every``-th step (steps
    0, k, 2k, ...: ceil(user_steps / k) of them)."""
    if alignment_every < 1:
        raise ValueError(f"alignment_every must be at least 1, got {alignment_every}")
    return round(math.ceil(user_steps / alignment_every) * alignment_rows_per_step / batch_size)


@dataclass
class LisaResult:
    """The trace of a Lisa run: the state, loss and proximal distance of every step."""

    states: list[LisaState]
    losses: list[float]
    distances: list[float]


def lisa_train(
    model: nn.Module,
    user_stream: BatchStream,
    safety_stream: BatchStream,
    optimizer: torch.optim.Optimizer,
    schedule: list[LisaState],
    settings: LisaSettings,
    on_step: object = None,
) -> LisaResult:
    """Run Lisa's schedule on ``model`` (its trainable parameters), in place.

    ``on_step``, when callable, receives ``(step, total)`` after each step.
    """
    params = trainable_parameters(model)
    anchor = parameter_vector(params)  # the other state's checkpoint (start: initial weights)
    previous: LisaState | None = None
    result = LisaResult([], [], [])
    for step, state in enumerate(schedule, start=1):
        if previous is not None and state != previous:
            anchor = parameter_vector(params)  # switching: the state just left is the anchor
        previous = state
        batch = safety_stream.next() if state == "alignment" else user_stream.next()
        optimizer.zero_grad(set_to_none=True)
        loss = answer_loss(model, batch)
        distance = squared_distance(params, anchor)
        (loss + settings.rho / 2 * distance).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        result.states.append(state)
        result.losses.append(loss.item())
        result.distances.append(distance.item())
        if callable(on_step):
            on_step(step, len(schedule))
    return result
