"""Admin routes (admin keys only, audited) and the health probes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select

from api.app import create_app
from bds_service.models import AuditLog
from bds_service.settings import Settings

TenantKey = Any  # fixture type from tests/api/conftest.py


def test_admin_key_manages_tenants_and_keys(
    client: TestClient,
    make_tenant: Callable[..., TenantKey],
    read: Callable[..., list[Any]],
) -> None:
    admin = make_tenant("provider", admin=True)
    created = client.post("/v1/admin/tenants", headers=admin.headers, json={"name": "initech"})
    assert created.status_code == 200, created.text
    tenant = created.json()
    assert tenant["id"].startswith("org-") and tenant["object"] == "organization"

    issued = client.post(
        f"/v1/admin/tenants/{tenant['id']}/api_keys", headers=admin.headers, json={"name": "ci"}
    ).json()
    assert issued["key"].startswith("bds-") and issued["admin"] is False
    customer = {"Authorization": f"Bearer {issued['key']}"}
    assert client.get("/v1/files", headers=customer).status_code == 200

    listing = client.get(f"/v1/admin/tenants/{tenant['id']}/api_keys", headers=admin.headers)
    (listed,) = listing.json()["data"]
    assert listed["key"] is None and issued["key"].startswith(listed["key_prefix"])

    revoked = client.post(
        f"/v1/admin/tenants/{tenant['id']}/api_keys/{issued['id']}/revoke", headers=admin.headers
    )
    assert revoked.json()["revoked_at"] is not None
    assert client.get("/v1/files", headers=customer).status_code == 401

    log = client.get(f"/v1/admin/tenants/{tenant['id']}/audit_log", headers=admin.headers).json()
    assert [row["action"] for row in log["data"]] == [
        "api_key.revoke",
        "api_key.create",
        "tenant.create",
    ]
    # Reading a customer's audit log is itself audited.
    assert read(select(AuditLog.action).order_by(AuditLog.id.desc()).limit(1)) == [
        "admin.audit_log.read"
    ]
    duplicate = client.post("/v1/admin/tenants", headers=admin.headers, json={"name": "initech"})
    assert duplicate.status_code == 409


def test_admin_routes_refuse_customer_keys(
    client: TestClient, tenant: TenantKey, read: Callable[..., list[Any]]
) -> None:
    before = read(select(AuditLog.id))
    for method, path in (
        ("POST", "/v1/admin/tenants"),
        ("GET", "/v1/admin/tenants"),
        ("GET", f"/v1/admin/tenants/{tenant.tenant_id}/audit_log"),
    ):
        response = client.request(method, path, headers=tenant.headers, json={"name": "evil"})
        assert response.status_code == 403, path
        assert response.json()["error"]["code"] == "admin_key_required"
    # Refused reads write nothing; the refused attempt to create a tenant is audited, under
    # the customer's own tenant and key, for the provider to see.
    (refusal,) = read(select(AuditLog).where(AuditLog.id.not_in(before)))
    assert (refusal.action, refusal.tenant_id) == ("request.refused", tenant.tenant_id)
    assert refusal.actor_type == "api_key"
    assert refusal.details == {
        "method": "POST",
        "path": "/v1/admin/tenants",
        "status": 403,
        "code": "admin_key_required",
        "param": None,
        "message": "this route needs an admin API key",
    }


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"]["database"]["ok"] is True


def test_readiness_fails_without_schema_or_broker(tmp_path: Path) -> None:
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'empty.sqlite3'}",
        broker_url="redis://127.0.0.1:1/0",
        storage_dir=tmp_path,
    )
    with TestClient(create_app(settings, publisher=None)) as client:
        response = client.get("/readyz")
    assert response.status_code == 503
    checks = response.json()["checks"]
    assert checks["database"]["ok"] is False and "schema" in checks["database"]["detail"]
    assert checks["broker"]["ok"] is False
