"""Two real workers and one job: duplicate deliveries train it once; cancel stops it in a step.

Both workers are ``celery worker`` processes on Redis and PostgreSQL with the production gpu
flags (prefork, one process, late acks). The claim is a compare-and-set UPDATE, so when the
same job's message reaches both workers at once, exactly one of them trains and the other
returns ``held`` or ``not_claimed`` without writing anything. A cancel request during training is seen
between two steps: at most the step in flight finishes, the job ends ``cancelled``, the lease
is released and the worker takes the next job.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from bds_service.tasks import RUN_FINETUNE_JOB, TaskMessage

pytestmark = pytest.mark.slow

FINISHED = {"succeeded", "failed", "cancelled"}

# Read by the live_service fixture (tests/reliability/conftest.py).
LIVE_SETTINGS = {"checkpoint_every": 50, "lease_seconds": 60}

LiveService = Any  # fixture types from tests/reliability/conftest.py
WorkerProcess = Any


def _job_body(training: str, safety: str, max_steps: int) -> dict[str, Any]:
    return {
        "model": "tiny-random-llama",
        "training_file": training,
        "method": {
            "type": "bds",
            "bds": {"safety_file": safety, "max_steps": max_steps, "reference": "none"},
        },
        "seed": 3,
    }


def _task_results(worker: WorkerProcess) -> list[str]:
    """What the worker's training tasks returned, in order (Celery logs each result)."""
    return re.findall(
        rf"Task {re.escape(RUN_FINETUNE_JOB)}\[[^]]+\] succeeded in [^:]+: '(\w+)'", worker.log()
    )


@pytest.fixture(scope="module")
def workers(live_service: LiveService) -> list[WorkerProcess]:
    started = [live_service.start_worker("a"), live_service.start_worker("b")]
    for worker in started:
        worker.wait_ready()
    return started


@pytest.fixture(scope="module")
def datasets(live_service: LiveService) -> tuple[str, str]:
    return live_service.upload_datasets()


def test_duplicate_deliveries_to_two_workers_train_the_job_once(
    live_service: LiveService, workers: list[WorkerProcess], datasets: tuple[str, str]
) -> None:
    from api.publisher import CeleryPublisher

    live = live_service
    job_id = live.api.post(
        "/v1/fine_tuning/jobs", headers=live.headers, json=_job_body(*datasets, max_steps=20)
    ).json()["id"]
    # A second message for the same job (a redelivery): each idle worker takes one.
    publisher = CeleryPublisher(live.settings)
    publisher.send(TaskMessage(RUN_FINETUNE_JOB, (job_id,)))
    publisher.close()

    assert live.wait_for_status(job_id, FINISHED) == "succeeded"
    results = live.wait_for(
        lambda: sorted(result for worker in workers for result in _task_results(worker)),
        lambda found: len(found) == 2,
        "both deliveries handled",
        timeout=300,
    )
    # The duplicate found the job held by the training worker ("held", from the task's cheap
    # check before it loads the trainer), lost the claim to it in a closer race
    # ("not_claimed"), or, on a loaded machine, arrived after the job had finished and found
    # it done ("succeeded", the job's status, without training). Either way the job ran
    # exactly once, which the attempt count, the single start event and the audit trail
    # below show.
    assert results in (
        ["held", "succeeded"],
        ["not_claimed", "succeeded"],
        ["succeeded", "succeeded"],
    )
    job = live.job(job_id)
    assert (job.attempt, job.lease_owner) == (1, None)
    messages = [event.message for event in live.events(job_id)]
    assert sum(message.startswith("Fine-tuning job started") for message in messages) == 1
    assert messages.count("The job has successfully completed") == 1
    assert live.audit_actions(job_id) == [
        "fine_tuning_job.create",
        "fine_tuning_job.start",
        "fine_tuning_job.succeed",
    ]
    metrics_steps = [step for step in live.losses_by_step(job_id)]
    assert sorted(metrics_steps) == list(range(1, 21))
    assert all(len(losses) == 1 for losses in live.losses_by_step(job_id).values())


def test_cancel_during_training_stops_within_one_step_and_frees_the_worker(
    live_service: LiveService, workers: list[WorkerProcess], datasets: tuple[str, str]
) -> None:
    live = live_service
    job_id = live.api.post(
        "/v1/fine_tuning/jobs", headers=live.headers, json=_job_body(*datasets, max_steps=5000)
    ).json()["id"]
    live.wait_for(
        lambda: max(live.losses_by_step(job_id), default=0),
        lambda step: step >= 2,
        "training progress",
        timeout=300,
    )
    cancelling = live.api.post(f"/v1/fine_tuning/jobs/{job_id}/cancel", headers=live.headers)
    assert cancelling.status_code == 200 and cancelling.json()["status"] == "cancelling"
    assert live.wait_for_status(job_id, FINISHED, timeout=120) == "cancelled"

    job = live.job(job_id)
    assert job.lease_owner is None and job.cancel_requested_at is not None
    events = live.events(job_id)
    # Only the step that was running when the request arrived may still finish.
    late_steps = [
        event
        for event in events
        if event.event_type == "metrics" and event.created_at > job.cancel_requested_at
    ]
    assert len(late_steps) <= 1, [event.data for event in late_steps]
    assert events[-1].message == "Fine-tuning job cancelled"

    # The worker that trained it returned, and (alone now) takes the next job.
    trained_it = live.wait_for(
        lambda: [worker for worker in workers if "cancelled" in _task_results(worker)],
        lambda found: len(found) == 1,
        "the cancelled task's result",
        timeout=60,
    )[0]
    for worker in workers:
        if worker is not trained_it:
            worker.stop()
    assert trained_it.process.poll() is None
    next_id = live.api.post(
        "/v1/fine_tuning/jobs", headers=live.headers, json=_job_body(*datasets, max_steps=2)
    ).json()["id"]
    assert live.wait_for_status(next_id, FINISHED, timeout=300) == "succeeded"
    # The task returns a moment after the job's row says succeeded (it then registers the
    # adapter with the inference engine): wait for its result in the worker's log.
    live.wait_for(
        lambda: _task_results(trained_it)[-1:],
        lambda last: last == ["succeeded"],
        "the next job's task result",
        timeout=120,
    )
