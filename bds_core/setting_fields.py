"""What a settings dataclass's fields are, for the front ends that offer them.

A settings dataclass (``SchedulerSettings``, a scheduler kind's options) declares each field
once: its type (a ``Literal`` gives the choices), its default, and in the field's metadata a
``help`` string, its limits (``ge``, ``gt``, ``le``, ``lt``) and, where the bare name would be
ambiguous beside a run's other settings, a ``flat_name``. `setting_fields` reads that into
neutral `SettingField` records from which a command line or a request schema builds its
options; `check_settings` enforces the same choices and limits on the dataclass itself. No web
or CLI library is imported here.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args, get_origin, get_type_hints

_BOUNDS = ("ge", "gt", "le", "lt")


@dataclass(frozen=True)
class SettingField:
    """One field of a settings dataclass, described for a front end.

    `value_type` is the type of a given value (``str``, ``int``, ``float``, ``bool`` or
    ``dict``); `optional` says that None is also allowed; `choices` lists the allowed values
    of a text setting; `flat_name` is the name the setting takes beside a run's other
    settings (an option of ``bds train``, a member of a job's ``method.bds``).
    """

    name: str
    flat_name: str
    value_type: type
    default: Any
    help: str
    optional: bool = False
    choices: tuple[str, ...] | None = None
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def with_choices(self, choices: tuple[str, ...]) -> SettingField:
        """The same field with its allowed values known only at run time (registered kinds)."""
        return dataclasses.replace(self, choices=choices)

    def describe_range(self) -> str | None:
        """The limits in words: '> 0', '>= 1', 'in [0, 1)', ...; None without limits."""
        low = ("(", self.gt) if self.gt is not None else ("[", self.ge)
        high = (")", self.lt) if self.lt is not None else ("]", self.le)
        if low[1] is not None and high[1] is not None:
            return f"in {low[0]}{low[1]}, {high[1]}{high[0]}"
        if low[1] is not None:
            return f"{'>' if low[0] == '(' else '>='} {low[1]}"
        if high[1] is not None:
            return f"{'<' if high[0] == ')' else '<='} {high[1]}"
        return None

    def problem(self, value: Any) -> str | None:
        """Why `value` is not allowed for this field, or None when it is."""
        if value is None:
            return None if self.optional else "must be given"
        if self.choices is not None and value not in self.choices:
            return f"must be one of {', '.join(self.choices)}; got {value!r}"
        if self.value_type in (int, float) and not isinstance(value, bool):
            if isinstance(value, float) and not math.isfinite(value):
                return f"must be a finite number, got {value}"
            in_range = (
                (self.ge is None or value >= self.ge)
                and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le)
                and (self.lt is None or value < self.lt)
            )
            if not in_range:
                return f"must be {self.describe_range()}, got {value}"
        return None


def setting_fields(settings_class: type) -> tuple[SettingField, ...]:
    """The fields of a settings dataclass, in declaration order."""
    hints = get_type_hints(settings_class)
    described = []
    for item in dataclasses.fields(settings_class):
        value_type, optional, choices = _split_type(hints[item.name], item.name)
        if item.default is not dataclasses.MISSING:
            default: Any = item.default
        elif item.default_factory is not dataclasses.MISSING:
            default = item.default_factory()
        else:
            raise TypeError(f"setting {item.name} needs a default")
        metadata = item.metadata
        described.append(
            SettingField(
                name=item.name,
                flat_name=metadata.get("flat_name", item.name),
                value_type=value_type,
                default=default,
                help=metadata.get("help", ""),
                optional=optional,
                choices=choices,
                **{bound: metadata[bound] for bound in _BOUNDS if bound in metadata},
            )
        )
    return tuple(described)


def check_settings(settings: Any, fields: tuple[SettingField, ...], what: str) -> None:
    """Raise ValueError naming the first field whose value breaks its choices or limits."""
    for item in fields:
        problem = item.problem(getattr(settings, item.name))
        if problem is not None:
            raise ValueError(f"{what} {item.name} {problem}")


def from_flat_names(fields: tuple[SettingField, ...], values: Mapping[str, Any]) -> dict[str, Any]:
    """The dataclass keyword arguments among `values` keyed by flat name (others are left)."""
    return {item.name: values[item.flat_name] for item in fields if item.flat_name in values}


def _split_type(hint: Any, name: str) -> tuple[type, bool, tuple[str, ...] | None]:
    """(value type, None allowed, choices) of a field's type hint."""
    args = get_args(hint)
    optional = False
    if get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        optional = True
        (hint,) = [arg for arg in args if arg is not type(None)]
    if get_origin(hint) is Literal:
        choices = get_args(hint)
        if not all(isinstance(choice, str) for choice in choices):
            raise TypeError(f"setting {name}: only text choices are supported")
        return str, optional, choices
    origin = get_origin(hint) or hint
    if origin in (str, int, float, bool, dict):
        return origin, optional, None
    raise TypeError(f"setting {name} has a type front ends cannot offer: {hint!r}")
