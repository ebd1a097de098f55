"""Cross-tenant reads for the provider's dashboard.

Everything else in the service reads a customer's rows through a tenant-scoped repository.
The provider's operators see every tenant by design, so these queries are unscoped; they are
reached only from admin-key routes, and those routes write an audit row for every read. Reads
of one job's events or checkpoints still go through the scoped repositories, with the job's
own tenant.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from sqlalchemy import Select, func, or_, select
from sqlalchemy.orm import Session

from bds_service.files.states import SafetyStatus
from bds_service.jobs.repository import JobCheckpointRepository, JobEventRepository
from bds_service.jobs.states import JobStatus
from bds_service.models import (
    ApiKey,
    AuditLog,
    DatasetReview,
    File,
    FineTuningJob,
    JobCheckpoint,
    JobEvent,
    Tenant,
    utcnow,
)

METRICS = "metrics"


def count_jobs_by_status(session: Session) -> dict[str, int]:
    """How many jobs are in each status (statuses with no job are absent)."""
    rows = session.execute(
        select(FineTuningJob.status, func.count()).group_by(FineTuningJob.status)
    ).all()
    return {str(status): int(count) for status, count in rows}


def jobs_in_statuses(
    session: Session, statuses: Sequence[str], limit: int = 100
) -> list[tuple[FineTuningJob, str]]:
    """Jobs in the given statuses with their tenant's name, oldest start first."""
    statement = (
        select(FineTuningJob, Tenant.name)
        .join(Tenant, Tenant.id == FineTuningJob.tenant_id)
        .where(FineTuningJob.status.in_(list(statuses)))
        .order_by(FineTuningJob.started_at, FineTuningJob.created_at, FineTuningJob.id)
        .limit(limit)
    )
    return [(job, str(name)) for job, name in session.execute(statement).all()]


def latest_metrics_events(session: Session, job_ids: Sequence[str]) -> dict[str, JobEvent]:
    """Each job's newest metrics event (progress, loss, ETA), by job id."""
    if not job_ids:
        return {}
    newest = (
        select(func.max(JobEvent.seq).label("seq"))
        .where(JobEvent.job_id.in_(list(job_ids)), JobEvent.event_type == METRICS)
        .group_by(JobEvent.job_id)
        .subquery()
    )
    rows = session.scalars(select(JobEvent).join(newest, newest.c.seq == JobEvent.seq))
    return {event.job_id: event for event in rows}


def recent_failed_jobs(session: Session, limit: int = 10) -> list[tuple[FineTuningJob, str]]:
    """The newest failed jobs with their tenant's name."""
    statement = (
        select(FineTuningJob, Tenant.name)
        .join(Tenant, Tenant.id == FineTuningJob.tenant_id)
        .where(FineTuningJob.status == JobStatus.FAILED.value)
        .order_by(FineTuningJob.finished_at.desc(), FineTuningJob.id.desc())
        .limit(limit)
    )
    return [(job, str(name)) for job, name in session.execute(statement).all()]


def recent_failed_scorings(session: Session, limit: int = 10) -> list[tuple[File, str]]:
    """The newest files whose safety scoring failed, with their tenant's name."""
    statement = (
        select(File, Tenant.name)
        .join(Tenant, Tenant.id == File.tenant_id)
        .where(File.safety_status == SafetyStatus.FAILED, File.deleted_at.is_(None))
        .order_by(File.processed_at.desc(), File.id.desc())
        .limit(limit)
    )
    return [(file, str(name)) for file, name in session.execute(statement).all()]


@dataclass(frozen=True)
class WorkerSeen:
    """A worker identity and when it last did something."""

    worker_id: str
    last_seen: dt.datetime
    n_actions: int
    holds_job: str | None = None
    lease_expires_at: dt.datetime | None = None


def workers_seen(session: Session, since: dt.datetime, limit: int = 50) -> list[WorkerSeen]:
    """Workers that hold a job lease now or wrote audit rows since ``since``, newest first.

    A training worker's id names its host, process and attempt; a lease is live while its
    heartbeat keeps ``lease_expires_at`` in the future.
    """
    leases = session.execute(
        select(FineTuningJob.lease_owner, FineTuningJob.id, FineTuningJob.lease_expires_at).where(
            FineTuningJob.lease_owner.is_not(None),
            FineTuningJob.status.in_([JobStatus.RUNNING.value, JobStatus.CANCELLING.value]),
        )
    ).all()
    holding = {str(owner): (str(job_id), expires) for owner, job_id, expires in leases}
    activity = session.execute(
        select(AuditLog.actor_id, func.max(AuditLog.created_at), func.count())
        .where(AuditLog.actor_type == "worker", AuditLog.created_at >= since)
        .group_by(AuditLog.actor_id)
        .order_by(func.max(AuditLog.created_at).desc())
        .limit(limit)
    ).all()
    seen: dict[str, WorkerSeen] = {}
    for actor_id, last_seen, count in activity:
        worker_id = str(actor_id)
        job_id, expires = holding.get(worker_id, (None, None))
        seen[worker_id] = WorkerSeen(worker_id, last_seen, int(count), job_id, expires)
    for worker_id, (job_id, expires) in holding.items():
        if worker_id not in seen and expires is not None:
            seen[worker_id] = WorkerSeen(worker_id, expires, 0, job_id, expires)
    return sorted(seen.values(), key=lambda worker: worker.last_seen, reverse=True)


def search_jobs(
    session: Session,
    *,
    tenant_id: str | None,
    status: str | None,
    limit: int,
    offset: int = 0,
) -> list[tuple[FineTuningJob, str]]:
    """Jobs of every tenant (or one), optionally in one status, newest first."""
    statement = select(FineTuningJob, Tenant.name).join(
        Tenant, Tenant.id == FineTuningJob.tenant_id
    )
    if tenant_id:
        statement = statement.where(FineTuningJob.tenant_id == tenant_id)
    if status:
        statement = statement.where(FineTuningJob.status == status)
    statement = (
        statement.order_by(FineTuningJob.created_at.desc(), FineTuningJob.id.desc())
        .offset(offset)
        .limit(limit)
    )
    return [(job, str(name)) for job, name in session.execute(statement).all()]


def job_by_id(session: Session, job_id: str) -> tuple[FineTuningJob, str] | None:
    """A job of any tenant and its tenant's name."""
    row = session.execute(
        select(FineTuningJob, Tenant.name)
        .join(Tenant, Tenant.id == FineTuningJob.tenant_id)
        .where(FineTuningJob.id == job_id)
    ).one_or_none()
    return None if row is None else (row[0], str(row[1]))


def job_events(session: Session, job: FineTuningJob, limit: int = 500) -> list[JobEvent]:
    """A job's events, oldest first (the newest ``limit``)."""
    statement = (
        JobEventRepository(session, job.tenant_id)
        .scoped()
        .where(JobEvent.job_id == job.id)
        .order_by(JobEvent.seq.desc())
        .limit(limit)
    )
    return list(reversed(list(session.scalars(statement))))


def job_metrics(session: Session, job: FineTuningJob) -> list[JobEvent]:
    """A job's metrics events in step order (the data of its loss and weight plots)."""
    statement = (
        JobEventRepository(session, job.tenant_id)
        .scoped()
        .where(JobEvent.job_id == job.id, JobEvent.event_type == METRICS)
        .order_by(JobEvent.seq)
    )
    return list(session.scalars(statement))


def job_checkpoints(session: Session, job: FineTuningJob) -> list[JobCheckpoint]:
    """A job's recorded checkpoints, newest step first."""
    statement = (
        JobCheckpointRepository(session, job.tenant_id)
        .scoped()
        .where(JobCheckpoint.job_id == job.id)
        .order_by(JobCheckpoint.step_number.desc())
    )
    return list(session.scalars(statement))


def search_files(
    session: Session,
    *,
    tenant_id: str | None,
    purpose: str | None,
    decision: str | None,
    limit: int,
    offset: int = 0,
) -> list[tuple[File, str, DatasetReview | None]]:
    """Live files of every tenant (or one) with tenant name and review, newest first.

    ``decision`` filters by review: ``approved``, ``blocked`` or ``unreviewed``.
    """
    statement = (
        select(File, Tenant.name, DatasetReview)
        .join(Tenant, Tenant.id == File.tenant_id)
        .outerjoin(DatasetReview, DatasetReview.file_id == File.id)
        .where(File.deleted_at.is_(None))
    )
    if tenant_id:
        statement = statement.where(File.tenant_id == tenant_id)
    if purpose:
        statement = statement.where(File.purpose == purpose)
    if decision == "unreviewed":
        statement = statement.where(DatasetReview.decision.is_(None))
    elif decision:
        statement = statement.where(DatasetReview.decision == decision)
    statement = (
        statement.order_by(File.created_at.desc(), File.id.desc()).offset(offset).limit(limit)
    )
    return [(file, str(name), review) for file, name, review in session.execute(statement).all()]


def file_by_id(session: Session, file_id: str) -> tuple[File, str] | None:
    """A live file of any tenant and its tenant's name."""
    row = session.execute(
        select(File, Tenant.name)
        .join(Tenant, Tenant.id == File.tenant_id)
        .where(File.id == file_id, File.deleted_at.is_(None))
    ).one_or_none()
    return None if row is None else (row[0], str(row[1]))


def jobs_using_file(session: Session, file: File, limit: int = 50) -> list[FineTuningJob]:
    """The newest jobs of the file's tenant that train, validate or align on it."""
    statement = (
        select(FineTuningJob)
        .where(
            FineTuningJob.tenant_id == file.tenant_id,
            (FineTuningJob.training_file_id == file.id)
            | (FineTuningJob.validation_file_id == file.id)
            | (FineTuningJob.safety_file_id == file.id),
        )
        .order_by(FineTuningJob.created_at.desc())
        .limit(limit)
    )
    return list(session.scalars(statement))


@dataclass(frozen=True)
class TenantSummary:
    """A tenant and how much it has."""

    tenant: Tenant
    n_live_keys: int
    n_files: int
    n_jobs: int
    n_unfinished_jobs: int


def tenant_summaries(session: Session) -> list[TenantSummary]:
    """Every tenant with counts of live keys, files and jobs, oldest tenant first."""
    now = utcnow()
    keys = dict(
        session.execute(
            select(ApiKey.tenant_id, func.count())
            .where(
                ApiKey.revoked_at.is_(None),
                or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > now),
            )
            .group_by(ApiKey.tenant_id)
        ).all()
    )
    files = dict(
        session.execute(
            select(File.tenant_id, func.count())
            .where(File.deleted_at.is_(None))
            .group_by(File.tenant_id)
        ).all()
    )
    jobs = dict(
        session.execute(
            select(FineTuningJob.tenant_id, func.count()).group_by(FineTuningJob.tenant_id)
        ).all()
    )
    unfinished_statuses = [
        JobStatus.VALIDATING_FILES.value,
        JobStatus.QUEUED.value,
        JobStatus.RUNNING.value,
        JobStatus.CANCELLING.value,
    ]
    unfinished = dict(
        session.execute(
            select(FineTuningJob.tenant_id, func.count())
            .where(FineTuningJob.status.in_(unfinished_statuses))
            .group_by(FineTuningJob.tenant_id)
        ).all()
    )
    tenants = session.scalars(select(Tenant).order_by(Tenant.created_at, Tenant.id))
    return [
        TenantSummary(
            tenant=tenant,
            n_live_keys=int(keys.get(tenant.id, 0)),
            n_files=int(files.get(tenant.id, 0)),
            n_jobs=int(jobs.get(tenant.id, 0)),
            n_unfinished_jobs=int(unfinished.get(tenant.id, 0)),
        )
        for tenant in tenants
    ]


@dataclass(frozen=True)
class AuditFilter:
    """Which audit rows to show: every field is optional and they combine with AND."""

    tenant_id: str | None = None
    actor_id: str | None = None
    action: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None

    def apply(self, statement: Select[AuditLog]) -> Select[AuditLog]:
        """``statement`` narrowed to the rows this filter admits.

        ``action`` matches a whole action or a prefix ending at a dot (``dataset`` matches
        ``dataset.block``); ``actor_id`` matches exactly.
        """
        if self.tenant_id:
            statement = statement.where(AuditLog.tenant_id == self.tenant_id)
        if self.actor_id:
            statement = statement.where(AuditLog.actor_id == self.actor_id)
        if self.action:
            prefix = self.action.rstrip(".")
            statement = statement.where(
                (AuditLog.action == prefix) | AuditLog.action.startswith(prefix + ".")
            )
        if self.since:
            statement = statement.where(AuditLog.created_at >= self.since)
        if self.until:
            statement = statement.where(AuditLog.created_at < self.until)
        return statement


def search_audit_log(
    session: Session, audit_filter: AuditFilter, *, limit: int, before_id: int | None = None
) -> list[AuditLog]:
    """Audit rows matching the filter, newest first; ``before_id`` pages back."""
    statement = audit_filter.apply(select(AuditLog))
    if before_id is not None:
        statement = statement.where(AuditLog.id < before_id)
    return list(session.scalars(statement.order_by(AuditLog.id.desc()).limit(limit)))


def iter_audit_log(
    session: Session, audit_filter: AuditFilter, *, max_rows: int, batch_size: int = 1000
) -> Iterator[AuditLog]:
    """Audit rows matching the filter, oldest first, read in batches (for an export)."""
    last_id = 0
    produced = 0
    while produced < max_rows:
        statement = audit_filter.apply(select(AuditLog)).where(AuditLog.id > last_id)
        batch = list(
            session.scalars(
                statement.order_by(AuditLog.id).limit(min(batch_size, max_rows - produced))
            )
        )
        if not batch:
            return
        yield from batch
        produced += len(batch)
        last_id = batch[-1].id


def distinct_audit_actions(session: Session) -> list[str]:
    """Every action name in the audit log, sorted (for the filter's suggestions)."""
    return sorted(str(action) for action in session.scalars(select(AuditLog.action).distinct()))


def display_names(session: Session, ids: Iterable[str | None]) -> dict[str, str]:
    """Names for the ids an audit row mentions, so a page can show them beside the ids.

    Tenants by name, API keys by name (or prefix) and tenant, files by file name, jobs by
    tenant and suffix; ids of anything else (or of nothing that exists) are left out.
    """
    wanted = {value for value in ids if value}
    if not wanted:
        return {}
    names: dict[str, str] = {}
    tenant_names = {
        str(row[0]): str(row[1]) for row in session.execute(select(Tenant.id, Tenant.name))
    }
    for tenant_id in wanted & set(tenant_names):
        names[tenant_id] = tenant_names[tenant_id]
    keys = session.execute(
        select(ApiKey.id, ApiKey.name, ApiKey.key_prefix, ApiKey.tenant_id).where(
            ApiKey.id.in_(wanted)
        )
    ).all()
    for key_id, name, prefix, tenant_id in keys:
        label = f"“{name}”" if name else f"{prefix}…"
        names[key_id] = f"{label} of {tenant_names.get(tenant_id, tenant_id)}"
    files = session.execute(select(File.id, File.filename).where(File.id.in_(wanted))).all()
    names.update({str(file_id): str(filename) for file_id, filename in files})
    jobs = session.execute(
        select(FineTuningJob.id, FineTuningJob.tenant_id, FineTuningJob.suffix).where(
            FineTuningJob.id.in_(wanted)
        )
    ).all()
    for job_id, tenant_id, suffix in jobs:
        owner = tenant_names.get(tenant_id, tenant_id)
        names[job_id] = f"job of {owner}" + (f" ({suffix})" if suffix else "")
    return names


def page_view_recorded(
    session: Session,
    *,
    request_id: str,
    actor_id: str | None,
    action: str,
    tenant_id: str,
    target_id: str,
    within: dt.timedelta = dt.timedelta(hours=1),
) -> bool:
    """Whether ``actor_id``'s view ``action`` of ``target_id`` was audited under
    ``request_id`` lately (the plots of an audited page then need no row of their own)."""
    statement = (
        select(AuditLog.id)
        .where(
            AuditLog.tenant_id == tenant_id,
            AuditLog.created_at >= utcnow() - within,
            AuditLog.request_id == request_id,
            AuditLog.actor_id == actor_id,
            AuditLog.action == action,
            AuditLog.target_id == target_id,
        )
        .limit(1)
    )
    return session.scalar(statement) is not None
