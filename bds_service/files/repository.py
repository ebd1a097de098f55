"""Queries over files; tenant reads start from the scoped statement."""

from __future__ import annotations

from typing import Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from bds_service.models import File
from bds_service.repository import Page, SortOrder, TenantScopedRepository


class FileRepository(TenantScopedRepository[File]):
    """One tenant's files (deleted files are invisible)."""

    model = File

    def live(self, file_id: str, *, lock: Literal["share", "update"] | None = None) -> File | None:
        """The tenant's file with this id unless deleted.

        ``lock="share"`` (a job being created on it) and ``lock="update"`` (its deletion) hold
        the row until the transaction ends; they conflict, so a create and a delete of the same
        file serialise: the later one sees the other's outcome (the job that uses the file, or
        the file deleted). Many creates share the file at once.
        """
        statement = self.scoped().where(File.id == file_id, File.deleted_at.is_(None))
        if lock is not None:
            statement = statement.with_for_update(read=lock == "share")
        return self.session.scalars(statement).one_or_none()

    def page(
        self, *, after: str | None, limit: int, order: SortOrder, purpose: str | None
    ) -> Page[File] | None:
        """A page of live files, optionally of one purpose; None if ``after`` is unknown."""
        statement = self.scoped().where(File.deleted_at.is_(None))
        if purpose is not None:
            statement = statement.where(File.purpose == purpose)
        return self.paginate_by_creation(statement, after=after, limit=limit, order=order)


def load_file_for_task(session: Session, file_id: str, *, for_update: bool = False) -> File | None:
    """A file by id for a background task, which acts for the system, not a tenant.

    ``for_update`` locks the row until the transaction ends (PostgreSQL; SQLite's write
    transactions are serialised anyway), so a check and the write that follows it cannot
    interleave with another worker's.
    """
    statement = select(File).where(File.id == file_id)
    if for_update:
        statement = statement.with_for_update()
    return session.scalars(statement).one_or_none()
