"""A job's history as numbers: progress, loss and weight series, and final weights per example.

Built from the metrics events the runner records and the job's safety report, for the
dashboard's and the customer's pages (and their plots).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bds_service.models import JobEvent


@dataclass(frozen=True)
class Progress:
    """Where a running job stands, from its newest metrics event."""

    step: int
    total_steps: int
    percent: float
    train_loss: float | None
    eta: dt.datetime | None
    updated_at: dt.datetime


def progress_from_event(event: JobEvent | None) -> Progress | None:
    """The progress in a metrics event (None without one); ETA = event time + eta_s."""
    if event is None or not event.data:
        return None
    data = event.data
    eta_s = data.get("eta_s")
    return Progress(
        step=int(data.get("step", 0)),
        total_steps=int(data.get("total_steps", 0)),
        percent=float(data.get("percent", 0.0)),
        train_loss=_number(data.get("train_loss")),
        eta=event.created_at + dt.timedelta(seconds=float(eta_s)) if eta_s is not None else None,
        updated_at=event.created_at,
    )


@dataclass(frozen=True)
class EvaluationProgress:
    """Where the post-training evaluation of a job stands, from its newest evaluation event."""

    done: int
    total: int
    percent: float
    stage: str | None
    eta: dt.datetime | None
    updated_at: dt.datetime


def evaluation_progress(events: Sequence[JobEvent]) -> EvaluationProgress | None:
    """The evaluation progress in the newest evaluation event of ``events`` (any order);
    None when the evaluation has not started or has already reported its result."""
    newest = max(
        (e for e in events if (e.data or {}).get("phase") == "evaluation"),
        key=lambda e: e.seq,
        default=None,
    )
    if newest is None or newest.data is None or "total" not in newest.data:
        return None
    data = newest.data
    eta_s = data.get("eta_s")
    return EvaluationProgress(
        done=int(data.get("done", 0)),
        total=int(data["total"]),
        percent=float(data.get("percent", 0.0)),
        stage=data.get("stage"),
        eta=newest.created_at + dt.timedelta(seconds=float(eta_s)) if eta_s is not None else None,
        updated_at=newest.created_at,
    )


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


@dataclass
class MetricsSeries:
    """Per-step series from metrics events (one point per recorded step, in step order)."""

    steps: list[int] = field(default_factory=list)
    train_loss: list[float | None] = field(default_factory=list)
    task_loss: list[float | None] = field(default_factory=list)
    safety_loss: list[float | None] = field(default_factory=list)
    weight_mean: list[float | None] = field(default_factory=list)
    weight_std: list[float | None] = field(default_factory=list)
    weight_min: list[float | None] = field(default_factory=list)
    weight_max: list[float | None] = field(default_factory=list)
    share_below_half: list[float | None] = field(default_factory=list)

    @property
    def has_weights(self) -> bool:
        """Whether any step recorded weight statistics (BDS runs do, plain SFT does not)."""
        return any(value is not None for value in self.weight_mean)


def metrics_series(events: Sequence[JobEvent]) -> MetricsSeries:
    """The loss and weight series of a job's metrics events; a step recorded twice (after a
    resume) keeps its latest values."""
    by_step: dict[int, dict[str, Any]] = {}
    for event in events:
        if event.event_type == "metrics" and event.data and "step" in event.data:
            by_step[int(event.data["step"])] = event.data
    series = MetricsSeries()
    for step in sorted(by_step):
        data = by_step[step]
        stats = data.get("weight_stats") or {}
        series.steps.append(step)
        series.train_loss.append(_number(data.get("train_loss")))
        series.task_loss.append(_number(data.get("task_loss")))
        series.safety_loss.append(_number(data.get("safety_loss")))
        series.weight_mean.append(_number(stats.get("mean")))
        series.weight_std.append(_number(stats.get("std")))
        series.weight_min.append(_number(stats.get("min")))
        series.weight_max.append(_number(stats.get("max")))
        series.share_below_half.append(_number(stats.get("share_below_half")))
    return series


@dataclass(frozen=True)
class ExampleWeight:
    """One training example after the job: its final BDS weight and its pre-training score."""

    line: int
    example_id: str
    weight: float
    harm_score: float | None
    flagged: bool | None
    # The 90% posterior interval when the job sampled its weights (`uncertainty` "posterior");
    # None for optimised weights, whose spread is not an uncertainty, and for older reports.
    low: float | None = None
    high: float | None = None

    @property
    def interval_below_one(self) -> bool:
        """Whether the posterior interval lies entirely below 1 (confidently down-weighted)."""
        return self.high is not None and self.high < 1.0


def final_weights(
    job_report: dict[str, Any] | None, dataset_report: dict[str, Any] | None
) -> list[ExampleWeight]:
    """Final per-example weights of a job joined (by example id) with the training file's
    safety report scores, in line order; empty until the job has a report."""
    rows = ((job_report or {}).get("weights") or {}).get("examples") or []
    scores = {str(example["id"]): example for example in (dataset_report or {}).get("examples", [])}
    weights = []
    for row in rows:
        score = scores.get(str(row.get("id")))
        weights.append(
            ExampleWeight(
                line=int(row.get("line", 0)),
                example_id=str(row.get("id")),
                weight=float(row.get("weight", 0.0)),
                harm_score=None if score is None else float(score["harm_score"]),
                flagged=None if score is None else bool(score["flagged"]),
                **_interval(row),
            )
        )
    return sorted(weights, key=lambda weight: weight.line)


def _interval(row: dict[str, Any]) -> dict[str, float | None]:
    """A row's posterior interval; rows written before intervals existed (whose `weight_std`
    was an optimiser's spread) and optimised rows have none."""
    if row.get("uncertainty") != "posterior":
        return {"low": None, "high": None}
    return {"low": _number(row.get("weight_low")), "high": _number(row.get("weight_high"))}
