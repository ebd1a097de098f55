"""A file's purposes and statuses, defined once.

    status:         uploaded -> processed | error              (OpenAI's file statuses)
    safety_status:  pending -> running -> succeeded | failed   (fine-tune files that passed)

The values are the strings stored in the ``files`` table and shown by the API; as StrEnums
they compare, hash and serialise exactly as those strings. This module imports nothing of the
service, so the files, jobs and dataset review domains can all depend on it.
"""

from __future__ import annotations

from enum import StrEnum


class FilePurpose(StrEnum):
    """What an upload is for (the ``purpose`` form field)."""

    FINE_TUNE = "fine-tune"
    SAFETY_ALIGNMENT = "safety-alignment"


class FileStatus(StrEnum):
    """Validation status, exactly as the API shows it."""

    UPLOADED = "uploaded"
    PROCESSED = "processed"
    ERROR = "error"


class SafetyStatus(StrEnum):
    """Status of the amortized scheduler's safety report on a processed fine-tune file."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


UPLOAD_PURPOSES: tuple[FilePurpose, ...] = tuple(FilePurpose)
"""Every purpose an upload may name, in the order error messages list them."""
