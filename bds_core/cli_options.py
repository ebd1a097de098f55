"""Typer options built from a settings dataclass's fields (`bds_core.setting_fields`).

`with_setting_options` gives a command one option per field, with the field's flat name,
type, choices, limits, default and help, and hands the command the given values as one
dictionary keyed by field name. A new field is a new option without touching the command.
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, Literal

import typer

from bds_core.setting_fields import SettingField


def _json_object(text: str) -> dict[str, Any]:
    """A JSON object given on the command line: ``'{"encoder": "minilm-static"}'``."""
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as error:
        raise typer.BadParameter(f"{text!r} is not JSON: {error}") from error
    if not isinstance(parsed, dict):
        raise typer.BadParameter(f"{text!r} is not a JSON object")
    return parsed


def setting_option(
    setting: SettingField, *, panel: str, extra_names: Sequence[str] = ()
) -> tuple[Any, Any]:
    """(annotation, default) of the typer parameter that offers `setting`."""
    flag = "--" + setting.flat_name.replace("_", "-")
    if setting.value_type is bool:
        flag = f"{flag}/--no-{flag[2:]}"
    extra: dict[str, Any] = {}
    value_type: Any = setting.value_type
    default = setting.default
    help_text = setting.help
    if setting.choices is not None:
        value_type = Literal[setting.choices]
    elif setting.value_type is dict:
        value_type, default = dict[str, Any], None
        extra = {"parser": _json_object, "metavar": "JSON"}
        help_text += " (a JSON object)"
    elif setting.describe_range() is not None:

        def check(value: Any) -> Any:
            problem = setting.problem(value)
            if problem is not None:
                raise typer.BadParameter(problem)
            return value

        extra = {"callback": check}
        help_text += f" ({setting.describe_range()})"
    if default is None:
        value_type = value_type | None
    option = typer.Option(
        flag, *extra_names, help=help_text, rich_help_panel=panel, show_default=True, **extra
    )
    return Annotated[value_type, option], default


def with_setting_options(
    fields: Sequence[SettingField],
    *,
    into: str,
    panel: str,
    extra_names: Mapping[str, Sequence[str]] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: one typer option per field; the command's parameter `into` receives
    ``{field name: value}``: the values given on the command line and the defaults of the
    others (an unset optional one is left out). `extra_names` adds other spellings."""
    extra_names = extra_names or {}

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(command, eval_str=True)
        kept = [p for p in signature.parameters.values() if p.name != into]
        taken = {p.name for p in kept}
        options = {}
        for setting in fields:
            parameter_name = f"{into}__{setting.name}"
            if parameter_name in taken:
                raise ValueError(f"{command.__name__} already has a parameter {parameter_name}")
            annotation, default = setting_option(
                setting, panel=panel, extra_names=extra_names.get(setting.name, ())
            )
            options[setting.name] = inspect.Parameter(
                parameter_name,
                inspect.Parameter.KEYWORD_ONLY,
                default=default,
                annotation=annotation,
            )

        @functools.wraps(command)
        def run(**kwargs: Any) -> Any:
            values = {name: kwargs.pop(p.name) for name, p in options.items()}
            given = {name: value for name, value in values.items() if value is not None}
            return command(**kwargs, **{into: given})

        run.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=[*kept, *options.values()]
        )
        return run

    return decorate
