"""The alignment budget: how many alignment rows a step trains on.

Unset (``safety_batch_size=None``), the budget is a quarter of the customer batch, rounded up
(docs/performance.md, "Quality evidence for the candidate budget"), at least one row, and then
rounded up to a multiple of the data-parallel process count, so that every process gets at
least one alignment row of each step. A budget that is set is used as it is
(`TrainConfig.check_split` refuses one too small to split).

This is the one place the default is computed: the trainer, its samplers, `check_split`,
`bds bench speed` and the service all call `resolve_safety_batch_size`. The module imports
nothing of the ML stack (not under `bds_core.training`, whose package imports torch), so the
web service plans a job's budget without loading it.
"""

from __future__ import annotations

import math
from typing import Final

DEFAULT_SAFETY_SHARE = 4
"""An unset budget is ceil(batch_size / DEFAULT_SAFETY_SHARE) alignment rows per step."""

DEFAULT_LOSS_TIMING: Final = "before"
"""The scheduler step's losses by default: the model step's own (`SchedulerSettings.loss_timing`)."""

PRE_SWITCH_LOSS_TIMING: Final = "after"
"""The default loss timing before the candidate budget became the default (with a budget of
`batch_size` alignment rows): what a service job stored without its budget trains with, and
what scheduler pretraining and the benchmark's cells pin so their keys and provenance hold."""


def resolve_safety_batch_size(
    batch_size: int, safety_batch_size: int | None, world_size: int = 1
) -> int:
    """Alignment rows per step: `safety_batch_size` when set, else the default budget.

    The default is ceil(batch_size / 4), at least 1, rounded up to a multiple of
    `world_size`. It is the same on every process count that divides ceil(batch_size / 4)
    (batch 8: 2 rows on 1 or 2 processes); on others a run takes a few more alignment rows
    per step than on one process (batch 4 on 2 processes: 2 rows, not 1).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if world_size < 1:
        raise ValueError(f"world_size must be positive, got {world_size}")
    if safety_batch_size is not None:
        return safety_batch_size
    quarter = max(1, math.ceil(batch_size / DEFAULT_SAFETY_SHARE))
    return math.ceil(quarter / world_size) * world_size


__all__ = [
    "DEFAULT_LOSS_TIMING",
    "DEFAULT_SAFETY_SHARE",
    "PRE_SWITCH_LOSS_TIMING",
    "resolve_safety_batch_size",
]
