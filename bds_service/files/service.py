"""Files: register uploads, validate them line by line, score them, list, delete.

Validation uses ``bds_core.data`` (format, roles, lengths, duplicates; every issue names its line
and field). With ``validate_uploads_synchronously`` (the default) the API validates while the
client waits and refuses a bad file with a 400 that names the first problem, storing nothing;
otherwise the ``validate_file`` task does it and the file ends ``processed`` or ``error`` with the
same report. Either way a processed ``fine-tune`` file is then scored by the amortized scheduler
(``score_dataset`` task), which fills the safety report.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
import threading
import unicodedata
from pathlib import Path
from typing import Any

from sqlalchemy import or_, update
from sqlalchemy.orm import Session

from bds_core.data import DatasetLimits, ValidationReport, load_examples, validate_file
from bds_service import audit
from bds_service.audit import Actor
from bds_service.db import UnitOfWork, call_after_commit
from bds_service.errors import ConflictError, InvalidRequestError, NotFoundError
from bds_service.files.repository import FileRepository, load_file_for_task
from bds_service.files.states import UPLOAD_PURPOSES, FilePurpose, FileStatus, SafetyStatus
from bds_service.ids import FILE_PREFIX, new_id
from bds_service.jobs.repository import JobRepository
from bds_service.jobs.service import enqueue_jobs_waiting_on_file
from bds_service.jobs.states import ACTIVE_STATUSES
from bds_service.models import File, FineTuningJob, Tenant, utcnow
from bds_service.repository import Page, SortOrder
from bds_service.settings import Settings
from bds_service.storage import LocalStorage, StoredObject
from bds_service.tasks import SCORE_DATASET, VALIDATE_FILE, TaskMessage, enqueue_after_commit
from bds_service.tenants.limits import limits_for

logger = logging.getLogger(__name__)

SCORING_UNAVAILABLE = "scoring_unavailable"

_FORBIDDEN_FILENAME_CHARACTERS = set('/\\:*?"<>|')
# Unicode categories refused in file names: controls (C0, DEL, C1), format characters (bidi
# overrides and isolates, zero-width characters), line and paragraph separators, surrogates,
# private-use and unassigned code points. A name is echoed in Content-Disposition and pages.
_FORBIDDEN_FILENAME_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def new_file_id() -> str:
    """A fresh file id (``file-...``)."""
    return new_id(FILE_PREFIX)


def check_upload_fields(filename: str | None, purpose: str | None) -> str:
    """Validate an upload's purpose and client filename; returns the filename to keep.

    The filename is only a label: content is stored under the file id. Names with path parts
    or control characters are refused rather than cleaned, so the client learns about it.
    """
    if purpose is None:
        raise InvalidRequestError(
            "the form field 'purpose' is required",
            code="missing_required_parameter",
            param="purpose",
        )
    if purpose not in UPLOAD_PURPOSES:
        raise InvalidRequestError(
            f"purpose {purpose!r} is not supported; use one of {', '.join(UPLOAD_PURPOSES)}",
            code="invalid_purpose",
            param="purpose",
        )
    if not filename:
        raise InvalidRequestError(
            "the multipart part 'file' must carry a filename", code="invalid_filename", param="file"
        )
    if (
        len(filename) > 255
        or filename in {".", ".."}
        or not filename.strip()
        or any(
            ch in _FORBIDDEN_FILENAME_CHARACTERS
            or unicodedata.category(ch) in _FORBIDDEN_FILENAME_CATEGORIES
            for ch in filename
        )
    ):
        raise InvalidRequestError(
            f"filename {filename[:80]!r} is not allowed: send a plain name of at most 255 "
            "characters, not only spaces, without path separators, control characters "
            "(C0, DEL, C1 such as U+0085) or invisible format characters (bidi overrides such "
            "as U+202E, zero-width characters)",
            code="invalid_filename",
            param="file",
        )
    return filename


def dataset_limits(settings: Settings, max_examples: int | None = None) -> DatasetLimits:
    """The dataset limits configured for this deployment (``max_examples``: a tenant's cap)."""
    return DatasetLimits(
        max_line_bytes=settings.max_line_bytes,
        max_examples=settings.max_examples if max_examples is None else max_examples,
        min_examples=settings.min_examples,
        max_issues=settings.max_validation_issues,
        max_message_chars=settings.max_message_chars,
    )


def validate_content(
    path: Path, settings: Settings, max_examples: int | None = None
) -> ValidationReport:
    """Validate a stored JSONL file line by line (never raises for bad content)."""
    _examples, report = validate_file(path, dataset_limits(settings, max_examples))
    return report


def _tenant_max_examples(session: Session, tenant_id: str, settings: Settings) -> int:
    return limits_for(session.get(Tenant, tenant_id), settings).max_examples


def _first_error(report: ValidationReport) -> dict[str, Any] | None:
    for issue in report.to_dict()["issues"]:
        if issue.get("severity", "error") == "error":
            return dict(issue)
    return None


def describe_report(report: ValidationReport) -> str:
    """One sentence a person can act on: how many problems, and where the first one is."""
    if report.ok:
        return f"{report.n_examples} valid examples ({report.format} format)"
    first = _first_error(report)
    where = ""
    if first is not None:
        parts = [f"line {first['line']}" if first.get("line") is not None else None]
        parts.append(f"field {first['field']}" if first.get("field") else None)
        location = ", ".join(part for part in parts if part)
        where = f"; first: {location + ': ' if location else ''}{first['message']}"
    return f"the file is not a valid training file ({report.n_errors} error(s){where})"


def invalid_file_error(report: ValidationReport) -> InvalidRequestError:
    """The 400 error for an upload that failed validation, naming its first problem."""
    first = _first_error(report) or {}
    return InvalidRequestError(
        describe_report(report),
        code=str(first.get("code") or "invalid_file"),
        param="file",
        details={
            "line": first.get("line"),
            "field": first.get("field"),
            "validation_report": report.to_dict(),
        },
    )


def _apply_report(file: File, report: ValidationReport) -> None:
    file.validation_report = report.to_dict()
    file.data_format = report.format
    file.n_examples = report.n_examples
    file.status = FileStatus.PROCESSED if report.ok else FileStatus.ERROR
    file.status_details = None if report.ok else describe_report(report)
    file.processed_at = utcnow()


def _after_processed(session: Session, file: File) -> None:
    """Follow-ups of a file reaching processed or error: scoring, and jobs waiting on it."""
    if file.status == FileStatus.PROCESSED and file.purpose == FilePurpose.FINE_TUNE:
        file.safety_status = SafetyStatus.PENDING
        file.dispatched_at, file.dispatch_count = utcnow(), 0
        enqueue_after_commit(session, TaskMessage(SCORE_DATASET, (file.id,)))
    enqueue_jobs_waiting_on_file(session, file.id)


def register_upload(
    session: Session,
    *,
    actor: Actor,
    tenant_id: str,
    file_id: str,
    filename: str,
    purpose: str,
    stored: StoredObject,
    report: ValidationReport | None,
) -> File:
    """Create the row of a stored upload; with a report it is already validated (and valid)."""
    file = File(
        id=file_id,
        tenant_id=tenant_id,
        filename=filename,
        purpose=FilePurpose(purpose),
        bytes=stored.bytes,
        sha256=stored.sha256,
        storage_key=stored.key,
        status=FileStatus.UPLOADED,
    )
    session.add(file)
    session.flush()
    audit.record(
        session,
        actor,
        "file.create",
        target_type="file",
        target_id=file.id,
        tenant_id=tenant_id,
        details={"purpose": purpose, "bytes": stored.bytes, "sha256": stored.sha256},
    )
    if report is None:
        file.dispatched_at, file.dispatch_count = utcnow(), 0
        enqueue_after_commit(session, TaskMessage(VALIDATE_FILE, (file.id,)))
    else:
        _apply_report(file, report)
        _after_processed(session, file)
    return file


def list_files(
    session: Session,
    tenant_id: str,
    *,
    after: str | None,
    limit: int,
    order: SortOrder = "desc",
    purpose: str | None = None,
) -> Page[File]:
    """A page of the tenant's files."""
    page = FileRepository(session, tenant_id).page(
        after=after, limit=limit, order=order, purpose=purpose
    )
    if page is None:
        raise InvalidRequestError(
            f"cursor {after!r} is not one of your files", code="invalid_cursor", param="after"
        )
    return page


def get_file(session: Session, tenant_id: str, file_id: str, *, for_update: bool = False) -> File:
    """The tenant's live file; 404 for unknown, deleted and other tenants' ids alike."""
    file = FileRepository(session, tenant_id).live(file_id, lock="update" if for_update else None)
    if file is None:
        raise NotFoundError(f"no file with id {file_id!r}", code="file_not_found", param="file_id")
    return file


def delete_file(
    session: Session, tenant_id: str, file_id: str, *, actor: Actor, storage: LocalStorage
) -> File:
    """Delete a file: the row is kept (jobs refer to it), the bytes go after commit.

    The row is locked first, so a job being created on the file at this moment either
    commits before the in-use check below sees it, or finds the file deleted.
    """
    file = get_file(session, tenant_id, file_id, for_update=True)
    in_use = session.scalars(
        JobRepository(session, tenant_id)
        .scoped()
        .with_only_columns(FineTuningJob.id)
        .where(
            or_(
                FineTuningJob.training_file_id == file_id,
                FineTuningJob.validation_file_id == file_id,
                FineTuningJob.safety_file_id == file_id,
            ),
            FineTuningJob.status.in_(sorted(ACTIVE_STATUSES)),
        )
        .limit(1)
    ).first()
    if in_use is not None:
        raise ConflictError(
            f"file {file_id} is used by fine-tuning job {in_use}, which has not finished; "
            "cancel the job or wait for it to end",
            code="file_in_use",
            param="file_id",
        )
    file.deleted_at = utcnow()
    audit.record(session, actor, "file.delete", target_type="file", target_id=file_id)
    key = file.storage_key
    call_after_commit(session, lambda: storage.delete(key))
    return file


def content_for_download(
    session: Session, tenant_id: str, file_id: str, storage: LocalStorage, actor: Actor
) -> tuple[File, Path]:
    """The tenant's file and the path of its bytes, for ``actor`` to download; the download
    is audited (``file.download``) like an adapter's."""
    file = get_file(session, tenant_id, file_id)
    path = storage.path(file.storage_key)
    if not path.is_file():
        raise NotFoundError(
            f"the content of file {file_id} is no longer stored", code="file_not_found"
        )
    audit.record(
        session,
        actor,
        "file.download",
        target_type="file",
        target_id=file.id,
        tenant_id=tenant_id,
        details={"bytes": path.stat().st_size},
    )
    return file, path


# ---- background task bodies -------------------------------------------------------------


def scoring_claim_expired(file: File, now: dt.datetime, settings: Settings) -> bool:
    """Whether the worker scoring ``file`` stopped renewing its claim (a dead worker)."""
    claimed_at = file.dispatched_at
    return claimed_at is None or now - claimed_at > dt.timedelta(
        seconds=settings.scoring_lease_seconds
    )


class _ScoringClaimKeeper:
    """Renews a scoring claim from a thread while the file is scored.

    Each renewal is one UPDATE that requires the claim to still be ours; a worker that lost
    it keeps scoring but its result is not recorded (the final write checks the claim too).
    """

    def __init__(self, uow: UnitOfWork, file_id: str, claim: str, settings: Settings) -> None:
        self._uow, self._file_id, self._claim = uow, file_id, claim
        self._interval = settings.scoring_lease_seconds / 4
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scoring-claim", daemon=True)

    def __enter__(self) -> _ScoringClaimKeeper:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                with self._uow() as session:
                    session.execute(
                        update(File)
                        .where(
                            File.id == self._file_id,
                            File.scoring_claim == self._claim,
                            File.safety_status == SafetyStatus.RUNNING,
                        )
                        .values(dispatched_at=utcnow())
                        .execution_options(synchronize_session=False)
                    )
            except Exception:  # the database may be briefly away; the next beat tries again
                logger.warning("could not renew the scoring claim of %s", self._file_id)


def run_validation(uow: UnitOfWork, file_id: str, storage: LocalStorage, settings: Settings) -> str:
    """Task body: validate an uploaded file and record the report; returns the file status.

    Safe to run twice (a redelivered message finds the file processed and stops). The file is
    read outside any transaction, so a large file never holds database locks.
    """
    with uow() as session:
        file = load_file_for_task(session, file_id)
        if file is None or file.deleted_at is not None:
            return "missing"
        if file.status != FileStatus.UPLOADED:
            return file.status
        path = storage.path(file.storage_key)
        max_examples = _tenant_max_examples(session, file.tenant_id, settings)
    report = validate_content(path, settings, max_examples)
    with uow() as session:
        # Locked: of two deliveries validating at once, exactly one records the report.
        file = load_file_for_task(session, file_id, for_update=True)
        if file is None or file.status != FileStatus.UPLOADED:
            return "missing" if file is None else file.status
        _apply_report(file, report)
        audit.record(
            session,
            Actor("worker", "validate_file", file.tenant_id),
            "file.validate",
            target_type="file",
            target_id=file.id,
            details={"status": file.status, "n_examples": report.n_examples},
        )
        _after_processed(session, file)
        return file.status


def run_scoring(uow: UnitOfWork, file_id: str, storage: LocalStorage, settings: Settings) -> str:
    """Task body: score a processed fine-tune file with the amortized scheduler.

    The report comes from ``bds_core.scoring.score_examples(examples, scheduler_path=...)``.
    If that module is not installed the report ends ``failed`` with code
    ``scoring_unavailable`` rather than staying pending forever.
    """
    claim = secrets.token_hex(16)
    with uow() as session:
        file = load_file_for_task(session, file_id, for_update=True)
        if file is None or file.deleted_at is not None:
            return "missing"
        if file.safety_status not in (SafetyStatus.PENDING, SafetyStatus.RUNNING):
            return str(file.safety_status)
        now = utcnow()
        if file.safety_status == SafetyStatus.RUNNING and not scoring_claim_expired(
            file, now, settings
        ):
            return "claimed_elsewhere"  # another worker scores it and renews its claim
        file.safety_status = SafetyStatus.RUNNING
        file.scoring_claim, file.dispatched_at = claim, now
        path = storage.path(file.storage_key)
        max_examples = _tenant_max_examples(session, file.tenant_id, settings)

    report: dict[str, Any] | None = None
    error: str | None = None
    try:
        from bds_core.scoring import score_examples
    except ImportError as missing:
        logger.error("safety scoring is unavailable: %s", missing)
        error = (
            f"{SCORING_UNAVAILABLE}: this deployment has no amortized scheduler "
            f"(bds_core.scoring could not be imported: {missing})"
        )
    else:
        try:
            with _ScoringClaimKeeper(uow, file_id, claim, settings):
                examples = load_examples(path, dataset_limits(settings, max_examples))
                report = score_examples(examples, scheduler_path=settings.scorer_path).to_dict()
        except Exception as failure:
            logger.exception("scoring file %s failed", file_id)
            # The customer sees this: name the file by its id, never by the server's path.
            reason = str(failure).replace(str(path), f"file {file_id}")
            reason = reason.replace(str(storage.root), "<storage>")
            error = f"scoring_failed: {type(failure).__name__}: {reason}"

    with uow() as session:
        file = load_file_for_task(session, file_id, for_update=True)
        if (
            file is None
            or file.safety_status != SafetyStatus.RUNNING
            or file.scoring_claim != claim
        ):
            # Another delivery took the claim over (ours had expired) or finished first.
            return "missing" if file is None else "claim_lost"
        file.scoring_claim = None
        file.safety_status = SafetyStatus.SUCCEEDED if report is not None else SafetyStatus.FAILED
        file.safety_report = report
        file.safety_error = error
        audit.record(
            session,
            Actor("worker", "score_dataset", file.tenant_id),
            "file.safety_report",
            target_type="file",
            target_id=file.id,
            details={"status": file.safety_status},
        )
        return file.safety_status
