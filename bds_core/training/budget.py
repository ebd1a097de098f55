"""The alignment budget: how many alignment rows a step trains on.

Unset (``safety_batch_size=None``), the budget is a quarter of the customer batch, rounded up
(docs/performance.md, "Quality evidence for the candidate budget"), and then rounded up to a
multiple of the step's parts (processes x gradient-accumulation micro-batches), so that every
process and every micro-batch gets at least one alignment row. A budget that is set is used as
it is (`TrainConfig.check_split` refuses one too small to split).

This is the one place the default is computed: the trainer, its samplers, `check_split`,
`bds bench speed` and the service all call `resolve_safety_batch_size`.
"""

from __future__ import annotations

import math

DEFAULT_SAFETY_SHARE = 4
"""An unset budget is ceil(batch_size / DEFAULT_SAFETY_SHARE) alignment rows per step."""


def resolve_safety_batch_size(
    batch_size: int,
    safety_batch_size: int | None,
    world_size: int = 1,
    gradient_accumulation_steps: int = 1,
) -> int:
    """Alignment rows per step: `safety_batch_size` when set, else the default budget.

    The default is ceil(batch_size / 4), at least 1, rounded up to a multiple of
    ``world_size * gradient_accumulation_steps``. It is the same for every process count
    that divides ceil(batch_size / 4) (batch 8: 2 rows on 1 or 2 processes); otherwise a run
    on more processes trains on a few more alignment rows per step.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if world_size < 1 or gradient_accumulation_steps < 1:
        raise ValueError(
            "world_size and gradient_accumulation_steps must be positive, got "
            f"{world_size} and {gradient_accumulation_steps}"
        )
    if safety_batch_size is not None:
        return safety_batch_size
    parts = world_size * gradient_accumulation_steps
    quarter = max(1, math.ceil(batch_size / DEFAULT_SAFETY_SHARE))
    return math.ceil(quarter / parts) * parts


__all__ = ["DEFAULT_SAFETY_SHARE", "resolve_safety_batch_size"]
