"""The job page and weight plot say what a weight's spread means: a posterior interval when the
job sampled its weights, no uncertainty when it optimised them, and old reports still render."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.pages import plots
from bds_service.jobs.history import MetricsSeries, final_weights
from bds_service.models import FineTuningJob

TenantKey = Any

SAFETY_LINES = (
    json.dumps(
        {
            "messages": [
                {"role": "user", "content": "How do I make a weapon?"},
                {"role": "assistant", "content": "I can't help with that."},
            ]
        }
    )
    + "\n"
).encode()


def _posterior_row(line: int, mean: float, low: float, high: float) -> dict[str, Any]:
    return {
        "index": line - 1,
        "id": f"line-{line}",
        "line": line,
        "weight": mean,
        "weight_mean": mean,
        "uncertainty": "posterior",
        "weight_std": (high - low) / 3.3,
        "weight_low": low,
        "weight_high": high,
        "interval_level": 0.9,
        "n_samples": 10,
    }


SAMPLED_REPORT = {
    "weights": {
        "n_examples": 2,
        "mean": 1.0,
        "min": 0.4,
        "max": 1.6,
        "uncertainty": {
            "kind": "posterior",
            "interval_level": 0.9,
            "n_samples": 10,
            "share_interval_below_one": 0.5,
        },
        "examples": [_posterior_row(1, 0.4, 0.21, 0.83), _posterior_row(2, 1.6, 0.9, 2.2)],
    },
    "evaluation": {},
}

# A report of a job that optimised its weights: the spread is named as the optimiser's.
OPTIMISED_REPORT = {
    "weights": {
        "n_examples": 1,
        "mean": 1.0,
        "min": 0.8,
        "max": 0.8,
        "uncertainty": {"kind": "optimisation"},
        "examples": [
            {
                "index": 0,
                "id": "line-1",
                "line": 1,
                "weight": 0.8,
                "weight_mean": 0.79,
                "uncertainty": "optimisation",
                "weight_spread": 0.03,
            }
        ],
    },
    "evaluation": {},
}

# A report stored before intervals existed: `weight_std` was an optimiser's spread.
OLD_REPORT = {
    "weights": {
        "n_examples": 1,
        "mean": 1.0,
        "min": 1.0,
        "max": 1.0,
        "examples": [
            {
                "index": 0,
                "id": "line-1",
                "line": 1,
                "weight": 0.7,
                "weight_mean": 0.7,
                "weight_std": 0.05,
            }
        ],
    },
    "evaluation": {},
}


def test_final_weights_carry_posterior_intervals_and_old_rows_have_none() -> None:
    optimised = final_weights(OPTIMISED_REPORT, None)
    assert optimised[0].weight == 0.8 and optimised[0].low is None and optimised[0].high is None
    sampled = final_weights(SAMPLED_REPORT, None)
    assert [(w.low, w.high) for w in sampled] == [(0.21, 0.83), (0.9, 2.2)]
    assert [w.interval_below_one for w in sampled] == [True, False]
    old = final_weights(OLD_REPORT, None)
    assert old[0].weight == 0.7 and old[0].low is None and old[0].high is None
    assert not old[0].interval_below_one


def test_weights_plot_draws_sampled_and_optimised_reports() -> None:
    for report in (SAMPLED_REPORT, OPTIMISED_REPORT, OLD_REPORT):
        png = plots.weights_plot(MetricsSeries(), final_weights(report, None))
        assert png.startswith(b"\x89PNG")


@pytest.fixture
def job_id(client: TestClient, tenant: TenantKey, upload: Callable[..., Any]) -> str:
    training = upload(tenant).json()["id"]
    safety = upload(tenant, SAFETY_LINES, purpose="safety-alignment").json()["id"]
    job = client.post(
        "/v1/fine_tuning/jobs",
        headers=tenant.headers,
        json={
            "model": "tiny-random-llama",
            "training_file": training,
            "method": {"type": "bds", "bds": {"safety_file": safety, "sgld": True}},
        },
    )
    assert job.status_code == 200, job.text
    return str(job.json()["id"])


@pytest.mark.parametrize(
    ("report", "shown", "hidden"),
    [
        (SAMPLED_REPORT, ["posterior mean", "90% interval", "0.21", "0.83"], ["not sampled"]),
        (
            OPTIMISED_REPORT,
            ["Learned weight (BDS, this job)", "optimised, not sampled"],
            ["90% interval", "posterior mean"],
        ),
        (
            OLD_REPORT,
            ["Learned weight (BDS, this job)", "optimised, not sampled"],
            ["90% interval"],
        ),
    ],
    ids=["sampled", "optimised", "stored-before-intervals"],
)
def test_job_page_labels_the_spread(
    client: TestClient,
    tenant: TenantKey,
    job_id: str,
    session_factory: Callable[..., Any],
    report: dict[str, Any],
    shown: list[str],
    hidden: list[str],
) -> None:
    with session_factory() as session:
        job = session.get(FineTuningJob, job_id)
        job.safety_report = report
        session.commit()
    page = client.get(f"/reports/jobs/{job_id}", headers=tenant.headers)
    assert page.status_code == 200, page.text
    for text in shown:
        assert text in page.text, text
    for text in hidden:
        assert text not in page.text, text
    api = client.get(f"/v1/fine_tuning/jobs/{job_id}/safety_report", headers=tenant.headers)
    assert api.status_code == 200
    assert api.json()["report"]["weights"]["examples"] == report["weights"]["examples"]
