"""Queries over jobs, events and checkpoints, and the compare-and-set updates of job state.

Tenant reads go through the scoped repositories. The task-side functions take a job id because
a worker acts for the system; each state change there is one UPDATE whose WHERE clause states
what must still be true (status, and for a worker its lease), and whose row count says whether
it happened. Two workers, or a worker and a cancel request, can never both win.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from sqlalchemy import (
    Insert,
    Select,
    and_,
    bindparam,
    func,
    insert,
    inspect,
    or_,
    select,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session, make_transient_to_detached

from bds_service.ids import EVENT_PREFIX, new_id
from bds_service.jobs.states import ACTIVE_STATUSES, JobStatus, check_transition
from bds_service.models import (
    AuditLog,
    FineTuningJob,
    IdempotencyKey,
    JobCheckpoint,
    JobEvent,
    table_of,
    utcnow,
)
from bds_service.repository import Page, TenantScopedRepository


@dataclass(frozen=True)
class StoredIdempotencyKey:
    """What a stored Idempotency-Key says about the request that first used it."""

    endpoint: str
    request_fingerprint: str
    resource_id: str


def find_idempotency_key(session: Session, tenant_id: str, key: str) -> StoredIdempotencyKey | None:
    """The tenant's stored Idempotency-Key ``key``, or None."""
    row = (
        session.connection()
        .execute(_find_key_statement(), {"tenant_id": tenant_id, "key": key})
        .first()
    )
    if row is None:
        return None
    endpoint, fingerprint, resource_id = row
    return StoredIdempotencyKey(endpoint, fingerprint, resource_id)


@cache
def _find_key_statement() -> Select[str, str, str]:
    # Built once (the busiest requests look keys up): the values are bound at execution.
    return select(
        IdempotencyKey.endpoint, IdempotencyKey.request_fingerprint, IdempotencyKey.resource_id
    ).where(
        IdempotencyKey.tenant_id == bindparam("tenant_id"), IdempotencyKey.key == bindparam("key")
    )


def insert_new_job(
    session: Session,
    values: dict[str, Any],
    *,
    events: Sequence[dict[str, Any]],
    audit_row: dict[str, Any],
    max_unfinished: int,
) -> tuple[FineTuningJob | None, int]:
    """INSERT a new job, its first events (``level``, ``event_type``, ``message`` and
    ``data`` each) and its audit row (:func:`bds_service.audit.row_values`) if the tenant has
    fewer than ``max_unfinished`` unfinished jobs. Returns the job, as a persistent object of
    the session built from ``values`` without reading it back (None when the cap refused
    it), and the count of the tenant's unfinished jobs before it.

    The caller holds the tenant's lock (:meth:`TenantRepository.lock_limits`), taken in an
    earlier statement, so the count sees every job of the tenant committed before it and no
    other create can add one until this transaction ends.

    The same rows the unit of work would write (only the columns given are sent; the others
    take their defaults), but as Core statements, built and compiled once per process for
    each set of columns and number of events. On PostgreSQL this is one statement: the count,
    and the job, the audit row and the events as data-modifying CTEs that insert only while
    the count is under the cap. Elsewhere, the count and then one INSERT per table. A job
    create is the busiest write. ``values`` must hold ``id``, ``tenant_id`` and
    ``created_at``, which the events and the audit row share.
    """
    columns = _job_columns()
    created_at = values["created_at"]
    params = {f"job_{columns[key]}": value for key, value in values.items()}
    params.update({f"audit_{key}": value for key, value in audit_row.items()})
    params["audit_created_at"] = created_at
    for index, event in enumerate(events):
        row = {
            "id": new_id(EVENT_PREFIX),
            "job_id": values["id"],
            "tenant_id": values["tenant_id"],
            "created_at": created_at,
            **event,
        }
        params.update({f"event{index}_{key}": value for key, value in row.items()})
    params["max_unfinished"] = max_unfinished
    connection = session.connection()
    if session.get_bind().dialect.name == "postgresql":
        guarded = _guarded_job_insert(tuple(params), len(events))
        unfinished = int(connection.execute(guarded, params).scalar_one())
        if unfinished >= max_unfinished:
            return None, unfinished
    else:
        unfinished = int(
            connection.execute(
                _count_unfinished_statement(), {"tenant_id": values["tenant_id"]}
            ).scalar_one()
        )
        if unfinished >= max_unfinished:
            return None, unfinished
        for insert_statement in _job_inserts(tuple(params), len(events)):
            connection.execute(insert_statement, params)
    # As if loaded: every attribute set (in the instance's dict, as loading does, without an
    # attribute event per column), no pending change.
    job: FineTuningJob = inspect(FineTuningJob).class_manager.new_instance()
    job.__dict__.update(dict.fromkeys(columns))
    job.__dict__.update(values)
    make_transient_to_detached(job)
    session.add(job)
    return job, unfinished


def _bound(names: tuple[str, ...], prefix: str) -> dict[str, Any]:
    """``{column: bindparam(name)}`` for the parameter names ``<prefix><column>``."""
    return {name.removeprefix(prefix): bindparam(name) for name in names if name.startswith(prefix)}


def _bound_row(table: Any, names: tuple[str, ...], prefix: str) -> tuple[list[str], Select[Any]]:
    """The columns ``<prefix><column>`` of ``names`` name in ``table``, and a one-row SELECT
    of their bound values (typed as the columns, so that PostgreSQL reads them as such)."""
    columns = list(_bound(names, prefix))
    row = select(
        *(bindparam(f"{prefix}{column}", type_=table.c[column].type) for column in columns)
    )
    return columns, row


@cache
def _job_inserts(names: tuple[str, ...], n_events: int) -> list[Insert]:
    """The INSERTs of a job, its audit row and ``n_events`` events for these parameter names
    (``job_<column>``, ``audit_<column>``, ``event<i>_<column>``), bound at execution: one
    per table. The events are one ``INSERT ... SELECT`` of a ``UNION ALL`` of one-row
    SELECTs, in order, so that their ``seq`` follows it (a multi-row VALUES would do the
    same, but SQLAlchemy cannot cache one: it would be compiled afresh on every call)."""
    statements = [
        insert(table_of(FineTuningJob)).values(_bound(names, "job_")),
        insert(table_of(AuditLog)).values(_bound(names, "audit_")),
    ]
    if n_events:
        table = table_of(JobEvent)
        rows = [_bound_row(table, names, f"event{index}_") for index in range(n_events)]
        columns = rows[0][0]
        selected = rows[0][1] if n_events == 1 else union_all(*(row for _, row in rows))
        statements.append(insert(table).from_select(columns, selected))
    return statements


@cache
def _guarded_job_insert(names: tuple[str, ...], n_events: int) -> Select[int]:
    """PostgreSQL: :func:`_job_inserts` as one statement that inserts only while the
    tenant's unfinished jobs (``job_tenant_id``) number fewer than ``max_unfinished``, and
    returns their count. The job's INSERT selects its row from the count only under the cap;
    the audit row's and the events' select theirs from the job's RETURNING (no job, no rows).
    Data-modifying CTEs run to completion whether or not the main query reads them, and
    foreign keys are checked at the end of the statement."""
    jobs_table = table_of(FineTuningJob)
    unfinished = (
        select(func.count().label("count"))
        .where(
            FineTuningJob.tenant_id == bindparam("job_tenant_id"),
            FineTuningJob.status.in_(sorted(ACTIVE_STATUSES)),
        )
        .cte("unfinished")
    )
    columns, row = _bound_row(jobs_table, names, "job_")
    new_job = (
        insert(jobs_table)
        .from_select(columns, row.where(unfinished.c.count < bindparam("max_unfinished")))
        .returning(jobs_table.c.id)
        .cte("new_job")
    )
    statement = select(unfinished.c.count).add_cte(new_job)
    audit_columns, audit_row = _bound_row(table_of(AuditLog), names, "audit_")
    audit_insert = insert(table_of(AuditLog)).from_select(
        audit_columns, audit_row.select_from(new_job)
    )
    statement = statement.add_cte(audit_insert.cte("new_audit_row"))
    if n_events:
        table = table_of(JobEvent)
        rows = [_bound_row(table, names, f"event{index}_") for index in range(n_events)]
        selects = [row.select_from(new_job) for _, row in rows]
        selected = selects[0] if n_events == 1 else union_all(*selects)
        events_insert = insert(table).from_select(rows[0][0], selected)
        statement = statement.add_cte(events_insert.cte("new_events"))
    return statement


@cache
def _job_columns() -> dict[str, str]:
    """Column key of each attribute of a job (``job_metadata`` is the column ``metadata``)."""
    return {attr.key: attr.columns[0].key for attr in inspect(FineTuningJob).column_attrs}


def claim_idempotency_key(
    session: Session,
    *,
    tenant_id: str,
    key: str,
    endpoint: str,
    request_fingerprint: str,
    resource_id: str,
) -> bool:
    """Store a tenant's Idempotency-Key for the resource about to be created; False if the
    key is stored already. Of two transactions claiming one key at once, the second waits on
    the unique key until the first ends, then stores nothing (the first committed) or its own
    claim (the first rolled back). One statement: no savepoint around an INSERT that may fail.
    """
    params = {
        "tenant_id": tenant_id,
        "key": key,
        "endpoint": endpoint,
        "request_fingerprint": request_fingerprint,
        "resource_id": resource_id,
        "created_at": utcnow(),
    }
    statement = _claim_statement(session.get_bind().dialect.name)
    return session.connection().execute(statement, params).first() is not None


@cache
def _claim_statement(dialect: str) -> Insert:
    # Built once (every job create claims its key): the values are bound at execution.
    table = table_of(IdempotencyKey)
    insert_into = postgresql_insert if dialect == "postgresql" else sqlite_insert
    names = ("tenant_id", "key", "endpoint", "request_fingerprint", "resource_id", "created_at")
    return (
        insert_into(table)
        .values({name: bindparam(name) for name in names})
        .on_conflict_do_nothing()
        .returning(table.c.key)
    )


class JobRepository(TenantScopedRepository[FineTuningJob]):
    """One tenant's fine-tuning jobs."""

    model = FineTuningJob

    def page(
        self, *, after: str | None, limit: int, metadata: dict[str, str] | None = None
    ) -> Page[FineTuningJob] | None:
        """Newest first; optionally only jobs whose metadata has every given key and value."""
        statement = self.scoped()
        for key, value in (metadata or {}).items():
            statement = statement.where(FineTuningJob.job_metadata[key].as_string() == value)
        return self.paginate_by_creation(statement, after=after, limit=limit, order="desc")


@cache
def _count_unfinished_statement() -> Select[int]:
    # Built once (every job create counts under its tenant's lock): bound at execution.
    return select(func.count()).where(
        FineTuningJob.tenant_id == bindparam("tenant_id"),
        FineTuningJob.status.in_(sorted(ACTIVE_STATUSES)),
    )


class JobEventRepository(TenantScopedRepository[JobEvent]):
    """Events of one tenant's jobs."""

    model = JobEvent

    def page_for_job(self, job_id: str, *, after: str | None, limit: int) -> Page[JobEvent] | None:
        """Newest first (OpenAI's order); None if ``after`` is not an event of this job."""
        statement = self.scoped().where(JobEvent.job_id == job_id)
        if after is not None:
            cursor_seq = self.session.scalar(
                self.scoped()
                .with_only_columns(JobEvent.seq)
                .where(JobEvent.job_id == job_id, JobEvent.id == after)
            )
            if cursor_seq is None:
                return None
            statement = statement.where(JobEvent.seq < cursor_seq)
        rows = list(self.session.scalars(statement.order_by(JobEvent.seq.desc()).limit(limit + 1)))
        return Page(items=rows[:limit], has_more=len(rows) > limit)


class JobCheckpointRepository(TenantScopedRepository[JobCheckpoint]):
    """Checkpoints of one tenant's jobs."""

    model = JobCheckpoint

    def page_for_job(
        self, job_id: str, *, after: str | None, limit: int
    ) -> Page[JobCheckpoint] | None:
        """Newest step first; None if ``after`` is not a checkpoint of this job."""
        statement = self.scoped().where(JobCheckpoint.job_id == job_id)
        if after is not None:
            cursor_step = self.session.scalar(
                self.scoped()
                .with_only_columns(JobCheckpoint.step_number)
                .where(JobCheckpoint.job_id == job_id, JobCheckpoint.id == after)
            )
            if cursor_step is None:
                return None
            statement = statement.where(JobCheckpoint.step_number < cursor_step)
        statement = statement.order_by(JobCheckpoint.step_number.desc()).limit(limit + 1)
        rows = list(self.session.scalars(statement))
        return Page(items=rows[:limit], has_more=len(rows) > limit)

    def newest(self, job_id: str) -> JobCheckpoint | None:
        """The checkpoint with the highest step, if any."""
        return self.session.scalars(
            self.scoped()
            .where(JobCheckpoint.job_id == job_id)
            .order_by(JobCheckpoint.step_number.desc())
            .limit(1)
        ).first()


# ---- task side: by id, compare-and-set -------------------------------------------------


def load_job_for_task(session: Session, job_id: str) -> FineTuningJob | None:
    """A job by id for a background task (which acts for the system, not a tenant)."""
    return session.scalars(select(FineTuningJob).where(FineTuningJob.id == job_id)).one_or_none()


def jobs_waiting_on_file(session: Session, file_id: str) -> list[str]:
    """Ids of jobs in validating_files that use the file."""
    statement = select(FineTuningJob.id).where(
        FineTuningJob.status == JobStatus.VALIDATING_FILES,
        or_(
            FineTuningJob.training_file_id == file_id,
            FineTuningJob.validation_file_id == file_id,
            FineTuningJob.safety_file_id == file_id,
        ),
    )
    return list(session.scalars(statement))


def why_not_claimable(session: Session, job_id: str, now: dt.datetime) -> str | None:
    """Why no worker could claim the job now (its status, "missing", "held"), or None if
    it waits for one: queued, or running with an expired lease.

    One cheap read, so that a message for a job already finished, cancelled or held by a live
    worker is dropped before the training stack is even imported.
    """
    row = session.execute(
        select(FineTuningJob.status, FineTuningJob.lease_expires_at).where(
            FineTuningJob.id == job_id
        )
    ).one_or_none()
    if row is None:
        return "missing"
    status, lease_expires_at = row
    if status == JobStatus.QUEUED:
        return None
    if status == JobStatus.RUNNING:
        return None if lease_expires_at is not None and lease_expires_at < now else "held"
    return str(status)


def _rowcount(result: Any) -> int:
    assert isinstance(result, CursorResult)
    return int(result.rowcount)


def transition(
    session: Session,
    job_id: str,
    *,
    sources: set[JobStatus],
    target: JobStatus,
    lease_owner: str | None = None,
    lease_expired_by: dt.datetime | None = None,
    values: dict[str, Any] | None = None,
) -> bool:
    """Move a job from one of ``sources`` to ``target`` if it is still there; True if it moved.

    With ``lease_owner`` the update also requires that worker to still hold the lease; with
    ``lease_expired_by`` it requires the lease to have expired by then (so a heartbeat that
    renewed the lease after the reaper looked wins). Leaving the running states clears the
    lease.
    """
    check_transition(sources, target)
    conditions = [FineTuningJob.id == job_id, FineTuningJob.status.in_(sorted(sources))]
    if lease_owner is not None:
        conditions.append(FineTuningJob.lease_owner == lease_owner)
    if lease_expired_by is not None:
        conditions.append(FineTuningJob.lease_expires_at < lease_expired_by)
    new_values: dict[str, Any] = {"status": target.value, **(values or {})}
    if target not in (JobStatus.RUNNING, JobStatus.CANCELLING):
        new_values.setdefault("lease_owner", None)
        new_values.setdefault("lease_expires_at", None)
    result = session.execute(
        update(FineTuningJob)
        .where(*conditions)
        .values(**new_values)
        .execution_options(synchronize_session=False)
    )
    return _rowcount(result) == 1


def claim(
    session: Session,
    job_id: str,
    *,
    owner: str,
    now: dt.datetime,
    lease_seconds: float,
    max_attempts: int,
) -> bool:
    """Take the job for ``owner``: queued, or running with an expired lease (a dead worker).

    One UPDATE sets status, owner, lease and attempt together, so of two workers racing for
    the same job exactly one gets the row.
    """
    check_transition({JobStatus.QUEUED, JobStatus.RUNNING}, JobStatus.RUNNING)
    claimable = or_(
        FineTuningJob.status == JobStatus.QUEUED,
        and_(
            FineTuningJob.status == JobStatus.RUNNING,
            FineTuningJob.lease_expires_at < now,
        ),
    )
    result = session.execute(
        update(FineTuningJob)
        .where(FineTuningJob.id == job_id, claimable, FineTuningJob.attempt < max_attempts)
        .values(
            status=JobStatus.RUNNING.value,
            lease_owner=owner,
            lease_expires_at=now + dt.timedelta(seconds=lease_seconds),
            attempt=FineTuningJob.attempt + 1,
        )
        .execution_options(synchronize_session=False)
    )
    return _rowcount(result) == 1


def renew_lease(
    session: Session, job_id: str, *, owner: str, now: dt.datetime, lease_seconds: float
) -> bool:
    """Extend ``owner``'s lease; False if the worker no longer holds the job."""
    result = session.execute(
        update(FineTuningJob)
        .where(
            FineTuningJob.id == job_id,
            FineTuningJob.lease_owner == owner,
            FineTuningJob.status.in_([JobStatus.RUNNING.value, JobStatus.CANCELLING.value]),
        )
        .values(lease_expires_at=now + dt.timedelta(seconds=lease_seconds))
        .execution_options(synchronize_session=False)
    )
    return _rowcount(result) == 1


def expire_leases_of_processes(
    session: Session, host: str, pids: list[int], now: dt.datetime
) -> list[str]:
    """End now the leases held by these processes of ``host`` (a worker about to kill them),
    so that the reaper re-queues their jobs at its next run instead of after the full lease.
    Returns the job ids."""
    if not pids:
        return []
    owned = or_(*(FineTuningJob.lease_owner.startswith(f"{host}:{pid}:") for pid in pids))
    where = (
        owned,
        FineTuningJob.status.in_([JobStatus.RUNNING.value, JobStatus.CANCELLING.value]),
        FineTuningJob.lease_expires_at > now,
    )
    ids = list(session.scalars(select(FineTuningJob.id).where(*where)))
    if ids:
        session.execute(
            update(FineTuningJob)
            .where(FineTuningJob.id.in_(ids), *where)
            .values(lease_expires_at=now)
            .execution_options(synchronize_session=False)
        )
    return ids


def expired_leases(session: Session, now: dt.datetime, limit: int = 100) -> list[FineTuningJob]:
    """Running or cancelling jobs whose worker stopped renewing its lease."""
    statement = (
        select(FineTuningJob)
        .where(
            FineTuningJob.status.in_([JobStatus.RUNNING.value, JobStatus.CANCELLING.value]),
            FineTuningJob.lease_expires_at < now,
        )
        .order_by(FineTuningJob.lease_expires_at)
        .limit(limit)
    )
    return list(session.scalars(statement))


def succeeded_jobs(session: Session, tenant_id: str, limit: int = 1000) -> list[FineTuningJob]:
    """The tenant's succeeded jobs, newest first (their outputs are the tenant's models)."""
    repository = JobRepository(session, tenant_id)
    statement = (
        repository.scoped()
        .where(FineTuningJob.status == JobStatus.SUCCEEDED.value)
        .order_by(FineTuningJob.finished_at.desc(), FineTuningJob.id.desc())
        .limit(limit)
    )
    return list(session.scalars(statement))
