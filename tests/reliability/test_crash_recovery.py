"""A worker SIGKILLed mid-training: the job resumes elsewhere, exactly once, bit for bit.

Real processes on real Redis and PostgreSQL: worker A trains a BDS job on the tiny model and
is SIGKILLed (parent and pool child, as when a host dies) just after its first checkpoint.
Nobody is told: the lease simply stops being renewed. Worker B runs the beat, whose reaper
finds the expired lease, re-queues the job and sends a new message; B claims the job (attempt
2), resumes from the newest checkpoint (an event says so) and finishes. The job ends
``succeeded`` exactly once, and every step's loss equals that of an uninterrupted run of the
same job and seed, as do the final per-example weights.
"""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.slow

TOTAL_STEPS = 16
CHECKPOINT_EVERY = 4
FINISHED = {"succeeded", "failed", "cancelled"}

# Read by the live_service fixture (tests/reliability/conftest.py).
LIVE_SETTINGS = {
    "checkpoint_every": CHECKPOINT_EVERY,
    "lease_seconds": 4,
    "reaper_interval_seconds": 1,
}

LiveService = Any  # fixture type from tests/reliability/conftest.py


def _job_body(training: str, safety: str) -> dict[str, Any]:
    return {
        "model": "tiny-random-llama",
        "training_file": training,
        "method": {
            "type": "bds",
            "bds": {"safety_file": safety, "max_steps": TOTAL_STEPS, "reference": "none"},
        },
        "seed": 11,
    }


def _weights(job: Any) -> list[float]:
    return [row["weight"] for row in job.safety_report["weights"]["examples"]]


def test_sigkilled_worker_job_resumes_from_its_checkpoint_and_succeeds_once(
    live_service: LiveService,
) -> None:
    live = live_service
    training, safety = live.upload_datasets()
    worker_a = live.start_worker("a")
    worker_a.wait_ready()
    created = live.api.post(
        "/v1/fine_tuning/jobs", headers=live.headers, json=_job_body(training, safety)
    )
    assert created.status_code == 200, created.text
    job_id = created.json()["id"]

    # SIGKILL worker A as soon as its first checkpoint is recorded.
    live.wait_for(lambda: live.checkpoint_steps(job_id), bool, "a first checkpoint", timeout=420)
    worker_a.kill()
    at_kill = live.job(job_id)
    steps_before_kill = max(live.losses_by_step(job_id))
    checkpoints_at_kill = live.checkpoint_steps(job_id)
    assert (at_kill.status, at_kill.attempt) == ("running", 1)
    assert steps_before_kill < TOTAL_STEPS, "worker A finished before it could be killed"

    # Worker B with the beat: the reaper re-queues the job once A's lease has expired.
    live.start_worker("b", beat=True).wait_ready()
    assert live.wait_for_status(job_id, FINISHED) == "succeeded"

    job = live.job(job_id)
    assert (job.attempt, job.error, job.lease_owner) == (2, None, None)
    events = live.events(job_id)
    messages = [event.message for event in events]
    assert messages.count("The job has successfully completed") == 1
    assert sum("stopped renewing its lease; job re-queued" in m for m in messages) == 1
    assert "Fine-tuning job started (attempt 2)" in messages
    (resumed,) = [event for event in events if event.message.startswith("Resumed from checkpoint")]
    resumed_step = int((resumed.data or {})["step"])
    assert max(checkpoints_at_kill) <= resumed_step <= steps_before_kill
    assert resumed_step % CHECKPOINT_EVERY == 0
    # After the resume, training continued from the checkpoint; the steps A had already
    # reported ran again but were not reported twice: progress never goes backwards.
    after_resume = [
        int(event.data["step"])
        for event in events[events.index(resumed) :]
        if event.event_type == "metrics" and event.data
    ]
    assert after_resume == list(range(steps_before_kill + 1, TOTAL_STEPS + 1))
    assert (resumed.data or {})["reported_through"] == steps_before_kill
    assert live.audit_actions(job_id) == [
        "fine_tuning_job.create",
        "fine_tuning_job.start",
        "fine_tuning_job.requeue",
        "fine_tuning_job.start",
        "fine_tuning_job.succeed",
    ]

    # The same job and seed without interruption: the same loss at every step.
    straight_id = live.api.post(
        "/v1/fine_tuning/jobs", headers=live.headers, json=_job_body(training, safety)
    ).json()["id"]
    assert live.wait_for_status(straight_id, FINISHED) == "succeeded"
    straight = live.losses_by_step(straight_id)
    assert sorted(straight) == list(range(1, TOTAL_STEPS + 1))
    crashed = live.losses_by_step(job_id)
    assert sorted(crashed) == sorted(straight)
    for step, losses in crashed.items():
        # Each step reported once, by A before the kill or by B after it: as the straight run.
        assert losses == pytest.approx(straight[step], abs=1e-6), step
    assert _weights(job) == pytest.approx(_weights(live.job(straight_id)), abs=1e-6)

    # Cancelling a job that has succeeded is refused clearly and changes nothing.
    cancel = live.api.post(f"/v1/fine_tuning/jobs/{job_id}/cancel", headers=live.headers)
    assert cancel.status_code == 409
    error = cancel.json()["error"]
    assert error["code"] == "job_not_cancellable" and "already succeeded" in error["message"]
    assert live.job(job_id).status == "succeeded"
