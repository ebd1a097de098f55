"""A finished job's artifacts: the PEFT adapter folder as a downloadable archive."""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Literal

from sqlalchemy.orm import Session

from bds_service import audit
from bds_service.audit import Actor
from bds_service.errors import ConflictError
from bds_service.jobs.service import get_job
from bds_service.jobs.states import JobStatus
from bds_service.storage import LocalStorage

ArchiveFormat = Literal["tar.gz", "zip"]
ARCHIVE_FILE_MODE = 0o644
"""Every file in an adapter archive has this mode, whatever it had on the worker's disk
(the trainer writes the weights through a private temporary file, 0600)."""


def adapter_dir(session: Session, tenant_id: str, job_id: str, storage: LocalStorage) -> Path:
    """The adapter folder of the tenant's succeeded job; 409 before the job has succeeded."""
    job = get_job(session, tenant_id, job_id)
    if job.status != JobStatus.SUCCEEDED or job.adapter_key is None:
        raise ConflictError(
            f"job {job_id} is {job.status}; its adapter can be downloaded once it has succeeded",
            code="adapter_not_available",
            param="fine_tuning_job_id",
        )
    path = storage.path(job.adapter_key)
    if not path.is_dir():
        raise ConflictError(
            f"the adapter of job {job_id} is no longer stored", code="adapter_not_available"
        )
    return path


def adapter_archive_for_download(
    session: Session,
    tenant_id: str,
    job_id: str,
    storage: LocalStorage,
    archive_format: ArchiveFormat,
    actor: Actor,
) -> tuple[Path, str]:
    """Pack the adapter of the tenant's succeeded job for ``actor`` and audit the download.

    Returns the temporary archive (the caller deletes it) and its download name.
    """
    source = adapter_dir(session, tenant_id, job_id, storage)
    root_name = f"{job_id}-adapter"
    archive = build_adapter_archive(source, root_name, archive_format)
    audit.record(
        session,
        actor,
        "fine_tuning_job.adapter.download",
        target_type="fine_tuning_job",
        target_id=job_id,
        tenant_id=tenant_id,
        details={"format": archive_format, "bytes": archive.stat().st_size},
    )
    return archive, f"{root_name}.{archive_format}"


def build_adapter_archive(source: Path, root_name: str, archive_format: ArchiveFormat) -> Path:
    """Pack the regular files of ``source`` under ``root_name/`` into a temporary archive.

    Symlinks and anything else that is not a regular file are left out, so an archive never
    points outside the adapter. Every member gets mode 0644 and no owner names, so unpacking
    gives the same readable files on any machine. The caller deletes the returned file.
    """
    members = sorted(path for path in source.rglob("*") if path.is_file() and not path.is_symlink())
    suffix = ".tar.gz" if archive_format == "tar.gz" else ".zip"
    descriptor, name = tempfile.mkstemp(prefix="bds-adapter-", suffix=suffix)
    os.close(descriptor)
    target = Path(name)
    if archive_format == "tar.gz":
        with tarfile.open(target, "w:gz") as archive:
            for path in members:
                archive.add(
                    path,
                    arcname=f"{root_name}/{path.relative_to(source).as_posix()}",
                    filter=_portable_tar_member,
                )
    else:
        with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for path in members:
                info = zipfile.ZipInfo.from_file(
                    path, arcname=f"{root_name}/{path.relative_to(source).as_posix()}"
                )
                info.external_attr = (0o100000 | ARCHIVE_FILE_MODE) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                with path.open("rb") as handle, archive.open(info, "w") as member:
                    shutil.copyfileobj(handle, member)
    return target


def _portable_tar_member(member: tarfile.TarInfo) -> tarfile.TarInfo:
    member.mode = ARCHIVE_FILE_MODE
    member.uid = member.gid = 0
    member.uname = member.gname = ""
    return member
