"""Queries over dataset reviews; tenant reads start from the scoped statement."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from bds_service.models import DatasetReview
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
