"""The lease reaper: gives a dead worker's job to a live one.

A worker that dies (SIGKILL, OOM, lost host) stops renewing its lease. Once the lease has
expired, a running job goes back to ``queued`` and a new training message is sent (the next
worker resumes from the newest checkpoint), unless the job already used all its attempts, in
which case it fails; a job that was ``cancelling`` simply ends ``cancelled``.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from bds_service.audit import Actor
from bds_service.jobs.lifecycle import JobChange, fail_job, job_error, move_job
from bds_service.jobs.repository import expired_leases
from bds_service.jobs.service import training_message
from bds_service.jobs.states import JobStatus
from bds_service.models import utcnow
from bds_service.tasks import enqueue_after_commit

REAPER = Actor("system", "lease_reaper")


def reap_expired_leases(session: Session, *, max_attempts: int) -> dict[str, list[str]]:
    """Requeue, fail or finish cancelling the jobs whose lease expired; returns ids by outcome."""
    now = utcnow()
    outcome: dict[str, list[str]] = {"requeued": [], "failed": [], "cancelled": []}
    for job in expired_leases(session, now):
        status = JobStatus(job.status)
        expired_owner = job.lease_owner
        # Each move re-checks, in its UPDATE, that the same worker still holds a lease that has
        # expired: a worker whose heartbeat renewed the lease after the select above keeps it.
        actor = Actor(REAPER.actor_type, REAPER.actor_id, job.tenant_id)
        if status == JobStatus.CANCELLING:
            if move_job(
                session,
                job,
                JobStatus.CANCELLED,
                JobChange(
                    actor,
                    "fine_tuning_job.cancelled",
                    "Fine-tuning job cancelled (its worker stopped)",
                ),
                sources={status},
                values={"finished_at": now},
                lease_owner=expired_owner,
                lease_expired_by=now,
            ):
                outcome["cancelled"].append(job.id)
        elif job.attempt >= max_attempts:
            message = f"the worker running this job stopped {job.attempt} times; giving up"
            if fail_job(
                session,
                job,
                job_error("max_attempts_exceeded", message),
                sources={status},
                actor=actor,
                finished_at=now,
                lease_owner=expired_owner,
                lease_expired_by=now,
            ):
                outcome["failed"].append(job.id)
        elif move_job(
            session,
            job,
            JobStatus.QUEUED,
            JobChange(
                actor,
                "fine_tuning_job.requeue",
                f"Worker {expired_owner} stopped renewing its lease; job re-queued "
                f"(attempt {job.attempt} of {max_attempts})",
                level="warn",
                details={"expired_owner": expired_owner},
            ),
            sources={status},
            values={"dispatched_at": now, "dispatch_count": 0},
            lease_owner=expired_owner,
            lease_expired_by=now,
        ):
            enqueue_after_commit(session, training_message(job))
            outcome["requeued"].append(job.id)
    return outcome
