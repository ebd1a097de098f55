"""Data schedulers: per-example safety weights inferred by BDS.

The built-in kinds register here. The settings and the registry need no torch, so the web
service can describe ``method.bds`` and list the kinds cheaply; the names that need torch
(the schedulers themselves, ``build_scheduler``) are imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bds_core.lazy import lazy_attributes
from bds_core.schedulers.registry import register_scheduler, scheduler_builder, scheduler_kinds
from bds_core.schedulers.settings import (
    SchedulerSettings,
    scheduler_setting_fields,
    scheduler_settings_from_flat,
)

register_scheduler("scalar", "bds_core.schedulers.scalar:build_scalar")
register_scheduler("neural", "bds_core.schedulers.neural:build_neural")

if TYPE_CHECKING:
    from bds_core.schedulers.base import (
        BatchShard,
        DataScheduler,
        SchedulerContext,
        build_scheduler,
        transform_logits,
    )
    from bds_core.schedulers.scalar import ScalarScheduler

_LAZY_NAMES = {
    "BatchShard": "bds_core.schedulers.base",
    "DataScheduler": "bds_core.schedulers.base",
    "SchedulerContext": "bds_core.schedulers.base",
    "build_scheduler": "bds_core.schedulers.base",
    "transform_logits": "bds_core.schedulers.base",
    "ScalarScheduler": "bds_core.schedulers.scalar",
}


__getattr__ = lazy_attributes(__name__, _LAZY_NAMES)


__all__ = [
    "BatchShard",
    "DataScheduler",
    "ScalarScheduler",
    "SchedulerContext",
    "SchedulerSettings",
    "build_scheduler",
    "register_scheduler",
    "scheduler_builder",
    "scheduler_kinds",
    "scheduler_setting_fields",
    "scheduler_settings_from_flat",
    "transform_logits",
]
