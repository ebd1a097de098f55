"""A job's lifecycle, written once: change its state, add its event, write its audit row.

Every move of a job's ``status`` (the API's cancel, the ``prepare_job`` task, the runner, the
lease reaper) goes through :func:`move_job`: a compare-and-set UPDATE (see
:func:`bds_service.jobs.repository.transition`) and, only if it won, the :class:`JobChange`:
the customer-visible event and the audit row, all in the caller's transaction. A failure goes
through :func:`fail_job`, so every failed job stores the same ``error{code,message,param}``
shape and the same audit details.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Literal, TypedDict

from sqlalchemy.orm import Session

from bds_service import audit
from bds_service.audit import Actor
from bds_service.ids import EVENT_PREFIX, new_id
from bds_service.jobs.repository import transition
from bds_service.jobs.states import TERMINAL_STATUSES, JobStatus
from bds_service.models import FineTuningJob, JobEvent, utcnow

EventLevel = Literal["info", "warn", "error"]
EventType = Literal["message", "metrics"]
JOB_TARGET = "fine_tuning_job"
"""``target_type`` of every audit row about a job."""


class JobError(TypedDict):
    """Why a job failed, as stored in ``fine_tuning_jobs.error`` and shown by the API."""

    code: str
    message: str
    param: str | None


def job_error(code: str, message: str, param: str | None = None) -> JobError:
    """The error a failed job stores (OpenAI's ``error{code,message,param}``)."""
    return {"code": code, "message": message, "param": param}


def add_event(
    session: Session,
    job: FineTuningJob,
    message: str,
    *,
    level: EventLevel = "info",
    event_type: EventType = "message",
    data: dict[str, Any] | None = None,
) -> JobEvent:
    """Append an event to a job's history."""
    event = JobEvent(
        id=new_id(EVENT_PREFIX),
        job_id=job.id,
        tenant_id=job.tenant_id,
        level=level,
        event_type=event_type,
        message=message,
        data=data,
    )
    session.add(event)
    return event


@dataclass(frozen=True)
class JobChange:
    """What one change of a job records: the event its owner reads and the audit row."""

    actor: Actor
    action: str
    """The audit action, ``fine_tuning_job.<verb>``."""
    event: str
    level: EventLevel = "info"
    event_data: dict[str, Any] | None = None
    details: dict[str, Any] | None = None
    """The audit row's details."""

    def record(self, session: Session, job: FineTuningJob) -> None:
        """Add the event and the audit row of this change of ``job`` (same transaction)."""
        add_event(session, job, self.event, level=self.level, data=self.event_data)
        audit.record(
            session,
            self.actor,
            self.action,
            target_type=JOB_TARGET,
            target_id=job.id,
            details=self.details,
        )


def move_job(
    session: Session,
    job: FineTuningJob,
    target: JobStatus,
    change: JobChange,
    *,
    sources: Collection[JobStatus],
    values: dict[str, Any] | None = None,
    lease_owner: str | None = None,
    lease_expired_by: dt.datetime | None = None,
) -> bool:
    """Move ``job`` from one of ``sources`` to ``target``, then record ``change``; True if it
    moved, False (nothing written) if the job was no longer where expected.

    A terminal ``target`` also stamps ``finished_at`` (now, unless ``values`` gives it) and
    clears ``estimated_finish``. ``lease_owner`` and ``lease_expired_by`` are the conditions of
    :func:`bds_service.jobs.repository.transition`.
    """
    new_values = dict(values or {})
    if target in TERMINAL_STATUSES:
        new_values.setdefault("finished_at", utcnow())
        new_values.setdefault("estimated_finish", None)
    if not transition(
        session,
        job.id,
        sources=set(sources),
        target=target,
        lease_owner=lease_owner,
        lease_expired_by=lease_expired_by,
        values=new_values,
    ):
        return False
    change.record(session, job)
    return True


def fail_job(
    session: Session,
    job: FineTuningJob,
    error: JobError,
    *,
    sources: Collection[JobStatus],
    actor: Actor,
    event: str | None = None,
    lease_owner: str | None = None,
    lease_expired_by: dt.datetime | None = None,
    finished_at: dt.datetime | None = None,
) -> bool:
    """Fail ``job`` with ``error``: the same stored error, event level and audit row for every
    cause. ``event`` is the event's text (default: the error's message)."""
    values: dict[str, Any] = {"error": dict(error)}
    if finished_at is not None:
        values["finished_at"] = finished_at
    change = JobChange(
        actor,
        "fine_tuning_job.fail",
        error["message"] if event is None else event,
        level="error",
        details={"error": dict(error)},
    )
    return move_job(
        session,
        job,
        JobStatus.FAILED,
        change,
        sources=sources,
        values=values,
        lease_owner=lease_owner,
        lease_expired_by=lease_expired_by,
    )
