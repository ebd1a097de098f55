"""The lease reaper: gives a dead worker's job to a live one.

A worker that dies (SIGKILL, OOM, lost host) stops renewing its lease. Once the lease has
expired, a running job goes back to ``queued`` and a new training message is sent (the next
worker resumes from the newest checkpoint), unless the job already used all its attempts, in
which case it fails; a job that was ``cancelling`` simply ends ``cancelled``.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from bds_service import audit
from bds_service.audit import Actor
from bds_service.jobs.repository import expired_leases, transition
from bds_service.jobs.service import add_event, training_message
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
            if transition(
                session,
                job.id,
                sources={status},
                target=JobStatus.CANCELLED,
                lease_owner=expired_owner,
                lease_expired_by=now,
                values={"finished_at": now, "estimated_finish": None},
            ):
                add_event(session, job, "Fine-tuning job cancelled (its worker stopped)")
                audit.record(
                    session,
                    actor,
                    "fine_tuning_job.cancelled",
                    target_type="fine_tuning_job",
                    target_id=job.id,
                )
                outcome["cancelled"].append(job.id)
        elif job.attempt >= max_attempts:
            message = f"the worker running this job stopped {job.attempt} times; giving up"
            error = {"code": "max_attempts_exceeded", "message": message, "param": None}
            if transition(
                session,
                job.id,
                sources={status},
                target=JobStatus.FAILED,
                lease_owner=expired_owner,
                lease_expired_by=now,
                values={"error": error, "finished_at": now, "estimated_finish": None},
            ):
                add_event(session, job, message, level="error")
                audit.record(
                    session,
                    actor,
                    "fine_tuning_job.fail",
                    target_type="fine_tuning_job",
                    target_id=job.id,
                    details={"error": error},
                )
                outcome["failed"].append(job.id)
        elif transition(
            session,
            job.id,
            sources={status},
            target=JobStatus.QUEUED,
            lease_owner=expired_owner,
            lease_expired_by=now,
            values={"dispatched_at": now, "dispatch_count": 0},
        ):
            add_event(
                session,
                job,
                f"Worker {expired_owner} stopped renewing its lease; job re-queued "
                f"(attempt {job.attempt} of {max_attempts})",
                level="warn",
            )
            audit.record(
                session,
                actor,
                "fine_tuning_job.requeue",
                target_type="fine_tuning_job",
                target_id=job.id,
                details={"expired_owner": expired_owner},
            )
            enqueue_after_commit(session, training_message(job))
            outcome["requeued"].append(job.id)
    return outcome
