"""``/v1/admin``: the provider's tenants, their API keys and audit log (admin keys only).

Every change is audited, and so is every admin read of a customer's data (the audit log).
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import AdminPrincipal, AppSettings, DbSession, RequestId
from api.schemas.admin import (
    ApiKeyCreate,
    ApiKeyObject,
    AuditLogObject,
    TenantCreate,
    TenantLimitsUpdate,
    TenantObject,
)
from api.schemas.common import ERROR_RESPONSES, ListResponse
from bds_service import audit
from bds_service.tenants import service as tenants
from bds_service.tenants.limits import TenantLimitOverrides

router = APIRouter(
    prefix="/v1/admin",
    tags=["admin"],
    responses={**ERROR_RESPONSES, 403: {"description": "not an admin key"}},
)


@router.post("/tenants", response_model=TenantObject)
def create_tenant(
    body: TenantCreate, session: DbSession, admin: AdminPrincipal, request_id: RequestId
) -> TenantObject:
    """Create a tenant (organization)."""
    return TenantObject.from_row(tenants.create_tenant(session, body.name, admin.actor(request_id)))


@router.get("/tenants", response_model=ListResponse[TenantObject])
def list_tenants(session: DbSession, admin: AdminPrincipal) -> ListResponse[TenantObject]:
    """All tenants, oldest first."""
    data = [TenantObject.from_row(tenant) for tenant in tenants.list_tenants(session)]
    return ListResponse(data=data, has_more=False)


@router.put("/tenants/{tenant_id}/limits", response_model=TenantObject)
def set_tenant_limits(
    tenant_id: str,
    body: TenantLimitsUpdate,
    session: DbSession,
    admin: AdminPrincipal,
    request_id: RequestId,
) -> TenantObject:
    """Set a tenant's caps on unfinished jobs, upload size and examples per file (null: the
    deployment's default)."""
    overrides = TenantLimitOverrides(**body.model_dump())
    return TenantObject.from_row(
        tenants.set_tenant_limits(session, tenant_id, overrides, admin.actor(request_id))
    )


@router.post("/tenants/{tenant_id}/api_keys", response_model=ApiKeyObject)
def create_api_key(
    tenant_id: str,
    body: ApiKeyCreate,
    session: DbSession,
    admin: AdminPrincipal,
    settings: AppSettings,
    request_id: RequestId,
) -> ApiKeyObject:
    """Issue a key for a tenant. The answer holds the key itself; it is never shown again."""
    tenant = tenants.get_tenant(session, tenant_id)
    issued = tenants.create_api_key(
        session,
        tenant,
        secret=settings.api_key_secret.get_secret_value(),
        actor=admin.actor(request_id),
        is_admin=body.admin,
        name=body.name,
        expires_at=(
            dt.datetime.fromtimestamp(body.expires_at, dt.UTC) if body.expires_at else None
        ),
    )
    return ApiKeyObject.from_row(issued.api_key, issued.plaintext)


@router.get("/tenants/{tenant_id}/api_keys", response_model=ListResponse[ApiKeyObject])
def list_api_keys(
    tenant_id: str, session: DbSession, admin: AdminPrincipal
) -> ListResponse[ApiKeyObject]:
    """A tenant's keys (prefixes only)."""
    tenants.get_tenant(session, tenant_id)
    data = [ApiKeyObject.from_row(key) for key in tenants.list_api_keys(session, tenant_id)]
    return ListResponse(data=data, has_more=False)


@router.post("/tenants/{tenant_id}/api_keys/{key_id}/revoke", response_model=ApiKeyObject)
def revoke_api_key(
    tenant_id: str, key_id: str, session: DbSession, admin: AdminPrincipal, request_id: RequestId
) -> ApiKeyObject:
    """Revoke a key; it stops working at once."""
    return ApiKeyObject.from_row(
        tenants.revoke_api_key(session, tenant_id, key_id, admin.actor(request_id))
    )


@router.get("/tenants/{tenant_id}/audit_log", response_model=ListResponse[AuditLogObject])
def tenant_audit_log(
    tenant_id: str,
    session: DbSession,
    admin: AdminPrincipal,
    request_id: RequestId,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> ListResponse[AuditLogObject]:
    """The newest audit rows about a tenant; this read is itself audited."""
    tenants.get_tenant(session, tenant_id)
    rows = audit.list_for_tenant(session, tenant_id, limit=limit)
    audit.record(
        session,
        admin.actor(request_id),
        "admin.audit_log.read",
        target_type="tenant",
        target_id=tenant_id,
        tenant_id=tenant_id,
    )
    return ListResponse(data=[AuditLogObject.from_row(row) for row in rows], has_more=False)
