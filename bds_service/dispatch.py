"""Dispatch owned by the database: work no worker claimed in time gets its message again.

A Celery message only wakes a worker; the database says what is waiting. Every state that
waits for a worker records when its message was sent (``dispatched_at``): a job in
``validating_files`` (``prepare_job``) or ``queued`` (``run_finetune_job``), a file
``uploaded`` and not yet validated (``validate_file``), a file whose safety report is
``pending`` (``score_dataset``). A message can be lost: the broker was down when it was
published, or it went down with the message in it. :func:`redispatch_unclaimed`, run by the
beat beside the lease reaper, sends the message again for every such row still waiting
``redispatch_after_seconds`` after its last send; while the work stays unclaimed the gap
doubles up to ``redispatch_max_seconds`` (a job behind a long queue is not flooded with
copies). A scoring claim (``running``) whose worker stopped renewing it for
``scoring_lease_seconds`` is sent again too.

Duplicates are harmless: each task claims its work with a compare-and-set (the job claim,
the file's locked status check, the scoring claim token), so a second delivery finds the work
taken or done and returns without writing.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session

from bds_service.files.service import scoring_claim_expired
from bds_service.files.states import FileStatus, SafetyStatus
from bds_service.jobs.service import training_message
from bds_service.jobs.states import JobStatus
from bds_service.models import File, FineTuningJob
from bds_service.settings import Settings
from bds_service.tasks import (
    PREPARE_JOB,
    SCORE_DATASET,
    VALIDATE_FILE,
    TaskMessage,
    enqueue_after_commit,
)

SWEEP_LIMIT = 500
"""Rows re-dispatched per sweep and kind at most (the next sweep takes the rest)."""


@dataclass
class SweepOutcome:
    """Ids sent again, by task."""

    sent: dict[str, list[str]] = field(default_factory=dict)

    def add(self, task: str, object_id: str) -> None:
        """Record one re-sent message."""
        self.sent.setdefault(task, []).append(object_id)

    def __bool__(self) -> bool:
        return any(self.sent.values())


def redispatch_gap(dispatch_count: int, settings: Settings) -> dt.timedelta:
    """How long a row sent ``dispatch_count`` times already waits before the next send."""
    seconds = settings.redispatch_after_seconds * 2 ** min(dispatch_count, 16)
    return dt.timedelta(seconds=min(seconds, settings.redispatch_max_seconds))


def _due(row: FineTuningJob | File, now: dt.datetime, settings: Settings) -> bool:
    since = row.dispatched_at or row.created_at
    return now - since >= redispatch_gap(row.dispatch_count, settings)


def _resend(
    session: Session,
    model: Any,
    row: FineTuningJob | File,
    now: dt.datetime,
    values: dict[str, Any] | None = None,
) -> bool:
    """Stamp the new send, if nobody changed the row since it was read (compare-and-set)."""
    if row.dispatched_at is None:
        unchanged = model.dispatched_at.is_(None)
    else:
        unchanged = model.dispatched_at == row.dispatched_at
    conditions = [model.id == row.id, unchanged]
    if isinstance(row, FineTuningJob):
        conditions.append(FineTuningJob.status == row.status)
    else:
        conditions += [File.status == row.status, _same_safety_status(row.safety_status)]
    result = session.execute(
        update(model)
        .where(*conditions)
        .values(dispatched_at=now, dispatch_count=model.dispatch_count + 1, **(values or {}))
        .execution_options(synchronize_session=False)
    )
    assert isinstance(result, CursorResult)
    return int(result.rowcount) == 1


def _same_safety_status(status: str | None) -> Any:
    return File.safety_status.is_(None) if status is None else File.safety_status == status


def redispatch_unclaimed(session: Session, settings: Settings, now: dt.datetime) -> SweepOutcome:
    """Send again the message of every job and file that waits for a worker longer than it
    should; returns what was sent. The messages go out after the session commits."""
    outcome = SweepOutcome()
    earliest = now - dt.timedelta(seconds=settings.redispatch_after_seconds)
    not_sent_since = or_(
        FineTuningJob.dispatched_at < earliest,
        and_(FineTuningJob.dispatched_at.is_(None), FineTuningJob.created_at < earliest),
    )
    jobs = session.scalars(
        select(FineTuningJob)
        .where(
            FineTuningJob.status.in_([JobStatus.QUEUED.value, JobStatus.VALIDATING_FILES.value]),
            not_sent_since,
        )
        .order_by(FineTuningJob.created_at)
        .limit(SWEEP_LIMIT)
    )
    for job in list(jobs):
        if not _due(job, now, settings) or not _resend(session, FineTuningJob, job, now):
            continue
        if job.status == JobStatus.QUEUED:
            message = training_message(job)
        else:
            message = TaskMessage(PREPARE_JOB, (job.id,))
        enqueue_after_commit(session, message)
        outcome.add(message.name, job.id)

    file_not_sent_since = or_(
        File.dispatched_at < earliest,
        and_(File.dispatched_at.is_(None), File.created_at < earliest),
    )
    files = session.scalars(
        select(File)
        .where(
            File.deleted_at.is_(None),
            or_(
                File.status == FileStatus.UPLOADED,
                File.safety_status.in_([SafetyStatus.PENDING, SafetyStatus.RUNNING]),
            ),
            file_not_sent_since,
        )
        .order_by(File.created_at)
        .limit(SWEEP_LIMIT)
    )
    for file in list(files):
        values: dict[str, Any] = {}
        if file.status == FileStatus.UPLOADED:
            task, due = VALIDATE_FILE, _due(file, now, settings)
        elif file.safety_status == SafetyStatus.PENDING:
            task, due = SCORE_DATASET, _due(file, now, settings)
        else:
            # Running, but its worker stopped renewing the claim: back to pending, so the old
            # worker's renewals and result are refused and the next delivery claims it afresh.
            task, due = SCORE_DATASET, scoring_claim_expired(file, now, settings)
            values = {"safety_status": SafetyStatus.PENDING, "scoring_claim": None}
        if due and _resend(session, File, file, now, values):
            enqueue_after_commit(session, TaskMessage(task, (file.id,)))
            outcome.add(task, file.id)
    return outcome
