"""Artifact storage: uploaded datasets, job outputs and adapters on a local (or shared) folder.

Objects are addressed by keys built here from ids (``tenants/<tenant>/files/<file>.jsonl``),
never from client-supplied names, and every key is checked to stay inside the root. Uploads are
written to a temporary name while hashed and counted against a size cap, and renamed into place
only when complete, so a reader never sees half a file. Several hosts share artifacts by mounting
the same folder (the compose file mounts one volume into the API and the workers).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from bds_service.errors import PayloadTooLargeError


@dataclass(frozen=True)
class StoredObject:
    """Size and sha256 of a completely written object."""

    key: str
    bytes: int
    sha256: str


def file_key(tenant_id: str, file_id: str) -> str:
    """Storage key of an uploaded file's content."""
    return f"tenants/{tenant_id}/files/{file_id}.jsonl"


def job_key(tenant_id: str, job_id: str) -> str:
    """Storage key (a folder) of a job's artifacts: checkpoints, adapter, weights, metrics."""
    return f"tenants/{tenant_id}/jobs/{job_id}"


class UploadSink:
    """Receives an upload chunk by chunk; hashes, counts and enforces the size cap."""

    def __init__(self, final_path: Path, key: str, max_bytes: int) -> None:
        self.key = key
        self.max_bytes = max_bytes
        self._final_path = final_path
        self._temporary_path = final_path.with_name(f".{final_path.name}.{uuid.uuid4().hex}.part")
        final_path.parent.mkdir(parents=True, exist_ok=True)
        self._handle: BinaryIO | None = self._temporary_path.open("wb")
        self._digest = hashlib.sha256()
        self.bytes_written = 0

    def write(self, chunk: bytes) -> None:
        """Append ``chunk``; PayloadTooLargeError (and the partial file removed) past the cap."""
        if self._handle is None:
            raise RuntimeError("upload sink is closed")
        self.bytes_written += len(chunk)
        if self.bytes_written > self.max_bytes:
            self.abort()
            raise PayloadTooLargeError(
                f"the file is larger than the {self.max_bytes}-byte upload limit",
                code="file_too_large",
                param="file",
            )
        self._digest.update(chunk)
        self._handle.write(chunk)

    def commit(self) -> StoredObject:
        """Flush to disk and rename into place; the object is complete from here on."""
        if self._handle is None:
            raise RuntimeError("upload sink is closed")
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        self._handle = None
        os.replace(self._temporary_path, self._final_path)
        return StoredObject(self.key, self.bytes_written, self._digest.hexdigest())

    def abort(self) -> None:
        """Discard whatever was written; safe to call more than once."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        self._temporary_path.unlink(missing_ok=True)


class LocalStorage:
    """Objects as files under one root folder."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def path(self, key: str) -> Path:
        """The filesystem path of ``key``; ValueError if the key would leave the root."""
        candidate = (self.root / key).resolve()
        if candidate != self.root and self.root not in candidate.parents:
            raise ValueError(f"storage key {key!r} points outside the storage root")
        return candidate

    def open_upload(self, key: str, max_bytes: int) -> UploadSink:
        """A sink that writes ``key`` atomically with a size cap."""
        return UploadSink(self.path(key), key, max_bytes)

    def exists(self, key: str) -> bool:
        """Whether an object or folder exists at ``key``."""
        return self.path(key).exists()

    def remove_stale_partials(self, older_than_seconds: float, now: float | None = None) -> int:
        """Remove the ``.part`` files (uploads and copies being written) that nobody touched
        for ``older_than_seconds``: left behind by a process killed mid-write. Returns how
        many were removed."""
        if not self.root.is_dir():
            return 0
        limit = (time.time() if now is None else now) - older_than_seconds
        removed = 0
        for path in self.root.rglob("*.part"):
            try:
                if path.is_file() and path.stat().st_mtime < limit:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                continue  # finished or aborted meanwhile
        return removed

    def delete(self, key: str) -> None:
        """Remove an object or a whole folder; missing keys are ignored."""
        path = self.path(key)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
