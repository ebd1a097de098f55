"""The job state machine in the database: compare-and-set claims, leases, the reaper."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from bds_service.db import SessionFactory
from bds_service.jobs import repository as jobs
from bds_service.jobs.reaper import reap_expired_leases
from bds_service.jobs.states import IllegalTransitionError, JobStatus
from bds_service.models import FineTuningJob, JobEvent, utcnow
from bds_service.tasks import RUN_FINETUNE_JOB, take_pending


@pytest.fixture
def make_job(session: Session, add_tenant_with_file: Callable[..., str]) -> Callable[..., str]:
    tenant_id = add_tenant_with_file(session)
    session.commit()
    counter = iter(range(1000))

    def make(status: JobStatus = JobStatus.QUEUED, **values: Any) -> str:
        job = FineTuningJob(
            id=f"ftjob-{next(counter)}",
            tenant_id=tenant_id,
            model="tiny-random-llama",
            training_file_id="file-train",
            status=status.value,
            hyperparameters={},
            method={"type": "supervised"},
            seed=0,
            **values,
        )
        session.add(job)
        session.commit()
        return job.id

    return make


def _claim(session: Session, job_id: str, owner: str, now: dt.datetime | None = None) -> bool:
    return jobs.claim(
        session, job_id, owner=owner, now=now or utcnow(), lease_seconds=60, max_attempts=3
    )


def test_claim_sets_status_owner_lease_and_attempt_in_one_step(
    session: Session, make_job: Callable[..., str]
) -> None:
    job_id = make_job()
    before = utcnow()
    assert _claim(session, job_id, "worker-a")
    session.commit()
    job = session.get(FineTuningJob, job_id)
    assert job is not None
    session.refresh(job)
    assert (job.status, job.lease_owner, job.attempt) == ("running", "worker-a", 1)
    assert job.lease_expires_at is not None and job.lease_expires_at >= before + dt.timedelta(
        seconds=59
    )
    # A second claim (a duplicate delivery) loses while the lease is alive.
    assert not _claim(session, job_id, "worker-b")


def test_two_workers_racing_for_one_job_exactly_one_wins(
    session_factory: SessionFactory, make_job: Callable[..., str]
) -> None:
    job_ids = [make_job() for _ in range(5)]
    for job_id in job_ids:
        barrier = threading.Barrier(2)
        wins: list[str] = []

        def worker(
            name: str,
            job_id: str = job_id,
            barrier: threading.Barrier = barrier,
            wins: list[str] = wins,
        ) -> None:
            with session_factory() as session:
                barrier.wait()
                if _claim(session, job_id, name):
                    wins.append(name)
                session.commit()

        threads = [threading.Thread(target=worker, args=(f"w{n}",)) for n in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert len(wins) == 1, wins
        with session_factory() as session:
            job = session.get(FineTuningJob, job_id)
            assert job is not None and job.lease_owner == wins[0] and job.attempt == 1


def test_expired_lease_can_be_reclaimed_and_the_old_owner_cannot_renew(
    session: Session, make_job: Callable[..., str]
) -> None:
    job_id = make_job()
    assert _claim(session, job_id, "worker-a")
    later = utcnow() + dt.timedelta(minutes=5)
    assert _claim(session, job_id, "worker-b", now=later)
    assert not jobs.renew_lease(session, job_id, owner="worker-a", now=later, lease_seconds=60)
    assert jobs.renew_lease(session, job_id, owner="worker-b", now=later, lease_seconds=60)
    session.commit()
    job = session.get(FineTuningJob, job_id)
    assert job is not None
    session.refresh(job)
    assert (job.lease_owner, job.attempt) == ("worker-b", 2)


def test_a_job_is_not_claimed_past_its_attempt_limit(
    session: Session, make_job: Callable[..., str]
) -> None:
    job_id = make_job(attempt=3)
    assert not _claim(session, job_id, "worker-a")


def test_finishing_requires_the_lease_and_the_expected_status(
    session: Session, make_job: Callable[..., str]
) -> None:
    job_id = make_job()
    assert _claim(session, job_id, "worker-a")
    # A worker that lost the job cannot finish it.
    assert not jobs.transition(
        session,
        job_id,
        sources={JobStatus.RUNNING},
        target=JobStatus.SUCCEEDED,
        lease_owner="worker-b",
    )
    # A cancel request moved the job on: the worker's success no longer matches.
    assert jobs.transition(
        session, job_id, sources={JobStatus.RUNNING}, target=JobStatus.CANCELLING
    )
    assert not jobs.transition(
        session,
        job_id,
        sources={JobStatus.RUNNING},
        target=JobStatus.SUCCEEDED,
        lease_owner="worker-a",
    )
    assert jobs.transition(
        session,
        job_id,
        sources={JobStatus.CANCELLING},
        target=JobStatus.CANCELLED,
        lease_owner="worker-a",
    )
    session.commit()
    job = session.get(FineTuningJob, job_id)
    assert job is not None
    session.refresh(job)
    assert (job.status, job.lease_owner, job.lease_expires_at) == ("cancelled", None, None)


@pytest.mark.parametrize(
    ("sources", "target"),
    [
        ({JobStatus.SUCCEEDED}, JobStatus.RUNNING),
        ({JobStatus.CANCELLED}, JobStatus.QUEUED),
        ({JobStatus.QUEUED}, JobStatus.SUCCEEDED),
        ({JobStatus.VALIDATING_FILES}, JobStatus.RUNNING),
    ],
)
def test_illegal_transitions_are_refused_before_touching_the_database(
    session: Session, sources: set[JobStatus], target: JobStatus
) -> None:
    with pytest.raises(IllegalTransitionError):
        jobs.transition(session, "ftjob-any", sources=sources, target=target)


def test_reaper_requeues_fails_or_finishes_jobs_whose_lease_expired(
    session: Session, make_job: Callable[..., str]
) -> None:
    past = utcnow() - dt.timedelta(seconds=1)
    alive = make_job(
        JobStatus.RUNNING,
        attempt=1,
        lease_owner="live",
        lease_expires_at=utcnow() + dt.timedelta(minutes=5),
    )
    crashed = make_job(JobStatus.RUNNING, attempt=1, lease_owner="dead", lease_expires_at=past)
    exhausted = make_job(JobStatus.RUNNING, attempt=3, lease_owner="dead", lease_expires_at=past)
    stopping = make_job(JobStatus.CANCELLING, attempt=1, lease_owner="dead", lease_expires_at=past)

    outcome = reap_expired_leases(session, max_attempts=3)
    messages = take_pending(session)
    session.commit()

    assert outcome == {"requeued": [crashed], "failed": [exhausted], "cancelled": [stopping]}
    assert [(m.name, m.args) for m in messages] == [(RUN_FINETUNE_JOB, (crashed,))]
    statuses = dict(session.execute(select(FineTuningJob.id, FineTuningJob.status)).all())
    assert statuses == {
        alive: "running",
        crashed: "queued",
        exhausted: "failed",
        stopping: "cancelled",
    }
    failed = session.get(FineTuningJob, exhausted)
    assert failed is not None and failed.error is not None
    assert failed.error["code"] == "max_attempts_exceeded"
    requeue_event = session.scalars(select(JobEvent).where(JobEvent.job_id == crashed)).one()
    assert "re-queued" in requeue_event.message and requeue_event.level == "warn"


def test_reaper_leaves_a_lease_renewed_after_it_looked(
    session: Session, make_job: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reaper's select and its update are separate statements: a heartbeat landing in
    between renews the lease, and the job must stay with its worker."""
    slow = make_job(
        JobStatus.RUNNING,
        attempt=1,
        lease_owner="slow",
        lease_expires_at=utcnow() - dt.timedelta(seconds=1),
    )
    seen_stale = []

    def select_then_heartbeat(inner_session: Session, now: dt.datetime) -> list[FineTuningJob]:
        stale = jobs.expired_leases(inner_session, now)
        seen_stale.extend(job.id for job in stale)
        inner_session.execute(
            update(FineTuningJob)
            .where(FineTuningJob.id == slow)
            .values(lease_expires_at=utcnow() + dt.timedelta(minutes=5))
            .execution_options(synchronize_session=False)
        )
        return stale

    monkeypatch.setattr("bds_service.jobs.reaper.expired_leases", select_then_heartbeat)
    outcome = reap_expired_leases(session, max_attempts=3)
    session.commit()

    assert seen_stale == [slow]
    assert outcome == {"requeued": [], "failed": [], "cancelled": []}
    job = session.get(FineTuningJob, slow)
    assert job is not None
    session.refresh(job)
    assert (job.status, job.lease_owner) == ("running", "slow")
    assert take_pending(session) == []


def test_a_stalled_worker_ends_the_leases_of_its_processes_for_the_reaper(
    session: Session, make_job: Callable[..., str]
) -> None:
    """A worker that must exit (its consumer stalled) ends the leases its pool processes
    hold, so the reaper re-queues those jobs at once instead of after the full lease."""
    soon = utcnow() + dt.timedelta(minutes=5)
    doomed = make_job(
        JobStatus.RUNNING, attempt=1, lease_owner="host-a:123:aaaa", lease_expires_at=soon
    )
    other_pid = make_job(
        JobStatus.RUNNING, attempt=1, lease_owner="host-a:1234:bbbb", lease_expires_at=soon
    )
    other_host = make_job(
        JobStatus.RUNNING, attempt=1, lease_owner="host-b:123:cccc", lease_expires_at=soon
    )
    now = utcnow()
    assert jobs.expire_leases_of_processes(session, "host-a", [123], now) == [doomed]
    session.commit()
    outcome = reap_expired_leases(session, max_attempts=3)
    session.commit()
    assert outcome["requeued"] == [doomed]
    statuses = dict(session.execute(select(FineTuningJob.id, FineTuningJob.status)).all())
    assert (statuses[doomed], statuses[other_pid], statuses[other_host]) == (
        "queued",
        "running",
        "running",
    )
