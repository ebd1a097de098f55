"""Data schedulers: per-example safety weights inferred by BDS."""

from bds_core.schedulers.base import (
    BatchShard,
    DataScheduler,
    SchedulerContext,
    SchedulerSettings,
    build_scheduler,
    register_scheduler,
    transform_logits,
)
from bds_core.schedulers.scalar import ScalarScheduler

__all__ = [
    "BatchShard",
    "DataScheduler",
    "ScalarScheduler",
    "SchedulerContext",
    "SchedulerSettings",
    "build_scheduler",
    "register_scheduler",
    "transform_logits",
]
