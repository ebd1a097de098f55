"""The job's safety report says what each example's spread means."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from bds_core.training import TrainResult
from bds_service.jobs.runner import _safety_report


def _report(tmp_path: Path, rows: list[dict[str, Any]], metrics: dict[str, Any]) -> Any:
    weights = tmp_path / "weights.jsonl"
    weights.write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = TrainResult(
        out_dir=tmp_path,
        adapter_dir=None,
        weights_file=weights,
        metrics_file=None,
        metrics=metrics,
        steps=4,
    )
    plan = SimpleNamespace(method_type="bds", model="tiny-random-llama")
    return _safety_report(plan, result, {})  # type: ignore[arg-type]


def test_a_sampled_job_reports_posterior_intervals(tmp_path: Path) -> None:
    row = {
        "index": 0,
        "id": "a",
        "line": 1,
        "weight": 0.5,
        "weight_mean": 0.5,
        "uncertainty": "posterior",
        "weight_std": 0.1,
        "weight_low": 0.3,
        "weight_high": 0.7,
        "interval_level": 0.9,
        "n_samples": 5,
    }
    uncertainty = {"kind": "posterior", "n_samples": 5, "share_interval_below_one": 1.0}
    report = _report(tmp_path, [row], {"weight_uncertainty": uncertainty})
    assert report["weights"]["uncertainty"] == uncertainty
    assert report["weights"]["examples"][0]["weight_high"] == 0.7


def test_rows_without_a_kind_are_optimisation_spread(tmp_path: Path) -> None:
    old_row = {"index": 0, "id": "a", "line": 1, "weight": 0.9, "weight_std": 0.02}
    report = _report(tmp_path, [old_row], {})
    assert report["weights"]["uncertainty"] == {"kind": "optimisation"}


def test_an_optimised_job_names_its_spread_and_has_no_interval(tmp_path: Path) -> None:
    row = {
        "index": 0,
        "id": "a",
        "line": 1,
        "weight": 0.8,
        "weight_mean": 0.79,
        "uncertainty": "optimisation",
        "weight_spread": 0.03,
    }
    report = _report(tmp_path, [row], {"weight_uncertainty": {"kind": "optimisation"}})
    assert report["weights"]["uncertainty"] == {"kind": "optimisation"}
    example = report["weights"]["examples"][0]
    assert example["weight_spread"] == 0.03
    assert "weight_low" not in example and "weight_std" not in example
    # Without the run's metrics, the kind still comes from the rows.
    assert _report(tmp_path, [row], {})["weights"]["uncertainty"] == {"kind": "optimisation"}
