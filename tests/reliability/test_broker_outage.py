"""The broker goes away: nothing is stranded, nothing runs twice, workers heal or die.

Real processes on a private Redis (killed with SIGKILL and started again empty, so every
message in it is lost) and the session's PostgreSQL: the in-process API publishes to it, a
``celery worker`` with the beat consumes from it. The test plays the supervisor (docker's
restart policy, ``bds serve``): a worker that exits is started again, nothing else is done by
hand. Each case ends with every job and file in its final state, exactly once (one success
event, one audit row per step of the work).

Timings are shrunk by settings so that the whole module takes about a minute or two: the
beat's sweep runs every second and re-sends work unclaimed for 2 s, a worker whose consumer
has not run for 10 s exits with status 1. Production defaults are 30 s, 30 s and 60 s.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.reliability.supervision import (
    FINISHED,
    Supervisor,
    chat_line,
    job_body,
    stored_file,
    wait_scored,
    wait_succeeded_once,
)

pytestmark = pytest.mark.slow

STALL_EXIT_S = 10  # above any pause of a starved consumer loop on a busy CI machine
SHORT_OUTAGE_S = 2  # the consumer reconnects; nothing is restarted
TOTAL_STEPS = 12
LONG_JOB_STEPS = 100_000  # cancelled once resumed; never trained to the end

# Read by the live_service fixture (tests/reliability/conftest.py).
LIVE_SETTINGS = {
    "reaper_interval_seconds": 1,
    "redispatch_after_seconds": 2,
    "redispatch_max_seconds": 4,
    "scoring_lease_seconds": 4,
    # Longer than any wait below: a job resumed after its worker died was not waiting for it.
    "lease_seconds": 900,
    "checkpoint_every": 4,
    "worker_stall_exit_seconds": STALL_EXIT_S,
}

LiveService = Any  # fixture types from tests/reliability/conftest.py
PrivateRedis = Any


@pytest.fixture(scope="module")
def redis_url(private_redis: PrivateRedis) -> str:
    """The live service's broker is the private Redis (overrides the session's)."""
    return str(private_redis.url)


@pytest.fixture(scope="module")
def supervisor(live_service: LiveService) -> Supervisor:
    return Supervisor(live_service)


def _job_body(training: str, safety: str, steps: int = TOTAL_STEPS) -> dict[str, Any]:
    return job_body(training, safety, steps)


def _scored(live: LiveService, supervisor: Supervisor, file_id: str) -> None:
    wait_scored(live, supervisor, file_id, timeout=180)


def _succeeded_once(live: LiveService, supervisor: Supervisor, job_id: str) -> Any:
    return wait_succeeded_once(live, supervisor, job_id, timeout=420)


def test_work_sent_while_the_broker_is_down_is_sent_again_and_done_once(
    live_service: LiveService, supervisor: Supervisor, private_redis: PrivateRedis
) -> None:
    live = live_service
    training, safety = live.upload_datasets()
    _scored(live, supervisor, training)

    private_redis.kill()
    # Created with the broker down: the answer is still the queued job; its message is lost.
    created = live.api.post(
        "/v1/fine_tuning/jobs", headers=live.headers, json=_job_body(training, safety)
    )
    assert created.status_code == 200, created.text
    assert created.json()["status"] == "queued"
    job_id = created.json()["id"]
    # An upload with the broker down: stored and validated, its scoring message lost.
    second = live.upload("\n".join(chat_line(i) for i in range(5)) + "\n")
    assert stored_file(live, second).safety_status == "pending"
    time.sleep(SHORT_OUTAGE_S)
    private_redis.start()  # empty: every message is gone

    job = _succeeded_once(live, supervisor, job_id)
    assert job.attempt == 1
    assert live.audit_actions(job_id) == [
        "fine_tuning_job.create",
        "fine_tuning_job.start",
        "fine_tuning_job.succeed",
    ]
    _scored(live, supervisor, second)


def test_training_rides_out_a_short_outage_without_a_restart_or_a_repeated_step(
    live_service: LiveService, supervisor: Supervisor, private_redis: PrivateRedis
) -> None:
    live = live_service
    training, safety = live.upload_datasets()
    created = live.api.post(
        "/v1/fine_tuning/jobs", headers=live.headers, json=_job_body(training, safety)
    )
    job_id = created.json()["id"]
    supervisor.wait_for(
        lambda: live.losses_by_step(job_id), bool, "a first training step", timeout=300
    )
    exits_before = list(supervisor.exit_codes)
    private_redis.kill()
    time.sleep(SHORT_OUTAGE_S)
    private_redis.start()

    job = _succeeded_once(live, supervisor, job_id)
    # The same worker and the same attempt: no lease expired, no step ran twice.
    assert (job.attempt, supervisor.exit_codes) == (1, exits_before)
    losses = live.losses_by_step(job_id)
    assert sorted(losses) == list(range(1, TOTAL_STEPS + 1))
    assert all(len(values) == 1 for values in losses.values())
    assert live.audit_actions(job_id) == [
        "fine_tuning_job.create",
        "fine_tuning_job.start",
        "fine_tuning_job.succeed",
    ]

    # And the consumer consumes again: new work after the outage is done.
    fresh = live.upload("\n".join(chat_line(i) for i in range(100, 106)) + "\n")
    _scored(live, supervisor, fresh)


def test_a_worker_that_cannot_consume_exits_non_zero_and_its_restart_finishes_the_work(
    live_service: LiveService, supervisor: Supervisor, private_redis: PrivateRedis
) -> None:
    live = live_service
    training, safety = live.upload_datasets()
    _scored(live, supervisor, training)
    # More steps than any machine trains while the worker waits out its stall: the job must
    # still be running when its worker exits, or there is no resume to check. It is cancelled
    # once the restarted worker has trained past its checkpoint.
    job_id = live.api.post(
        "/v1/fine_tuning/jobs",
        headers=live.headers,
        json=_job_body(training, safety, steps=LONG_JOB_STEPS),
    ).json()["id"]
    supervisor.wait_for(
        lambda: live.checkpoint_steps(job_id), bool, "a first checkpoint", timeout=300
    )
    exits_before = len(supervisor.exit_codes)
    file_id = live.upload("\n".join(chat_line(i) for i in range(200, 206)) + "\n")
    private_redis.kill()  # mid-training; maybe while the file is being scored, maybe before
    # Longer than the worker tolerates: it exits with status 1 and the supervisor restarts it.
    supervisor.wait_for(
        lambda: supervisor.exit_codes[exits_before:],
        bool,
        "the stalled worker's exit",
        timeout=STALL_EXIT_S * 10,
    )
    assert supervisor.exit_codes[exits_before:] == [1]
    assert "has not consumed for" in "".join(w.log() for w in live.workers)
    assert live.job(job_id).status in {"running", "queued"}
    private_redis.start()

    # The stalled worker ended its training child's lease before exiting: the job resumed from
    # its checkpoint on the restarted worker long before the 900 s lease would have expired.
    supervisor.wait_for(
        lambda: live.job(job_id).attempt, lambda attempt: attempt >= 2, "attempt 2", timeout=300
    )
    resumed = supervisor.wait_for(
        lambda: [e for e in live.events(job_id) if e.message.startswith("Resumed from checkpoint")],
        bool,
        "the resume event",
        timeout=300,
    )
    resumed_step = int((resumed[0].data or {})["step"])
    assert resumed_step >= 1
    # ... and it trains on from there: a step past the resume point is reported.
    supervisor.wait_for(
        lambda: max(live.losses_by_step(job_id)),
        lambda step: step > resumed_step + 1,
        "a step after the resume",
        timeout=300,
    )
    cancel = live.api.post(f"/v1/fine_tuning/jobs/{job_id}/cancel", headers=live.headers)
    assert cancel.status_code == 200, cancel.text
    status = supervisor.wait_for(
        lambda: live.job(job_id).status, lambda s: s in FINISHED, f"job {job_id}", timeout=300
    )
    job = live.job(job_id)
    assert (status, job.attempt) == ("cancelled", 2)
    losses = live.losses_by_step(job_id)
    assert all(len(values) == 1 for values in losses.values())  # no step reported twice
    actions = live.audit_actions(job_id)
    assert actions[:4] == [
        "fine_tuning_job.create",
        "fine_tuning_job.start",
        "fine_tuning_job.requeue",
        "fine_tuning_job.start",
    ]
    assert actions.count("fine_tuning_job.start") == 2
    assert "fine_tuning_job.cancel" in actions[4:]
    # The upload sent just before the outage is scored once the worker is free (the live
    # worker runs one task at a time, so it waited behind the training job).
    _scored(live, supervisor, file_id)
