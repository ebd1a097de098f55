"""File objects as the OpenAI SDK parses them, plus the validation and safety reports."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from bds_service.files.states import FilePurpose, FileStatus, SafetyStatus
from bds_service.models import File, unix_seconds


class FileObject(BaseModel):
    """``object: "file"``; status ``uploaded`` -> ``processed`` | ``error``."""

    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: FilePurpose
    status: FileStatus
    status_details: str | None = None
    expires_at: int | None = None
    sha256: str
    format: str | None = None
    n_examples: int | None = None
    validation_report: dict[str, Any] | None = None
    safety_status: SafetyStatus | None = None

    @classmethod
    def from_row(cls, file: File) -> FileObject:
        """The API view of a file row."""
        return cls(
            id=file.id,
            bytes=file.bytes,
            created_at=unix_seconds(file.created_at) or 0,
            filename=file.filename,
            purpose=file.purpose,
            status=file.status,
            status_details=file.status_details,
            sha256=file.sha256,
            format=file.data_format,
            n_examples=file.n_examples,
            validation_report=file.validation_report,
            safety_status=file.safety_status,
        )


class FileDeleted(BaseModel):
    """Answer to a delete."""

    id: str
    object: Literal["file"] = "file"
    deleted: bool


class FileSafetyReport(BaseModel):
    """The amortized scheduler's report on a dataset, available shortly after validation.

    ``status`` is ``pending``/``running`` until it is ready (poll), ``succeeded`` with the
    report, ``failed`` with ``error``, or ``not_applicable`` for files that are never scored
    (alignment data, files that failed validation).
    """

    object: Literal["file.safety_report"] = "file.safety_report"
    file_id: str
    status: Literal["pending", "running", "succeeded", "failed", "not_applicable"]
    report: dict[str, Any] | None = None
    error: str | None = None

    @classmethod
    def from_row(cls, file: File) -> FileSafetyReport:
        """The safety report view of a file row."""
        if file.safety_status is None:
            reason = (
                "alignment data is not scored"
                if file.purpose == FilePurpose.SAFETY_ALIGNMENT
                else "only files that passed validation are scored"
                if file.status == FileStatus.ERROR
                else "the file is waiting for validation"
            )
            if file.status == FileStatus.UPLOADED:
                return cls(file_id=file.id, status="pending")
            return cls(file_id=file.id, status="not_applicable", error=reason)
        return cls(
            file_id=file.id,
            status=file.safety_status,  # type: ignore[arg-type]
            report=file.safety_report,
            error=file.safety_error,
        )
