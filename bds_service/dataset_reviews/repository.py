"""Queries over dataset reviews; tenant reads start from the scoped statement."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from sqlalchemy import Select, bindparam, case, select
from sqlalchemy.orm import Session

from bds_service.files.states import FilePurpose, FileStatus, SafetyStatus
from bds_service.models import DatasetReview, File
from bds_service.repository import TenantScopedRepository


class DatasetReviewRepository(TenantScopedRepository[DatasetReview]):
    """Reviews of one tenant's files (keyed by file id)."""

    model = DatasetReview

    def for_file(self, file_id: str) -> DatasetReview | None:
        """The review of the tenant's file, or None if it was never reviewed."""
        return self.session.scalars(
            self.scoped().where(DatasetReview.file_id == file_id)
        ).one_or_none()

    def for_files(self, file_ids: Iterable[str]) -> dict[str, DatasetReview]:
        """Reviews of several of the tenant's files, by file id (unreviewed files are absent)."""
        ids = sorted(set(file_ids))
        if not ids:
            return {}
        rows = self.session.scalars(self.scoped().where(DatasetReview.file_id.in_(ids)))
        return {row.file_id: row for row in rows}


def reviews_by_file(session: Session, file_ids: Iterable[str]) -> dict[str, DatasetReview]:
    """Reviews of files of any tenant, by file id: for the provider's dashboard and workers."""
    ids = sorted(set(file_ids))
    if not ids:
        return {}
    rows = session.scalars(select(DatasetReview).where(DatasetReview.file_id.in_(ids)))
    return {row.file_id: row for row in rows}


@dataclass(frozen=True)
class ReviewedFile:
    """What a job create checks of one of its files: the file's state and the provider's
    review of it (decision and policy; None when the file was never reviewed)."""

    id: str
    tenant_id: str
    purpose: FilePurpose
    status: FileStatus
    status_details: str | None
    safety_status: SafetyStatus | None
    safety_report: dict[str, Any] | None
    """Read only when the review's policy is one of ``reports_for`` (else None): a report
    holds a row per example, too much to read on every create."""
    decision: str | None
    policy: str | None


def reviewed_files(
    session: Session, tenant_id: str, file_ids: Sequence[str], *, reports_for: tuple[str, ...]
) -> dict[str, ReviewedFile]:
    """The tenant's live files among ``file_ids``, by id, each with the provider's review,
    share-locked until the transaction ends (as ``FileRepository.live(lock="share")``: a
    delete of one of them waits for this transaction, and refuses once it sees the job).

    One statement, built once per number of ids, for the busiest write (a job create).
    """
    ids = sorted(set(file_ids))
    params: dict[str, Any] = {f"file_{index}": file_id for index, file_id in enumerate(ids)}
    params["tenant_id"] = tenant_id
    rows = session.connection().execute(_reviewed_files_statement(len(ids), reports_for), params)
    return {row.id: ReviewedFile(**row._mapping) for row in rows}


@cache
def _reviewed_files_statement(count: int, reports_for: tuple[str, ...]) -> Select[Any]:
    # The tenant's filter first, as in TenantScopedRepository.scoped; only the files' rows
    # are locked (a review row may not exist).
    report = case((DatasetReview.policy.in_(reports_for), File.safety_report), else_=None)
    return (
        select(
            File.id,
            File.tenant_id,
            File.purpose,
            File.status,
            File.status_details,
            File.safety_status,
            report.label("safety_report"),
            DatasetReview.decision,
            DatasetReview.policy,
        )
        .outerjoin(DatasetReview, DatasetReview.file_id == File.id)
        .where(
            File.tenant_id == bindparam("tenant_id"),
            File.id.in_([bindparam(f"file_{index}") for index in range(count)]),
            File.deleted_at.is_(None),
        )
        .with_for_update(read=True, of=File)
    )
