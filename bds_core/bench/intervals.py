"""Means and 95% intervals over fine-tuning seeds, and judging targets on them.

The benchmark runs every compared cell at several fine-tuning seeds with the data fixed. A
metric's interval is the two-sided Student t interval over the seeds' values:
``mean ± t_{0.975, n-1} * s / sqrt(n)``, with ``s`` the sample standard deviation. It is an
interval over seeds (training randomness: data order, LoRA initialisation), not over prompts;
one seed gives a mean with no interval. A target is met only when it holds for the whole
interval (`Interval.high` for a ceiling, `Interval.low` for a floor), and a method is "below"
another only when the intervals do not overlap.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

INTERVAL_METHOD = "95% t interval over fine-tuning seeds"
"""How the report's intervals are computed (printed with them)."""

_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip
"""Two-sided 95% quantiles of Student's t, t_{0.975, df} for df = 1..30."""


def t_quantile_975(df: int) -> float:
    """t_{0.975, df}: the table up to 30 degrees of freedom, then a Cornish-Fisher expansion
    of the normal quantile (error below 0.001 there)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be at least 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


@dataclass(frozen=True)
class Interval:
    """A metric over seeds: its mean and the half-width of its 95% t interval (None for n=1)."""

    mean: float
    half_width: float | None
    n: int

    @property
    def low(self) -> float:
        return self.mean - (self.half_width or 0.0)

    @property
    def high(self) -> float:
        return self.mean + (self.half_width or 0.0)

    def format(self, digits: int = 1) -> str:
        """``mean ± half-width`` (``mean`` alone for one seed)."""
        if self.half_width is None:
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.half_width:.{digits}f}"

    def to_dict(self) -> dict[str, float | int | None]:
        return {"mean": self.mean, "half_width": self.half_width, "n": self.n}


def seed_interval(values: Sequence[float | None]) -> Interval | None:
    """The 95% t interval of the values that are not None (one per seed); None when none is."""
    known = [float(value) for value in values if value is not None]
    if not known:
        return None
    n = len(known)
    mean = sum(known) / n
    if n == 1:
        return Interval(mean, None, 1)
    variance = sum((value - mean) ** 2 for value in known) / (n - 1)
    return Interval(mean, t_quantile_975(n - 1) * math.sqrt(variance / n), n)


def at_most(interval: Interval, ceiling: float) -> bool:
    """Whether the whole interval lies at or below ``ceiling``."""
    return interval.high <= ceiling


def at_least(interval: Interval, floor: float) -> bool:
    """Whether the whole interval lies at or above ``floor``."""
    return interval.low >= floor


def strictly_below(first: Interval, second: Interval) -> bool:
    """Whether ``first`` lies below ``second`` beyond both intervals (they do not overlap)."""
    return first.high < second.low


def overlaps(first: Interval, second: Interval) -> bool:
    """Whether the two intervals share a point (a tie at this number of seeds)."""
    return not (first.high < second.low or second.high < first.low)
