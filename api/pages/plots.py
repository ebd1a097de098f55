"""Plots rendered on the server as PNG (matplotlib's Agg canvas, no pyplot global state).

Each function takes plain numbers and returns PNG bytes, so pages need no JavaScript to show
them and a plot can be tested without a browser.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Sequence
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from bds_service.jobs.history import ExampleWeight, MetricsSeries

WIDTH_IN, HEIGHT_IN, DPI = 7.2, 3.2, 100
BLUE, ORANGE, GREEN, RED, GREY = "#1f6feb", "#d97706", "#15803d", "#b91c1c", "#6b7280"


def _figure(columns: int = 1) -> tuple[Figure, list[Any]]:
    figure = Figure(figsize=(WIDTH_IN, HEIGHT_IN), dpi=DPI, layout="constrained")
    axes = figure.subplots(1, columns, squeeze=False)[0]
    return figure, list(axes)


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    FigureCanvasAgg(figure).print_png(buffer)
    return buffer.getvalue()


def _empty(axis: Any, message: str) -> None:
    axis.text(0.5, 0.5, message, ha="center", va="center", color=GREY, transform=axis.transAxes)
    axis.set_xticks([])
    axis.set_yticks([])


def _points(steps: Sequence[int], values: Sequence[float | None]) -> tuple[list[int], list[float]]:
    pairs = [(step, value) for step, value in zip(steps, values, strict=True) if value is not None]
    return [step for step, _ in pairs], [value for _, value in pairs]


def loss_plot(series: MetricsSeries) -> bytes:
    """Training loss per step, with the task and safety parts when the method has them."""
    figure, (axis,) = _figure()
    drawn = False
    for label, values, color in (
        ("training loss", series.train_loss, BLUE),
        ("task loss", series.task_loss, ORANGE),
        ("safety loss", series.safety_loss, GREEN),
    ):
        steps, points = _points(series.steps, values)
        if points:
            axis.plot(
                steps,
                points,
                marker="o" if len(points) < 30 else None,
                ms=3,
                lw=1.5,
                label=label,
                color=color,
            )
            drawn = True
    if drawn:
        axis.set_xlabel("step")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_ylabel("loss")
        axis.grid(alpha=0.3)
        axis.legend(loc="upper right", fontsize=8)
    else:
        _empty(axis, "no training steps recorded yet")
    return _png(figure)


def _interval_bars(axis: Any, rows: Sequence[ExampleWeight], color: str) -> None:
    """Each sampled weight's 90% posterior interval as a vertical bar (none when optimised)."""
    sampled = [r for r in rows if r.low is not None and r.high is not None]
    if sampled:
        axis.vlines(
            [r.harm_score for r in sampled],
            [r.low for r in sampled],
            [r.high for r in sampled],
            color=color,
            alpha=0.35,
            lw=1,
        )


def weights_plot(
    series: MetricsSeries,
    final: Sequence[ExampleWeight],
    no_weights: str = "no weight statistics recorded",
) -> bytes:
    """Left: the spread of BDS weights over the steps (min-max and mean ± std around the mean).
    Right: each example's final weight against its pre-training harm score; flagged examples
    in red, so harmful-looking examples sinking to low weight is visible at a glance."""
    figure, (over_time, per_example) = _figure(2)
    steps, means = _points(series.steps, series.weight_mean)
    if means:
        lows = [
            v if v is not None else m
            for v, m in zip(series.weight_min, series.weight_mean, strict=True)
        ]
        highs = [
            v if v is not None else m
            for v, m in zip(series.weight_max, series.weight_mean, strict=True)
        ]
        stds = [v or 0.0 for v in series.weight_std]
        mean_all = [m if m is not None else 0.0 for m in series.weight_mean]
        over_time.fill_between(series.steps, lows, highs, color=BLUE, alpha=0.15, label="min-max")
        over_time.fill_between(
            series.steps,
            [m - s for m, s in zip(mean_all, stds, strict=True)],
            [m + s for m, s in zip(mean_all, stds, strict=True)],
            color=BLUE,
            alpha=0.3,
            label="mean ± std across examples",
        )
        over_time.plot(steps, means, color=BLUE, lw=1.5, label="mean")
        over_time.set_xlabel("step")
        over_time.xaxis.set_major_locator(MaxNLocator(integer=True))
        over_time.set_ylabel("example weight")
        over_time.set_title("weights during training", fontsize=9)
        over_time.grid(alpha=0.3)
        over_time.legend(fontsize=7, loc="upper left")
    else:
        _empty(over_time, no_weights)
    if not final:
        _empty(per_example, "final weights appear when the job succeeds")
    elif any(row.harm_score is not None for row in final):
        scored = [row for row in final if row.harm_score is not None]
        for flagged, color, label in ((False, BLUE, "not flagged"), (True, RED, "flagged")):
            rows = [row for row in scored if bool(row.flagged) == flagged]
            if rows:
                per_example.scatter(
                    [r.harm_score for r in rows],
                    [r.weight for r in rows],
                    s=14,
                    color=color,
                    alpha=0.8,
                    label=label,
                )
                _interval_bars(per_example, rows, color)
        per_example.set_xlabel("harm score before training")
        per_example.set_ylabel("final weight")
        per_example.set_xlim(-0.03, 1.03)
        sampled = any(row.high is not None for row in final)
        per_example.set_title(
            "posterior mean and 90% interval per example"
            if sampled
            else "final weight per example (optimised: no interval)",
            fontsize=9,
        )
        per_example.grid(alpha=0.3)
        per_example.legend(fontsize=7, loc="upper right")
    else:
        per_example.hist([row.weight for row in final], bins=20, color=BLUE)
        per_example.set_xlabel("final weight")
        per_example.set_ylabel("examples")
        per_example.set_title("final weights (no safety report to compare)", fontsize=9)
    return _png(figure)


def harm_histogram(report: dict[str, Any]) -> bytes:
    """The safety report's harm score histogram; bins at or past the flag threshold in red."""
    figure, (axis,) = _figure()
    histogram = report.get("histogram") or {}
    edges: list[float] = list(histogram.get("bin_edges") or [])
    counts: list[int] = list(histogram.get("counts") or [])
    if len(edges) != len(counts) + 1 or not counts:
        _empty(axis, "no histogram in this report")
        return _png(figure)
    threshold = float((report.get("scheduler") or {}).get("threshold", 0.5))
    widths = [right - left for left, right in itertools.pairwise(edges)]
    colors = [RED if left >= threshold else BLUE for left in edges[:-1]]
    axis.bar(edges[:-1], counts, width=widths, align="edge", color=colors, edgecolor="white")
    axis.axvline(threshold, color=RED, ls="--", lw=1)
    axis.text(
        threshold,
        max(counts) * 0.95 if max(counts) else 1,
        f" flag threshold {threshold:.2f}",
        color=RED,
        fontsize=8,
        va="top",
    )
    axis.set_xlim(0, 1)
    axis.set_xlabel("harm score (0 looks benign, 1 looks harmful)")
    axis.set_ylabel("examples")
    axis.grid(alpha=0.3, axis="y")
    return _png(figure)
