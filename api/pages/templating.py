"""Jinja2 templates of the pages (autoescaped: tenant data is shown as text, never as HTML)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from fastapi.templating import Jinja2Templates

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"
STATIC_DIR = Path(__file__).resolve().parent.parent / "static"


def format_time(value: dt.datetime | None) -> str:
    """A UTC time as ``2026-11-28 14:05:09 UTC`` ("-" for none)."""
    if value is None:
        return "-"
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def format_duration(seconds: float | None) -> str:
    """Seconds as ``1 h 02 min``, ``3 min 05 s`` or ``42 s``."""
    if seconds is None:
        return "-"
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


def format_percent(value: float | None, digits: int = 1) -> str:
    """A share in [0, 1] as a percentage ("-" for none)."""
    return "-" if value is None else f"{100 * value:.{digits}f}%"


def format_number(value: Any, digits: int = 3) -> str:
    """A number with a fixed number of decimals; integers stay whole ("-" for none)."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    return str(value) if isinstance(value, int) else f"{value:.{digits}f}"


def format_bytes(value: int | None) -> str:
    """A size for people: ``512 MiB``, ``1.5 GiB``, ``900 bytes`` ("-" for none)."""
    if value is None:
        return "-"
    if value < 1024:
        return f"{value} bytes"
    size = float(value)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        size /= 1024
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if size == int(size) else f"{size:.1f} {unit}"
    raise AssertionError("unreachable")


def format_count(value: int | None) -> str:
    """A whole number with thousands separators: ``100,000`` ("-" for none)."""
    return "-" if value is None else f"{value:,}"


def until(value: dt.datetime | None, now: dt.datetime) -> str:
    """How far ``value`` lies ahead of ``now`` ("-" for none, "now" when past)."""
    if value is None:
        return "-"
    seconds = (value - now).total_seconds()
    return "now" if seconds <= 0 else f"in {format_duration(seconds)}"


templates = Jinja2Templates(directory=str(TEMPLATES_DIR))
templates.env.filters.update(
    time=format_time,
    duration=format_duration,
    percent=format_percent,
    number=format_number,
    bytes=format_bytes,
    count=format_count,
)
templates.env.globals.update(until=until)
