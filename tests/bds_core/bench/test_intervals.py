"""Means and 95% t intervals over seeds, and judging targets on them."""

from __future__ import annotations

import math

import pytest

from bds_core.bench.intervals import (
    Interval,
    at_least,
    at_most,
    overlaps,
    seed_interval,
    strictly_below,
    t_quantile_975,
)


def test_three_seeds_give_the_t_interval_with_two_degrees_of_freedom() -> None:
    interval = seed_interval([40.0, 50.0, 60.0])
    assert interval is not None
    assert interval.mean == pytest.approx(50.0)
    # s = 10, n = 3: half-width = 4.303 * 10 / sqrt(3)
    assert interval.half_width == pytest.approx(4.303 * 10 / math.sqrt(3))
    assert interval.n == 3
    assert interval.format() == "50.0 ± 24.8"


def test_one_seed_has_a_mean_and_no_interval_and_missing_values_are_left_out() -> None:
    interval = seed_interval([None, 12.5])
    assert interval == Interval(12.5, None, 1)
    assert interval.format() == "12.5"
    assert interval.low == interval.high == 12.5
    assert seed_interval([None, None]) is None


def test_identical_seeds_give_a_zero_width_interval() -> None:
    interval = seed_interval([0.0, 0.0, 0.0])
    assert interval == Interval(0.0, 0.0, 3)


def test_t_quantiles_match_the_table_and_approach_the_normal() -> None:
    assert t_quantile_975(1) == 12.706
    assert t_quantile_975(2) == 4.303
    assert t_quantile_975(60) == pytest.approx(2.000, abs=2e-3)
    assert t_quantile_975(10_000) == pytest.approx(1.960, abs=1e-3)
    with pytest.raises(ValueError, match="at least 1, got 0"):
        t_quantile_975(0)


def test_targets_are_judged_on_the_whole_interval() -> None:
    hs = Interval(2.0, 1.5, 3)  # 0.5 .. 3.5
    assert at_most(hs, 3.5) and not at_most(hs, 3.0)
    assert at_least(hs, 0.5) and not at_least(hs, 1.0)


def test_below_means_beyond_both_intervals_and_overlap_is_a_tie() -> None:
    low = Interval(1.0, 1.0, 3)  # 0 .. 2
    touching = Interval(3.0, 1.0, 3)  # 2 .. 4
    high = Interval(5.0, 1.0, 3)  # 4 .. 6
    assert strictly_below(low, high) and not strictly_below(high, low)
    assert not strictly_below(low, touching) and overlaps(low, touching)
    assert not overlaps(low, high)
