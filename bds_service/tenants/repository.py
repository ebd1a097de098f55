"""Queries over tenants and API keys."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from functools import cache
from typing import TypeVar

from sqlalchemy import Select, bindparam, or_, select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from bds_service.models import ApiKey, Tenant
from bds_service.repository import TenantScopedRepository
from bds_service.tenants.limits import TenantLimitOverrides

T = TypeVar("T")

LOCK_NOT_AVAILABLE = "55P03"  # PostgreSQL's SQLSTATE for a lock_timeout


class TenantLockTimeoutError(RuntimeError):
    """Another transaction held the tenant's lock for longer than the caller would wait."""


class TenantRepository:
    """Tenants are the root of scoping, so this repository is the one unscoped reader."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, tenant_id: str) -> Tenant | None:
        """The tenant with this id, or None."""
        return self.session.get(Tenant, tenant_id)

    def lock(self, tenant_id: str, *, wait_seconds: float | None = None) -> Tenant | None:
        """The tenant, locked until the transaction ends, to serialise checks of its caps.

        ``FOR NO KEY UPDATE`` (not ``FOR UPDATE``) so that inserting the tenant's other rows,
        whose foreign keys take a key-share lock on it, does not wait for the holder. With
        ``wait_seconds`` (PostgreSQL), TenantLockTimeoutError if another transaction holds
        the lock longer than that: a waiter holds a database connection, and a queue of them
        would starve every other request of connections. The lock is first tried without
        waiting (``SKIP LOCKED``), one statement when it is free; only when another
        transaction holds it is ``lock_timeout`` set for the wait and reset after it.
        """
        statement = (
            select(Tenant)
            .where(Tenant.id == tenant_id)
            .with_for_update(key_share=True)
            .execution_options(populate_existing=True)
        )

        def locking(skip_locked: bool) -> Tenant | None:
            locked = statement.with_for_update(key_share=True, skip_locked=skip_locked)
            return self.session.scalars(locked).one_or_none()

        return self._locked(tenant_id, locking, wait_seconds)

    def lock_limits(
        self, tenant_id: str, *, wait_seconds: float | None = None
    ) -> TenantLimitOverrides | None:
        """:meth:`lock`, reading only the tenant's caps (None: no such tenant), with a Core
        statement built once: for the busiest caller, the job create."""

        def locking(skip_locked: bool) -> TenantLimitOverrides | None:
            row = (
                self.session.connection()
                .execute(_lock_limits_statement(skip_locked), {"tenant_id": tenant_id})
                .one_or_none()
            )
            return None if row is None else TenantLimitOverrides(**row._mapping)

        return self._locked(tenant_id, locking, wait_seconds)

    def _locked(
        self, tenant_id: str, locking: Callable[[bool], T | None], wait_seconds: float | None
    ) -> T | None:
        """``locking(skip_locked)``'s row with :meth:`lock`'s bounded wait."""
        bounded = wait_seconds is not None and self.session.get_bind().dialect.name == "postgresql"
        if bounded:
            free = locking(True)
            if free is not None:
                return free
            milliseconds = max(1, round(1000 * (wait_seconds or 0)))
            self.session.execute(text(f"SET LOCAL lock_timeout = '{milliseconds}ms'"))
        try:
            locked = locking(False)
        except OperationalError as error:
            if getattr(error.orig, "sqlstate", None) == LOCK_NOT_AVAILABLE:
                raise TenantLockTimeoutError(
                    f"tenant {tenant_id} stayed locked for more than {wait_seconds} s"
                ) from error
            raise
        if bounded:
            self.session.execute(text("SET LOCAL lock_timeout = DEFAULT"))
        return locked

    def get_by_name(self, name: str) -> Tenant | None:
        """The tenant with this name, or None."""
        return self.session.scalars(select(Tenant).where(Tenant.name == name)).one_or_none()

    def list_all(self) -> list[Tenant]:
        """All tenants, oldest first."""
        return list(self.session.scalars(select(Tenant).order_by(Tenant.created_at, Tenant.id)))


class ApiKeyRepository(TenantScopedRepository[ApiKey]):
    """One tenant's API keys."""

    model = ApiKey

    def list_keys(self) -> list[ApiKey]:
        """The tenant's keys, oldest first."""
        return list(self.session.scalars(self.scoped().order_by(ApiKey.created_at, ApiKey.id)))


@cache
def _lock_limits_statement(skip_locked: bool) -> Select[int | None, int | None, int | None]:
    # Built once (every job create locks its tenant): the id is bound at execution.
    return (
        select(Tenant.max_concurrent_jobs, Tenant.max_file_bytes, Tenant.max_examples)
        .where(Tenant.id == bindparam("tenant_id"))
        .with_for_update(key_share=True, skip_locked=skip_locked)
    )


def find_active_key(
    session: Session, key_hash: str, now: dt.datetime
) -> tuple[ApiKey, Tenant] | None:
    """The live key with this hash and its enabled tenant (authentication's only lookup)."""
    statement = (
        select(ApiKey, Tenant)
        .join(Tenant, Tenant.id == ApiKey.tenant_id)
        .where(
            ApiKey.key_hash == key_hash,
            ApiKey.revoked_at.is_(None),
            or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > now),
            Tenant.disabled_at.is_(None),
        )
    )
    row = session.execute(statement).one_or_none()
    return None if row is None else (row[0], row[1])
