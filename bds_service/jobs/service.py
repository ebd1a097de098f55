"""Fine-tuning jobs: create (idempotently), list, retrieve, cancel, events, checkpoints.

Creation checks everything that can be checked before any GPU time is spent (model, files,
their purpose and status, alignment data) and leaves the job ``queued`` when its files are
already processed, else ``validating_files`` until the ``prepare_job`` task sees them processed.
The training task is enqueued only after the creating transaction commits.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from sqlalchemy.orm import Session

from bds_core.budget import DEFAULT_LOSS_TIMING, resolve_safety_batch_size
from bds_service import audit
from bds_service.audit import Actor
from bds_service.dataset_reviews.repository import ReviewedFile
from bds_service.dataset_reviews.service import (
    check_files_for_new_job,
    reviewed_files_for_new_job,
)
from bds_service.errors import (
    ConflictError,
    InvalidRequestError,
    LimitExceededError,
    NotFoundError,
    UnprocessableError,
)
from bds_service.files.repository import load_file_for_task
from bds_service.files.states import FilePurpose, FileStatus
from bds_service.ids import JOB_PREFIX, new_id
from bds_service.jobs.lifecycle import JobChange, fail_job, job_error, move_job
from bds_service.jobs.repository import (
    JobCheckpointRepository,
    JobEventRepository,
    JobRepository,
    StoredIdempotencyKey,
    claim_idempotency_key,
    find_idempotency_key,
    insert_new_job,
    jobs_waiting_on_file,
    load_job_for_task,
    succeeded_jobs,
)
from bds_service.jobs.states import TERMINAL_STATUSES, JobStatus
from bds_service.models import (
    FineTuningJob,
    JobCheckpoint,
    JobEvent,
    utcnow,
)
from bds_service.repository import Page
from bds_service.settings import Settings
from bds_service.tasks import PREPARE_JOB, RUN_FINETUNE_JOB, TaskMessage, enqueue_after_commit
from bds_service.tenants.limits import TenantLimitOverrides
from bds_service.tenants.repository import TenantLockTimeoutError, TenantRepository

MethodType = Literal["bds", "supervised"]
CREATE_ENDPOINT = "POST /v1/fine_tuning/jobs"
IDEMPOTENCY_KEY_PATTERN = re.compile(r"^[\x21-\x7e]{1,255}$")
MAX_SEED = 2**31 - 1
MAX_GPUS_PER_JOB = 8
TENANT_LOCK_WAIT_S = 3.0
ACTIVE_JOBS_RETRY_AFTER_S = 30


@dataclass(frozen=True)
class JobSpec:
    """A validated create request (the API builds it from its schema)."""

    model: str
    training_file: str
    validation_file: str | None = None
    method_type: MethodType = "bds"
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    bds: dict[str, Any] = field(default_factory=dict)
    suffix: str | None = None
    seed: int | None = None
    metadata: dict[str, str] | None = None

    def fingerprint(self) -> str:
        """Hash of the request, to tell a retry from a different request with the same key."""
        # The fields as asdict() gives them (their values are JSON data already), without
        # its deep copy: the same text, so keys stored before still match.
        values = {name: getattr(self, name) for name in _SPEC_FIELDS}
        canonical = json.dumps(values, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


_SPEC_FIELDS = tuple(spec_field.name for spec_field in fields(JobSpec))


@dataclass(frozen=True)
class CreatedJob:
    """The job, and whether this request created it (False for an idempotent replay)."""

    job: FineTuningJob
    created: bool


def check_idempotency_key(key: str | None) -> str | None:
    """The key if well formed (1-255 visible ASCII characters); 400 otherwise."""
    if key is None:
        return None
    if not IDEMPOTENCY_KEY_PATTERN.fullmatch(key):
        raise InvalidRequestError(
            "Idempotency-Key must be 1-255 visible ASCII characters (no spaces)",
            code="invalid_idempotency_key",
            param="Idempotency-Key",
        )
    return key


def _usable_file(
    found: dict[str, ReviewedFile], file_id: str, *, purpose: FilePurpose, param: str
) -> ReviewedFile:
    """A tenant's live file of the right purpose that did not fail validation."""
    file = found.get(file_id)
    if file is None:
        raise InvalidRequestError(
            f"{param} {file_id!r} is not one of your files", code=f"invalid_{param}", param=param
        )
    if file.purpose != purpose:
        raise InvalidRequestError(
            f"{param} {file_id} has purpose {str(file.purpose)!r}; it must be uploaded with "
            f"purpose {purpose.value!r}",
            code=f"invalid_{param}",
            param=param,
        )
    if file.status == FileStatus.ERROR:
        raise InvalidRequestError(
            f"{param} {file_id} failed validation: {file.status_details}",
            code=f"invalid_{param}",
            param=param,
        )
    return file


def _resolve_hyperparameters(requested: dict[str, Any], settings: Settings) -> dict[str, Any]:
    def pick(name: str, default: Any) -> Any:
        value = requested.get(name, "auto")
        return default if value in (None, "auto") else value

    return {
        "n_epochs": int(pick("n_epochs", settings.default_n_epochs)),
        "batch_size": int(pick("batch_size", settings.default_batch_size)),
        "learning_rate_multiplier": float(pick("learning_rate_multiplier", 1.0)),
    }


def _replay(
    session: Session, record: StoredIdempotencyKey, tenant_id: str, fingerprint: str
) -> CreatedJob:
    if record.endpoint != CREATE_ENDPOINT or record.request_fingerprint != fingerprint:
        raise UnprocessableError(
            "this Idempotency-Key was already used with a different request; use a new key "
            "for a new request",
            code="idempotency_key_reused",
            param="Idempotency-Key",
        )
    job = JobRepository(session, tenant_id).get(record.resource_id)
    if job is None:  # the key outlived its job; cannot happen while jobs are never deleted
        raise ConflictError("the job of this Idempotency-Key no longer exists", code="conflict")
    return CreatedJob(job=job, created=False)


def training_message(job: FineTuningJob) -> TaskMessage:
    """The task message that trains `job`: on the multi-GPU queue when it asks for several."""
    n_gpus = int(job.method.get("bds", {}).get("n_gpus", 1))
    return TaskMessage(RUN_FINETUNE_JOB, (job.id,), queue="gpu_multi" if n_gpus > 1 else None)


def planned_safety_batch_size(bds: dict[str, Any], batch_size: int) -> int:
    """The alignment rows per step of a bds job (its `method.bds` block, its batch size): the
    one it asked for, or the library's default budget on its `n_gpus` processes, the value
    the trainer resolves (`bds_core.budget.resolve_safety_batch_size`)."""
    return resolve_safety_batch_size(
        batch_size, bds.get("safety_batch_size"), int(bds.get("n_gpus") or 1)
    )


def _check_gpu_split(spec: JobSpec, settings: Settings) -> None:
    """A job on n GPUs splits every step's batch n ways: each GPU needs an example of each kind."""
    n_gpus = int(spec.bds.get("n_gpus", 1))
    if n_gpus == 1:
        return
    if spec.method_type != "bds":
        raise InvalidRequestError(
            "n_gpus is a setting of method bds", code="invalid_value", param="method.bds.n_gpus"
        )
    batch_size = _resolve_hyperparameters(spec.hyperparameters, settings)["batch_size"]
    for name, size in (
        ("batch_size", batch_size),
        ("safety_batch_size", planned_safety_batch_size(spec.bds, batch_size)),
    ):
        if size < n_gpus:
            raise InvalidRequestError(
                f"n_gpus {n_gpus} splits every step's batch between {n_gpus} GPUs, but "
                f"{name} is {size}; use a {name} of at least {n_gpus} or fewer GPUs",
                code="invalid_value",
                param="method.bds.n_gpus",
            )


def create_job(
    session: Session,
    spec: JobSpec,
    *,
    tenant_id: str,
    actor: Actor,
    settings: Settings,
    idempotency_key: str | None = None,
) -> CreatedJob:
    """Create a job, or return the one an earlier request with the same key created."""
    fingerprint = spec.fingerprint()
    job_id = new_id(JOB_PREFIX)
    # The key is claimed first: a retry of a committed request is replayed before any check
    # (none of them can refuse it), and a new key costs no separate lookup. Of two requests
    # with one key at once, the second waits on the key until the first ends. If a check
    # below refuses this request, the rollback takes the claim back.
    if idempotency_key is not None and not claim_idempotency_key(
        session,
        tenant_id=tenant_id,
        key=idempotency_key,
        endpoint=CREATE_ENDPOINT,
        request_fingerprint=fingerprint,
        resource_id=job_id,
    ):
        existing = find_idempotency_key(session, tenant_id, idempotency_key)
        if existing is None:  # the claim found a committed key that this read cannot see
            raise RuntimeError(f"Idempotency-Key {idempotency_key!r} is stored but not visible")
        return _replay(session, existing, tenant_id, fingerprint)

    if spec.model not in settings.base_models:
        raise InvalidRequestError(
            f"model {spec.model!r} is not available; this deployment fine-tunes "
            f"{', '.join(settings.base_models)}",
            code="model_not_available",
            param="model",
        )
    safety_file_id = spec.bds.get("safety_file")
    # Every file of the job in one statement, share-locked: a concurrent delete of one waits
    # for this create (and then refuses, the file being in use), or this create waits for the
    # delete (and finds no file). Many creates share a file at once.
    found = reviewed_files_for_new_job(
        session,
        tenant_id,
        [
            file_id
            for file_id in (spec.training_file, spec.validation_file, safety_file_id)
            if file_id is not None
        ],
    )
    files = [
        _usable_file(
            found, spec.training_file, purpose=FilePurpose.FINE_TUNE, param="training_file"
        )
    ]
    if spec.validation_file is not None:
        if spec.validation_file == spec.training_file:
            raise InvalidRequestError(
                "validation_file must differ from training_file (the same data must not be "
                "used for both)",
                code="invalid_validation_file",
                param="validation_file",
            )
        files.append(
            _usable_file(
                found,
                spec.validation_file,
                purpose=FilePurpose.FINE_TUNE,
                param="validation_file",
            )
        )
    if safety_file_id is not None:
        if spec.method_type != "bds":
            raise InvalidRequestError(
                "safety_file is only used by method bds",
                code="invalid_safety_file",
                param="method.bds.safety_file",
            )
        safety = found.get(safety_file_id)
        if (
            safety is None
            or safety.purpose != FilePurpose.SAFETY_ALIGNMENT
            or safety.status == FileStatus.ERROR
        ):
            raise InvalidRequestError(
                f"safety_file {safety_file_id!r} must be one of your valid files uploaded with "
                f"purpose {FilePurpose.SAFETY_ALIGNMENT.value!r}",
                code="invalid_safety_file",
                param="method.bds.safety_file",
            )
        files.append(safety)
    elif spec.method_type == "bds" and settings.safety_alignment_file is None:
        raise InvalidRequestError(
            "method bds needs alignment data: upload a file with purpose "
            f"{FilePurpose.SAFETY_ALIGNMENT.value!r} and name it in method.bds.safety_file (this deployment "
            "has no default alignment set)",
            code="safety_data_unavailable",
            param="method.bds.safety_file",
        )

    _check_gpu_split(spec, settings)

    # The tenant's row lock serialises its creates, so two requests cannot both slip under
    # the cap on unfinished jobs. The wait is bounded: a queue of waiters would hold database
    # connections that every other request needs.
    try:
        overrides = TenantRepository(session).lock_limits(
            tenant_id, wait_seconds=TENANT_LOCK_WAIT_S
        )
    except TenantLockTimeoutError as busy:
        raise LimitExceededError(
            "other requests of your organization are creating fine-tuning jobs at this moment; "
            "retry in a second",
            code="too_many_concurrent_requests",
            headers={"Retry-After": "1"},
        ) from busy
    cap = (overrides or TenantLimitOverrides()).resolve(settings).max_concurrent_jobs
    hyperparameters = _resolve_hyperparameters(spec.hyperparameters, settings)
    method_block: dict[str, Any] = {"hyperparameters": hyperparameters}
    if spec.method_type == "bds":
        method_block.update(spec.bds)
        # The alignment budget the job trains with, resolved now like its hyperparameters
        # (an unset one is the library's default on its n_gpus processes): the job reports
        # it, and a later change of the default does not change a queued job.
        method_block["safety_batch_size"] = planned_safety_batch_size(
            spec.bds, hyperparameters["batch_size"]
        )
        # Its loss timing too: a queued or resumed job keeps the one it was created with.
        method_block.setdefault("loss_timing", DEFAULT_LOSS_TIMING)
    all_processed = all(file.status == FileStatus.PROCESSED for file in files)
    now = utcnow()
    # The job, its events and its audit row, inserted only while the tenant's unfinished
    # jobs are under its cap (counted under the tenant's lock): one Core statement on
    # PostgreSQL, which also returns the count.
    job, unfinished = insert_new_job(
        session,
        {
            "id": job_id,
            "tenant_id": tenant_id,
            "model": spec.model,
            "training_file_id": spec.training_file,
            "validation_file_id": spec.validation_file,
            "safety_file_id": safety_file_id,
            "status": (JobStatus.QUEUED if all_processed else JobStatus.VALIDATING_FILES).value,
            "hyperparameters": hyperparameters,
            "method": {"type": spec.method_type, spec.method_type: method_block},
            "suffix": spec.suffix,
            "seed": spec.seed if spec.seed is not None else secrets.randbelow(MAX_SEED),
            "job_metadata": spec.metadata,
            "created_at": now,
            "attempt": 0,
            "dispatched_at": now,
            "dispatch_count": 0,
        },
        events=[
            _message(f"Created fine-tuning job: {job_id}"),
            _message(
                "Files validated, job queued"
                if all_processed
                else f"Validating training file: {spec.training_file}"
            ),
        ],
        audit_row=audit.row_values(
            actor,
            "fine_tuning_job.create",
            target_type="fine_tuning_job",
            target_id=job_id,
            details={
                "model": spec.model,
                "method": spec.method_type,
                "idempotency_key": idempotency_key,
            },
        ),
        max_unfinished=cap,
    )
    if job is None:
        raise LimitExceededError(
            f"your organization already has {unfinished} unfinished fine-tuning jobs and may "
            f"have at most {cap} at once; wait for one to finish or cancel one, then retry "
            f"(a job's status, GET /v1/fine_tuning/jobs/{{id}}, says when it has finished; "
            f"Retry-After is a polling interval, not a promise)",
            code="too_many_active_jobs",
            headers={"Retry-After": str(ACTIVE_JOBS_RETRY_AFTER_S)},
        )

    # The provider's review (read with the files): blocked files and the training file's
    # policy. Checked after the cap, as before; a refusal here rolls the new rows back.
    check_files_for_new_job(
        files, training_file_id=spec.training_file, method_type=spec.method_type
    )

    if all_processed:
        enqueue_after_commit(session, training_message(job))
    else:
        # Also covers a file that finished validating while this transaction was open.
        enqueue_after_commit(session, TaskMessage(PREPARE_JOB, (job.id,)))
    return CreatedJob(job=job, created=True)


def _message(text: str) -> dict[str, Any]:
    """An info event's columns (:func:`bds_service.jobs.repository.insert_new_job`)."""
    return {"level": "info", "event_type": "message", "message": text, "data": None}


def list_jobs(
    session: Session,
    tenant_id: str,
    *,
    after: str | None,
    limit: int,
    metadata: dict[str, str] | None = None,
) -> Page[FineTuningJob]:
    """A page of the tenant's jobs, newest first."""
    page = JobRepository(session, tenant_id).page(after=after, limit=limit, metadata=metadata)
    if page is None:
        raise InvalidRequestError(
            f"cursor {after!r} is not one of your jobs", code="invalid_cursor", param="after"
        )
    return page


def get_job(
    session: Session, tenant_id: str, job_id: str, *, for_update: bool = False
) -> FineTuningJob:
    """The tenant's job; 404 for unknown and foreign ids alike."""
    job = JobRepository(session, tenant_id).get(job_id, for_update=for_update)
    if job is None:
        raise NotFoundError(
            f"no fine-tuning job with id {job_id!r}",
            code="job_not_found",
            param="fine_tuning_job_id",
        )
    return job


def cancel_job(session: Session, tenant_id: str, job_id: str, *, actor: Actor) -> FineTuningJob:
    """Cancel a job: at once if no worker has it, else ask the worker (status cancelling)."""
    job = get_job(session, tenant_id, job_id, for_update=True)
    status = JobStatus(job.status)
    if status == JobStatus.CANCELLING:
        return job
    if status in TERMINAL_STATUSES:
        raise ConflictError(
            f"job {job_id} has already {status.value} and cannot be cancelled",
            code="job_not_cancellable",
            param="fine_tuning_job_id",
        )
    now = utcnow()
    if status == JobStatus.RUNNING:
        target, message = JobStatus.CANCELLING, "Cancellation requested; stopping after this step"
        values: dict[str, Any] = {"cancel_requested_at": now}
    else:
        target, message = JobStatus.CANCELLED, "Job cancelled"
        values = {"cancel_requested_at": now, "finished_at": now}
    if not move_job(
        session,
        job,
        target,
        JobChange(
            actor,
            "fine_tuning_job.cancel",
            message,
            details={"from": status.value, "to": target.value},
        ),
        sources={status},
        values=values,
    ):
        raise ConflictError(
            f"job {job_id} changed state while cancelling; retry", code="job_state_changed"
        )
    session.refresh(job)
    return job


def list_events(
    session: Session, tenant_id: str, job_id: str, *, after: str | None, limit: int
) -> Page[JobEvent]:
    """A page of a job's events, newest first."""
    get_job(session, tenant_id, job_id)
    page = JobEventRepository(session, tenant_id).page_for_job(job_id, after=after, limit=limit)
    if page is None:
        raise InvalidRequestError(
            f"cursor {after!r} is not an event of job {job_id}",
            code="invalid_cursor",
            param="after",
        )
    return page


def list_checkpoints(
    session: Session, tenant_id: str, job_id: str, *, after: str | None, limit: int
) -> Page[JobCheckpoint]:
    """A page of a job's checkpoints, newest step first."""
    get_job(session, tenant_id, job_id)
    page = JobCheckpointRepository(session, tenant_id).page_for_job(
        job_id, after=after, limit=limit
    )
    if page is None:
        raise InvalidRequestError(
            f"cursor {after!r} is not a checkpoint of job {job_id}",
            code="invalid_cursor",
            param="after",
        )
    return page


def list_fine_tuned_models(session: Session, tenant_id: str) -> list[FineTuningJob]:
    """The tenant's succeeded jobs, whose ``fine_tuned_model`` names are its models."""
    return succeeded_jobs(session, tenant_id)


def fine_tuned_model_name(job: FineTuningJob, tenant_name: str) -> str:
    """OpenAI-style name of a job's output: ``ft:<base>:<tenant>:<suffix>:<job id>``."""
    return f"ft:{job.model}:{tenant_name}:{job.suffix or ''}:{job.id.removeprefix(JOB_PREFIX)}"


# ---- background task bodies -------------------------------------------------------------


def enqueue_jobs_waiting_on_file(session: Session, file_id: str) -> None:
    """After a file's validation: let every job waiting on it check its files again."""
    for job_id in jobs_waiting_on_file(session, file_id):
        enqueue_after_commit(session, TaskMessage(PREPARE_JOB, (job_id,)))


_FILE_ROLES = (
    ("training_file_id", "training_file"),
    ("validation_file_id", "validation_file"),
    ("safety_file_id", "safety_file"),
)


def prepare_job(session: Session, job_id: str) -> str:
    """Task body: move a validating job on once its files are processed; returns its status.

    Queues the job (and enqueues training) when every file is processed; fails it with the
    file's validation summary when one failed or was deleted; otherwise leaves it waiting.
    """
    job = load_job_for_task(session, job_id)
    if job is None:
        return "missing"
    if job.status != JobStatus.VALIDATING_FILES:
        return job.status
    pending = False
    for attribute, param in _FILE_ROLES:
        file_id = getattr(job, attribute)
        if file_id is None:
            continue
        file = load_file_for_task(session, file_id)
        if file is None or file.deleted_at is not None or file.status == FileStatus.ERROR:
            details = "it was deleted" if file is None or file.deleted_at else file.status_details
            error = job_error(
                f"invalid_{param}", f"{param} {file_id} cannot be used: {details}", param
            )
            fail_job(
                session,
                job,
                error,
                sources={JobStatus.VALIDATING_FILES},
                actor=Actor("worker", "prepare_job", job.tenant_id),
            )
            return JobStatus.FAILED.value
        if file.status != FileStatus.PROCESSED:
            pending = True
    if pending:
        return job.status
    if move_job(
        session,
        job,
        JobStatus.QUEUED,
        JobChange(
            Actor("worker", "prepare_job", job.tenant_id),
            "fine_tuning_job.queue",
            "Files validated, job queued",
        ),
        sources={JobStatus.VALIDATING_FILES},
        values={"dispatched_at": utcnow(), "dispatch_count": 0},
    ):
        enqueue_after_commit(session, training_message(job))
        return JobStatus.QUEUED.value
    return "changed"
