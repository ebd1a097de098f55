"""Data schedulers: per-example safety weights inferred by BDS."""

from bds_core.schedulers.base import (
    DataScheduler,
    SchedulerContext,
    SchedulerSettings,
    build_scheduler,
    register_scheduler,
    transform_logits,
)
from bds_core.schedulers.scalar import ScalarScheduler

__all__ = [
    "DataScheduler",
    "ScalarScheduler",
    "SchedulerContext",
    "SchedulerSettings",
    "build_scheduler",
    "register_scheduler",
    "transform_logits",
]
