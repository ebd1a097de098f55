"""The dashboard's overview, and the audit row every admin view writes."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from bds_service import audit
from bds_service.admin import repository
from bds_service.admin.repository import WorkerSeen
from bds_service.audit import Actor
from bds_service.jobs.history import Progress, progress_from_event
from bds_service.jobs.states import JobStatus
from bds_service.models import File, FineTuningJob, utcnow

WORKER_WINDOW = dt.timedelta(hours=24)
IN_FLIGHT = (JobStatus.RUNNING.value, JobStatus.CANCELLING.value)
WAITING = (JobStatus.VALIDATING_FILES.value, JobStatus.QUEUED.value)


@dataclass(frozen=True)
class RunningJob:
    """A job a worker holds, with its progress."""

    job: FineTuningJob
    tenant_name: str
    progress: Progress | None


@dataclass(frozen=True)
class Overview:
    """The state of the service at a glance."""

    generated_at: dt.datetime
    status_counts: dict[str, int]
    running: list[RunningJob]
    workers: list[WorkerSeen]
    failed_jobs: list[tuple[FineTuningJob, str]]
    failed_scorings: list[tuple[File, str]]

    @property
    def queued(self) -> int:
        """Jobs waiting for a worker (queued, or validating their files first)."""
        return sum(self.status_counts.get(status, 0) for status in WAITING)

    @property
    def in_flight(self) -> int:
        """Jobs a worker holds (running or cancelling)."""
        return sum(self.status_counts.get(status, 0) for status in IN_FLIGHT)


def overview(session: Session, now: dt.datetime | None = None) -> Overview:
    """Queue depth, running jobs with progress and ETA, workers seen, recent failures."""
    now = now or utcnow()
    running = repository.jobs_in_statuses(session, IN_FLIGHT)
    latest = repository.latest_metrics_events(session, [job.id for job, _ in running])
    return Overview(
        generated_at=now,
        status_counts=repository.count_jobs_by_status(session),
        running=[
            RunningJob(job, tenant_name, progress_from_event(latest.get(job.id)))
            for job, tenant_name in running
        ],
        workers=repository.workers_seen(session, since=now - WORKER_WINDOW),
        failed_jobs=repository.recent_failed_jobs(session),
        failed_scorings=repository.recent_failed_scorings(session),
    )


def record_view(
    session: Session,
    actor: Actor,
    page: str,
    *,
    target_type: str = "page",
    target_id: str | None = None,
    tenant_id: str | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """Audit an admin's view of a dashboard page (``admin.view.<page>``).

    ``tenant_id`` names the customer whose data the page shows, when it shows one's.
    """
    audit.record(
        session,
        actor,
        f"admin.view.{page}",
        target_type=target_type,
        target_id=target_id,
        tenant_id=tenant_id,
        details=details,
    )
