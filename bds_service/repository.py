"""Tenant-scoped repository base and cursor pagination shared by the domains.

Every query that reads a customer's rows starts from :meth:`TenantScopedRepository.scoped`, the
one statement that filters by tenant. A foreign tenant's id therefore finds nothing and the API
answers 404, exactly as for an id that never existed.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Literal, Protocol, TypeVar

from sqlalchemy import Select, and_, or_, select
from sqlalchemy.orm import InstrumentedAttribute, Session


class TenantOwned(Protocol):
    """A model with a ``tenant_id`` column, a string ``id`` and a ``created_at``."""

    id: Any
    tenant_id: Any
    created_at: Any


ModelT = TypeVar("ModelT", bound=Any)

SortOrder = Literal["asc", "desc"]


@dataclass(frozen=True)
class Page(Generic[ModelT]):
    """One page of a cursor-paginated list."""

    items: list[ModelT]
    has_more: bool


class TenantScopedRepository(Generic[ModelT]):
    """Queries over one tenant-owned model, always filtered by the tenant."""

    model: ClassVar[type[Any]]

    def __init__(self, session: Session, tenant_id: str) -> None:
        self.session = session
        self.tenant_id = tenant_id

    def scoped(self) -> Select[ModelT]:
        """The tenant's rows of this model: the start of every read."""
        return select(self.model).where(self.model.tenant_id == self.tenant_id)

    def get(self, object_id: str, *, for_update: bool = False) -> ModelT | None:
        """The tenant's object with this id, or None (also for another tenant's id)."""
        statement = self.scoped().where(self.model.id == object_id)
        if for_update:
            statement = statement.with_for_update()
        return self.session.scalars(statement).one_or_none()

    def paginate_by_creation(
        self,
        statement: Select[ModelT],
        *,
        after: str | None,
        limit: int,
        order: SortOrder = "desc",
    ) -> Page[ModelT] | None:
        """A page of ``statement`` ordered by (created_at, id); None if ``after`` is unknown."""
        created_at: InstrumentedAttribute[dt.datetime] = self.model.created_at
        object_id: InstrumentedAttribute[str] = self.model.id
        if after is not None:
            cursor = self.session.execute(
                self.scoped().with_only_columns(created_at, object_id).where(object_id == after)
            ).one_or_none()
            if cursor is None:
                return None
            cursor_created, cursor_id = cursor
            if order == "desc":
                statement = statement.where(
                    or_(
                        created_at < cursor_created,
                        and_(created_at == cursor_created, object_id < cursor_id),
                    )
                )
            else:
                statement = statement.where(
                    or_(
                        created_at > cursor_created,
                        and_(created_at == cursor_created, object_id > cursor_id),
                    )
                )
        if order == "desc":
            statement = statement.order_by(created_at.desc(), object_id.desc())
        else:
            statement = statement.order_by(created_at.asc(), object_id.asc())
        rows = list(self.session.scalars(statement.limit(limit + 1)))
        return Page(items=rows[:limit], has_more=len(rows) > limit)
