"""SQLAlchemy 2 models: the whole schema of the service.

Alembic migrations (``migrations/versions``) are the only way this schema reaches a database;
``alembic check`` in the tests fails when a model changes without a migration. The same models
run on PostgreSQL and SQLite, so column types stay portable (``JSON``, timezone-aware UTC
datetimes through :class:`UTCDateTime`).
"""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Any, ClassVar, Generic, TypeVar, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from bds_service.files.states import FilePurpose, FileStatus, SafetyStatus

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

ID_LENGTH = 40


def utcnow() -> dt.datetime:
    """The current time, timezone-aware in UTC (the only kind of datetime the service stores)."""
    return dt.datetime.now(dt.UTC)


def unix_seconds(value: dt.datetime | None) -> int | None:
    """A datetime as integer unix seconds, the way the OpenAI API shows times."""
    return None if value is None else int(value.timestamp())


MAX_DATABASE_INT = 2**31 - 1
"""The largest value of an INTEGER column (and of the audit log's ids)."""


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A timezone-aware UTC datetime on every backend.

    PostgreSQL keeps ``timestamptz``; SQLite has no time zones, so values are stored as naive
    UTC and given back their UTC zone on the way out. Naive inputs are refused: they are bugs.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r} given; use bds_service.models.utcnow()")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(
        self, value: dt.datetime | None, dialect: Dialect
    ) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


EnumT = TypeVar("EnumT", bound=StrEnum)


class StrEnumString(TypeDecorator[EnumT], Generic[EnumT]):
    """A StrEnum stored as its value in a plain VARCHAR (the database sees only strings).

    Rows read back as enum members. Bound values pass through as strings, so a filter with a
    string outside the enum (a client's unknown ``purpose``) matches nothing instead of failing.
    """

    impl = String
    cache_ok = True

    def __init__(self, enum: type[EnumT], length: int) -> None:
        super().__init__(length)
        self.enum = enum

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else str(value)

    def process_result_value(self, value: str | None, dialect: Dialect) -> EnumT | None:
        return None if value is None else self.enum(value)


class Base(DeclarativeBase):
    """Declarative base with constraint naming conventions (stable names for migrations)."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dt.datetime: UTCDateTime(),
        dict[str, Any]: JSON(),
        str: String(),
    }


def table_of(model: type[Base]) -> Table:
    """A model's Core table, for the few Core statements that skip the ORM's bookkeeping."""
    return cast(Table, model.__table__)


class Tenant(Base):
    """A customer organisation; every customer-owned row carries its id."""

    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    disabled_at: Mapped[dt.datetime | None]
    # Caps that override the deployment's defaults for this tenant (NULL: the default).
    max_concurrent_jobs: Mapped[int | None] = mapped_column(Integer)
    max_file_bytes: Mapped[int | None] = mapped_column(BigInteger)
    max_examples: Mapped[int | None] = mapped_column(Integer)


class ApiKey(Base):
    """An API key; only its HMAC-SHA256 under the server secret is stored."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    key_prefix: Mapped[str] = mapped_column(String(16))
    name: Mapped[str | None] = mapped_column(String(64))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime | None]
    revoked_at: Mapped[dt.datetime | None]


class File(Base):
    """An uploaded dataset: its bytes live in storage, its validation and safety report here."""

    __tablename__ = "files"
    __table_args__ = (
        Index("ix_files_tenant_created", "tenant_id", "created_at", "id"),
        Index("ix_files_status", "status"),
        Index("ix_files_safety_status", "safety_status"),
    )

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    filename: Mapped[str] = mapped_column(String(255))
    purpose: Mapped[FilePurpose] = mapped_column(StrEnumString(FilePurpose, 32))
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    storage_key: Mapped[str] = mapped_column(String(512))
    # uploaded -> processed | error (the OpenAI file statuses)
    status: Mapped[FileStatus] = mapped_column(StrEnumString(FileStatus, 16))
    status_details: Mapped[str | None] = mapped_column(Text)
    data_format: Mapped[str | None] = mapped_column(String(32))
    n_examples: Mapped[int | None] = mapped_column(Integer)
    validation_report: Mapped[dict[str, Any] | None]
    # pending -> running -> succeeded | failed; None for files that are never scored
    safety_status: Mapped[SafetyStatus | None] = mapped_column(StrEnumString(SafetyStatus, 16))
    safety_report: Mapped[dict[str, Any] | None]
    safety_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    processed_at: Mapped[dt.datetime | None]
    deleted_at: Mapped[dt.datetime | None]
    # Dispatch owned by the database (bds_service.dispatch): when the message of the work the
    # file waits for (validation, scoring) was last sent, or when scoring was claimed, how
    # often it was sent again, and the token of the worker that claimed the scoring.
    dispatched_at: Mapped[dt.datetime | None]
    dispatch_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    scoring_claim: Mapped[str | None] = mapped_column(String(64))


class FineTuningJob(Base):
    """A fine-tuning job; the row is the source of truth for its state and lease."""

    __tablename__ = "fine_tuning_jobs"
    __table_args__ = (
        Index("ix_fine_tuning_jobs_tenant_created", "tenant_id", "created_at", "id"),
        Index("ix_fine_tuning_jobs_status_lease", "status", "lease_expires_at"),
    )

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    model: Mapped[str] = mapped_column(String(200))
    training_file_id: Mapped[str] = mapped_column(ForeignKey("files.id"))
    validation_file_id: Mapped[str | None] = mapped_column(ForeignKey("files.id"))
    safety_file_id: Mapped[str | None] = mapped_column(ForeignKey("files.id"))
    status: Mapped[str] = mapped_column(String(32))
    hyperparameters: Mapped[dict[str, Any]]
    method: Mapped[dict[str, Any]]
    suffix: Mapped[str | None] = mapped_column(String(64))
    seed: Mapped[int] = mapped_column(BigInteger)
    job_metadata: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON)
    fine_tuned_model: Mapped[str | None] = mapped_column(String(300))
    error: Mapped[dict[str, Any] | None]
    trained_tokens: Mapped[int | None] = mapped_column(BigInteger)
    # Training steps the job's settings resolved to (max_steps, or n_epochs passes over the
    # training file); set by the worker when training starts.
    total_steps: Mapped[int | None] = mapped_column(Integer)
    estimated_finish: Mapped[dt.datetime | None]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    started_at: Mapped[dt.datetime | None]
    finished_at: Mapped[dt.datetime | None]
    cancel_requested_at: Mapped[dt.datetime | None]
    # Lease: which worker holds the job and until when (renewed by heartbeat).
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[dt.datetime | None]
    # When the message that should wake a worker for a validating or queued job was last
    # sent, and how often the dispatch sweep sent it again (bds_service.dispatch).
    dispatched_at: Mapped[dt.datetime | None]
    dispatch_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Results.
    adapter_key: Mapped[str | None] = mapped_column(String(512))
    safety_report: Mapped[dict[str, Any] | None]


class JobEvent(Base):
    """One line of a job's history: a message or a metrics snapshot."""

    __tablename__ = "job_events"
    __table_args__ = (Index("ix_job_events_job_seq", "job_id", "seq"),)

    # seq orders events exactly even when two share a timestamp.
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(ID_LENGTH), unique=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("fine_tuning_jobs.id"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    level: Mapped[str] = mapped_column(String(8))
    event_type: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any] | None]


class JobCheckpoint(Base):
    """A verified training checkpoint recorded after the trainer renamed it into place."""

    __tablename__ = "job_checkpoints"
    __table_args__ = (UniqueConstraint("job_id", "step_number"),)

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("fine_tuning_jobs.id"), index=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    step_number: Mapped[int] = mapped_column(Integer)
    storage_key: Mapped[str] = mapped_column(String(512))
    metrics: Mapped[dict[str, Any]]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class IdempotencyKey(Base):
    """A client's Idempotency-Key and the resource its first request created."""

    __tablename__ = "idempotency_keys"

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    endpoint: Mapped[str] = mapped_column(String(64))
    request_fingerprint: Mapped[str] = mapped_column(String(64))
    resource_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class AuditLog(Base):
    """Append-only record of every state change; database triggers refuse UPDATE and DELETE."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_tenant_created", "tenant_id", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    actor_type: Mapped[str] = mapped_column(String(16))
    actor_id: Mapped[str | None] = mapped_column(String(200))
    tenant_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    action: Mapped[str] = mapped_column(String(64))
    target_type: Mapped[str] = mapped_column(String(32))
    target_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    request_id: Mapped[str | None] = mapped_column(String(64))
    details: Mapped[dict[str, Any] | None]


class DatasetReview(Base):
    """The provider's review of one dataset: a decision and the policy jobs on it must follow.

    No row means not reviewed: the file may be used and no policy applies. ``decision`` is
    ``approved`` or ``blocked`` (a blocked file cannot be used by new jobs); ``policy`` is
    ``downweight`` (jobs must train with BDS), ``drop_flagged`` (jobs train without the
    examples the safety report flags) or ``reject`` (jobs are refused while the report flags
    anything), or None for no policy.
    """

    __tablename__ = "dataset_reviews"

    file_id: Mapped[str] = mapped_column(ForeignKey("files.id"), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    decision: Mapped[str | None] = mapped_column(String(16))
    policy: Mapped[str | None] = mapped_column(String(16))
    note: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_by: Mapped[str | None] = mapped_column(String(200))


class WebSession(Base):
    """A browser login to the dashboard or report pages, made by presenting an API key.

    The cookie holds a random token; only its HMAC is stored. A session lives until it ends
    (logout), expires, or its key is revoked or expires.
    """

    __tablename__ = "web_sessions"

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    api_key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id"), index=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime]
    ended_at: Mapped[dt.datetime | None]


class InferenceUsage(Base):
    """Tokens of one chat completion, charged to the tenant whose key asked for it."""

    __tablename__ = "inference_usage"
    __table_args__ = (Index("ix_inference_usage_tenant_created", "tenant_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    api_key_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    # The model id the client named (a base model, or a job's fine_tuned_model) and its job.
    model: Mapped[str] = mapped_column(String(300))
    job_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    # chat (the API), playground (dashboard and report pages) or safety_eval.
    source: Mapped[str] = mapped_column(String(16))
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    request_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class SafetyEvaluation(Base):
    """An on-demand safety evaluation of a succeeded job: the tuned and the base model's
    answers to the caller's prompts, judged for refusals (``POST .../safety_eval``)."""

    __tablename__ = "safety_evaluations"
    __table_args__ = (Index("ix_safety_evaluations_job_created", "job_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("fine_tuning_jobs.id"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    created_by: Mapped[str] = mapped_column(String(200))
    judge: Mapped[str] = mapped_column(String(200))
    n_prompts: Mapped[int] = mapped_column(Integer)
    harmful_score_base: Mapped[float] = mapped_column()
    harmful_score_tuned: Mapped[float] = mapped_column()
    # [{"prompt", "base": {"answer", "refused"}, "tuned": {"answer", "refused"}}]
    results: Mapped[dict[str, Any]]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
