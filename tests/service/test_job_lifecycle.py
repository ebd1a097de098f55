"""The job lifecycle helper: a move writes its state, event and audit row together, or nothing."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session

from bds_service.audit import Actor
from bds_service.jobs.lifecycle import JobChange, fail_job, job_error, move_job
from bds_service.jobs.states import JobStatus
from bds_service.models import AuditLog, FineTuningJob, JobEvent


def _queued_job(session: Session, add_tenant_with_file: Callable[..., str]) -> FineTuningJob:
    job = FineTuningJob(
        id="ftjob-lifecycle",
        tenant_id=add_tenant_with_file(session),
        model="tiny-random-llama",
        training_file_id="file-train",
        status=JobStatus.QUEUED.value,
        hyperparameters={},
        method={"type": "supervised"},
        seed=0,
    )
    session.add(job)
    session.commit()
    return job


def test_a_failure_stores_one_error_shape_with_its_event_and_audit_row(
    session: Session, add_tenant_with_file: Callable[..., str]
) -> None:
    job = _queued_job(session, add_tenant_with_file)
    error = job_error("max_attempts_exceeded", "gave up")
    actor = Actor("system", "tests", job.tenant_id)

    assert fail_job(session, job, error, sources={JobStatus.QUEUED}, actor=actor)
    session.commit()
    session.refresh(job)

    assert job.status == "failed" and job.finished_at is not None
    assert job.error == {"code": "max_attempts_exceeded", "message": "gave up", "param": None}
    (event,) = session.scalars(select(JobEvent).where(JobEvent.job_id == job.id))
    assert (event.level, event.message) == ("error", "gave up")
    (row,) = session.scalars(select(AuditLog).where(AuditLog.target_id == job.id))
    assert (row.action, row.details) == ("fine_tuning_job.fail", {"error": job.error})


def test_a_move_from_a_state_the_job_has_left_writes_nothing(
    session: Session, add_tenant_with_file: Callable[..., str]
) -> None:
    job = _queued_job(session, add_tenant_with_file)
    change = JobChange(Actor("system", "tests"), "fine_tuning_job.queue", "queued")

    moved = move_job(session, job, JobStatus.QUEUED, change, sources={JobStatus.VALIDATING_FILES})
    session.commit()

    assert not moved
    assert session.scalars(select(JobEvent).where(JobEvent.job_id == job.id)).all() == []
    assert session.scalars(select(AuditLog).where(AuditLog.target_id == job.id)).all() == []
