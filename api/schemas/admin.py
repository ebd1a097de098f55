"""Admin objects: tenants (organizations), API keys and audit rows."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from api.schemas.common import RequestModel
from bds_service.models import ApiKey, AuditLog, Tenant, unix_seconds

MAX_UNIX_SECONDS = 253_402_300_799
"""9999-12-31T23:59:59Z, the last second a timestamp can name."""


class TenantCreate(RequestModel):
    """``POST /v1/admin/tenants``."""

    name: Annotated[str, Field(min_length=1, max_length=64)]


PositiveCap = Annotated[int, Field(ge=1, le=2**62)]


class TenantLimitsUpdate(RequestModel):
    """``PUT /v1/admin/tenants/{tenant_id}/limits``: the tenant's caps; null means the
    deployment's default."""

    max_concurrent_jobs: Annotated[int, Field(ge=1, le=100_000)] | None = Field(
        default=None, description="unfinished fine-tuning jobs the tenant may have at once"
    )
    max_file_bytes: PositiveCap | None = Field(default=None, description="largest upload")
    max_examples: Annotated[int, Field(ge=1, le=2**31 - 1)] | None = Field(
        default=None, description="most examples in one file"
    )


class TenantObject(BaseModel):
    """A tenant; its id appears as ``organization_id`` on jobs. The caps are the tenant's own
    (null: the deployment's default)."""

    id: str
    object: Literal["organization"] = "organization"
    name: str
    created_at: int
    max_concurrent_jobs: int | None = None
    max_file_bytes: int | None = None
    max_examples: int | None = None

    @classmethod
    def from_row(cls, tenant: Tenant) -> TenantObject:
        """The API view of a tenant row."""
        return cls(
            id=tenant.id,
            name=tenant.name,
            created_at=unix_seconds(tenant.created_at) or 0,
            max_concurrent_jobs=tenant.max_concurrent_jobs,
            max_file_bytes=tenant.max_file_bytes,
            max_examples=tenant.max_examples,
        )


class ApiKeyCreate(RequestModel):
    """``POST /v1/admin/tenants/{tenant_id}/api_keys``."""

    name: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    admin: bool = False
    expires_at: Annotated[int, Field(gt=0, le=MAX_UNIX_SECONDS)] | None = Field(
        default=None, description="unix seconds after which the key stops working"
    )


class ApiKeyObject(BaseModel):
    """An API key; ``key`` holds the secret only in the answer that created it."""

    id: str
    object: Literal["api_key"] = "api_key"
    tenant_id: str
    name: str | None
    key_prefix: str
    admin: bool
    created_at: int
    expires_at: int | None
    revoked_at: int | None
    key: str | None = None

    @classmethod
    def from_row(cls, api_key: ApiKey, plaintext: str | None = None) -> ApiKeyObject:
        """The API view of a key row (the plaintext only when just issued)."""
        return cls(
            id=api_key.id,
            tenant_id=api_key.tenant_id,
            name=api_key.name,
            key_prefix=api_key.key_prefix,
            admin=api_key.is_admin,
            created_at=unix_seconds(api_key.created_at) or 0,
            expires_at=unix_seconds(api_key.expires_at),
            revoked_at=unix_seconds(api_key.revoked_at),
            key=plaintext,
        )


class AuditLogObject(BaseModel):
    """One audit row."""

    id: int
    object: Literal["audit_log.entry"] = "audit_log.entry"
    created_at: int
    actor_type: str
    actor_id: str | None
    tenant_id: str | None
    action: str
    target_type: str
    target_id: str | None
    request_id: str | None
    details: dict[str, Any] | None

    @classmethod
    def from_row(cls, row: AuditLog) -> AuditLogObject:
        """The API view of an audit row."""
        return cls(
            id=row.id,
            created_at=unix_seconds(row.created_at) or 0,
            actor_type=row.actor_type,
            actor_id=row.actor_id,
            tenant_id=row.tenant_id,
            action=row.action,
            target_type=row.target_type,
            target_id=row.target_id,
            request_id=row.request_id,
            details=row.details,
        )
