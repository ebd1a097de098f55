"""Queries over tenants and API keys."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from bds_service.models import ApiKey, Tenant
from bds_service.repository import TenantScopedRepository


class TenantRepository:
    """Tenants are the root of scoping, so this repository is the one unscoped reader."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, tenant_id: str) -> Tenant | None:
        """The tenant with this id, or None."""
        return self.session.get(Tenant, tenant_id)

    def lock(self, tenant_id: str) -> Tenant | None:
        """The tenant, locked until the transaction ends, to serialise checks of its caps.

        ``FOR NO KEY UPDATE`` (not ``FOR UPDATE``) so that inserting the tenant's other rows,
        whose foreign keys take a key-share lock on it, does not wait for the holder.
        """
        statement = (
            select(Tenant)
            .where(Tenant.id == tenant_id)
            .with_for_update(key_share=True)
            .execution_options(populate_existing=True)
        )
        return self.session.scalars(statement).one_or_none()

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
