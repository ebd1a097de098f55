"""The scheduler kinds: a name, and the builder that makes a scheduler of that kind.

The built-in kinds register in ``bds_core/schedulers/__init__.py``, the way peft's methods
register from their packages. A builder may be given as ``"module:function"``: it is imported
when the first scheduler of its kind is built, so listing the kinds (the service's request
schema does) needs no torch, and an import error in a kind's module surfaces there, as itself.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    from bds_core.schedulers.base import DataScheduler, SchedulerContext
    from bds_core.schedulers.settings import SchedulerSettings

SchedulerBuilder: TypeAlias = "Callable[[SchedulerSettings, SchedulerContext], DataScheduler]"

_builders: dict[str, SchedulerBuilder | str] = {}  # as registered
_imported: dict[str, SchedulerBuilder] = {}  # "module:function" builders, once imported


def register_scheduler(kind: str, builder: SchedulerBuilder | str) -> None:
    """Register the builder of a scheduler kind: a callable, or ``"module:function"``.

    Registering a kind twice with another builder is refused (two kinds cannot share a name).
    """
    known = _builders.get(kind)
    if known is not None and known != builder:
        raise ValueError(f"scheduler kind {kind!r} is already registered")
    _builders[kind] = builder


def scheduler_kinds() -> tuple[str, ...]:
    """The registered kinds, in registration order (the built-in ``scalar`` first)."""
    return tuple(_builders)


def scheduler_builder(kind: str) -> SchedulerBuilder:
    """The builder of `kind` (imported on first use); ValueError naming the known kinds."""
    builder = _builders.get(kind)
    if builder is None:
        known = ", ".join(sorted(_builders)) or "none"
        raise ValueError(f"unknown scheduler kind {kind!r}; known kinds: {known}")
    if not isinstance(builder, str):
        return builder
    if builder not in _imported:
        module_name, _, name = builder.partition(":")
        _imported[builder] = getattr(import_module(module_name), name)
    return _imported[builder]
