"""Redis killed for 30 s under the production timings: everything finishes within 2 minutes.

The promise of docs/reliability.md, at the settings a deployment runs with (the beat's sweep
every 30 s, work unclaimed for 30 s sent again, a worker whose consumer has not run for 60 s
exits): Redis is SIGKILLed and started again empty 30 s later while a job trains, a file is
being scored, a job is created and a file uploaded (both with the broker down, their messages
lost), and a cpu worker with the beat and a gpu worker sit idle or busy. Within 2 minutes of
Redis returning every job and file is in its final state, exactly once, with no manual restart
(the test restarts a worker only when it exits, as docker's restart policy or `bds serve` do).
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.reliability.supervision import (
    FINISHED,
    Supervisor,
    audit_actions,
    chat_line,
    job_body,
    stored_file,
)

pytestmark = pytest.mark.slow

OUTAGE_S = 30.0
RECOVERY_S = 120.0  # the promise: final states within 2 minutes of Redis returning
STEPS = 8

# Production timings (bds_service.settings defaults), stated so that a change of a default
# shows here. Read by the live_service fixture (tests/reliability/conftest.py).
LIVE_SETTINGS = {
    "reaper_interval_seconds": 30,
    "redispatch_after_seconds": 30,
    "redispatch_max_seconds": 60,
    "scoring_lease_seconds": 60,
    "worker_stall_exit_seconds": 60,
    "lease_seconds": 300,
}

LiveService = Any  # fixture types from tests/reliability/conftest.py
PrivateRedis = Any


@pytest.fixture(scope="module")
def redis_url(private_redis: PrivateRedis) -> str:
    """The live service's broker is the private Redis (overrides the session's)."""
    return str(private_redis.url)


def _final(live: LiveService, jobs: list[str], files: list[str]) -> dict[str, str]:
    states = {job_id: live.job(job_id).status for job_id in jobs}
    states |= {file_id: stored_file(live, file_id).safety_status for file_id in files}
    return states


def _is_final(states: dict[str, str]) -> bool:
    return all(state in FINISHED for state in states.values())


def test_a_30_second_outage_at_production_timings_finishes_everything_within_2_minutes(
    live_service: LiveService, private_redis: PrivateRedis
) -> None:
    live = live_service
    supervisor = Supervisor(
        live,
        {
            "cpu": {"beat": True, "queues": ("cpu",)},
            "gpu": {"queues": ("gpu",)},
        },
    )
    training, safety = live.upload_datasets()
    supervisor.wait_for(
        lambda: stored_file(live, training).safety_status,
        lambda status: status == "succeeded",
        "the training file's report",
        timeout=300,
    )
    # Training: a job with a first step reported.
    training_job = live.api.post(
        "/v1/fine_tuning/jobs", headers=live.headers, json=job_body(training, safety, STEPS)
    ).json()["id"]
    supervisor.wait_for(
        lambda: live.losses_by_step(training_job), bool, "a first training step", timeout=300
    )
    # Scoring: a file uploaded just before; its report may be under way or not yet started.
    scored_before = live.upload("\n".join(chat_line(i) for i in range(40)) + "\n")

    private_redis.kill()
    killed_at = time.monotonic()
    # During the outage: a create and an upload, whose messages are lost with Redis.
    created = live.api.post(
        "/v1/fine_tuning/jobs", headers=live.headers, json=job_body(training, safety, STEPS, 6)
    )
    assert created.status_code == 200, created.text
    assert created.json()["status"] == "queued"
    created_in_outage = created.json()["id"]
    uploaded_in_outage = live.upload("\n".join(chat_line(i) for i in range(50, 60)) + "\n")
    supervisor.sleep(OUTAGE_S - (time.monotonic() - killed_at))
    private_redis.start()  # empty: every message is gone

    jobs = [training_job, created_in_outage]
    files = [scored_before, uploaded_in_outage]
    states = supervisor.wait_for(
        lambda: _final(live, jobs, files),
        _is_final,
        "every job and file in its final state within 2 minutes of Redis returning",
        timeout=RECOVERY_S,
    )
    assert set(states.values()) == {"succeeded"}, states

    for job_id in jobs:
        messages = [event.message for event in live.events(job_id)]
        assert messages.count("The job has successfully completed") == 1
        actions = audit_actions(live, job_id)
        assert actions[0] == "fine_tuning_job.create"
        assert actions[-1] == "fine_tuning_job.succeed"
        assert actions.count("fine_tuning_job.succeed") == 1
        # Every start but the last was ended by a re-queue (a resumed attempt), never doubled.
        assert (
            actions.count("fine_tuning_job.start") == actions.count("fine_tuning_job.requeue") + 1
        )
        losses = live.losses_by_step(job_id)
        assert sorted(losses) == list(range(1, STEPS + 1))
        assert all(len(values) == 1 for values in losses.values())
    for file_id in files:
        assert audit_actions(live, file_id).count("file.safety_report") == 1
    # No worker was restarted by hand: every restart followed an exit with status 1.
    assert set(supervisor.exit_codes) <= {1}
