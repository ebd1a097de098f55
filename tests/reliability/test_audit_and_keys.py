"""Audit rows are written with their change or not at all, and never altered; keys are HMACs.

- A request that fails after its change and audit row were added to the session leaves
  neither: the request's session rolls both back together.
- No route can change the audit log, and bulk UPDATE/DELETE statements issued through the
  application's own engine are refused by the database on both backends (the ORM guard and
  the raw-SQL case are tested in tests/service/test_audit.py and test_migrations.py).
- A key issued over the API appears nowhere in the database, only its HMAC; revoked, expired
  and disabled-tenant keys are refused with 401: at once when the change is made in the API's
  own process, within ``api_key_cache_seconds`` when another process makes it.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import delete, select, text, update
from sqlalchemy.exc import DBAPIError

from api.deps import AdminPrincipal, DbSession, RequestId
from bds_service import audit
from bds_service.db import SessionFactory
from bds_service.errors import ConflictError
from bds_service.models import ApiKey, AuditLog, Base, Tenant, utcnow
from bds_service.settings import Settings
from bds_service.tenants import keys
from bds_service.tenants import service as tenants
from bds_service.tenants.key_cache import forget_cached_keys

TenantKey = Any  # fixture types from tests/api/conftest.py
RecordingPublisher = Any


def test_a_request_that_fails_after_its_change_writes_neither_change_nor_audit_row(
    app: FastAPI,
    client: TestClient,
    make_tenant: Callable[..., TenantKey],
    read: Callable[..., list[Any]],
    publisher: RecordingPublisher,
) -> None:
    def create_then_fail(session: DbSession, admin: AdminPrincipal, request_id: RequestId) -> None:
        # The real service writes the tenant and its audit row, then the request fails.
        tenants.create_tenant(session, "ghost", admin.actor(request_id))
        session.flush()
        raise ConflictError("something went wrong after the change", code="conflict")

    app.add_api_route("/test/create-then-fail", create_then_fail, methods=["POST"])
    admin = make_tenant("provider", admin=True)
    audit_before = read(select(AuditLog.id))

    response = client.post("/test/create-then-fail", headers=admin.headers)
    assert response.status_code == 409
    assert read(select(Tenant).where(Tenant.name == "ghost")) == []
    # The change's audit row went with the change; what remains is the refusal itself,
    # written afterwards in its own transaction for the operator (a 409 is audited).
    new_rows = read(select(AuditLog).where(AuditLog.id.not_in(audit_before)))
    assert [row.action for row in new_rows] == ["request.refused"]
    assert (new_rows[0].details or {})["status"] == 409
    assert publisher.messages == []


def test_no_route_can_change_the_audit_log(app: FastAPI) -> None:
    paths = app.openapi()["paths"]
    audit_operations = {
        (method, path)
        for path, operations in paths.items()
        if "audit" in path
        for method in operations
    }
    assert audit_operations == {("get", "/v1/admin/tenants/{tenant_id}/audit_log")}


@pytest.mark.parametrize(
    "statement",
    [update(AuditLog).values(action="tampered"), delete(AuditLog)],
    ids=["bulk update", "bulk delete"],
)
def test_bulk_statements_cannot_change_audit_rows(
    session_factory: SessionFactory, statement: Any
) -> None:
    with session_factory() as session:
        audit.record(
            session,
            audit.Actor("cli", "tests"),
            "tenant.create",
            target_type="tenant",
            target_id="org-x",
        )
        session.commit()
    with session_factory() as session, pytest.raises(DBAPIError, match="append-only"):
        session.execute(statement)
        session.commit()
    with session_factory() as session:
        assert session.scalars(select(AuditLog.action)).all() == ["tenant.create"]


def test_an_issued_key_is_stored_only_as_its_hmac(
    client: TestClient,
    make_tenant: Callable[..., TenantKey],
    session_factory: SessionFactory,
    service_settings: Settings,
) -> None:
    admin = make_tenant("provider", admin=True)
    tenant_id = client.post("/v1/admin/tenants", headers=admin.headers, json={"name": "initech"})
    issued = client.post(
        f"/v1/admin/tenants/{tenant_id.json()['id']}/api_keys",
        headers=admin.headers,
        json={"name": "ci"},
    ).json()
    plaintext = issued["key"]
    assert keys.is_well_formed(plaintext)
    # Every value of every row of every table, as text.
    with session_factory() as session:
        dump = "\n".join(
            repr(tuple(row))
            for table in Base.metadata.sorted_tables
            for row in session.execute(text(f"SELECT * FROM {table.name}"))
        )
        stored = session.scalars(select(ApiKey).where(ApiKey.id == issued["id"])).one()
    assert plaintext not in dump
    secret = service_settings.api_key_secret.get_secret_value()
    assert stored.key_hash == keys.hash_api_key(plaintext, secret)
    assert secret not in dump


def test_revoked_expired_and_disabled_tenant_keys_are_refused(
    client: TestClient,
    make_tenant: Callable[..., TenantKey],
    session_factory: SessionFactory,
    service_settings: Settings,
) -> None:
    secret = service_settings.api_key_secret.get_secret_value()
    revoked, expired, disabled = (make_tenant(name) for name in ("acme", "acme", "globex"))
    for key in (revoked, expired, disabled):
        assert client.get("/v1/files", headers=key.headers).status_code == 200
    revoked_hash = keys.hash_api_key(revoked.key, secret)
    expired_hash = keys.hash_api_key(expired.key, secret)
    with session_factory() as session:
        session.execute(
            update(ApiKey).where(ApiKey.key_hash == revoked_hash).values(revoked_at=utcnow())
        )
        session.execute(
            update(ApiKey)
            .where(ApiKey.key_hash == expired_hash)
            .values(expires_at=utcnow() - dt.timedelta(seconds=1))
        )
        session.execute(
            update(Tenant).where(Tenant.id == disabled.tenant_id).values(disabled_at=utcnow())
        )
        session.commit()
    # A change made outside the API's process reaches it when the cached lookups expire
    # (api_key_cache_seconds; shown by the next test); here they are dropped at once.
    forget_cached_keys()
    for key in (revoked, expired, disabled):
        response = client.get("/v1/files", headers=key.headers)
        assert response.status_code == 401
        error = response.json()["error"]
        assert (error["code"], error["type"]) == ("invalid_api_key", "authentication_error")
        assert "revoked or expired" in error["message"]
        assert response.headers["WWW-Authenticate"] == "Bearer"


def test_a_key_revoked_by_another_process_is_refused_once_its_cached_lookup_expires(
    make_tenant: Callable[..., TenantKey],
    session_factory: SessionFactory,
    service_settings: Settings,
    publisher: RecordingPublisher,
) -> None:
    from api.app import create_app

    settings = service_settings.model_copy(update={"api_key_cache_seconds": 1.0})
    customer = make_tenant("acme")
    with TestClient(create_app(settings, publisher)) as client:
        assert client.get("/v1/files", headers=customer.headers).status_code == 200
        with session_factory() as session:  # as the CLI or another API process would
            key_hash = keys.hash_api_key(customer.key, settings.api_key_secret.get_secret_value())
            session.execute(
                update(ApiKey).where(ApiKey.key_hash == key_hash).values(revoked_at=utcnow())
            )
            session.commit()
        # Within the cache's lifetime the revocation may not be seen yet; after it, it is.
        deadline = time.monotonic() + 1.0 + 5.0
        status = 200
        while status == 200 and time.monotonic() < deadline:
            status = client.get("/v1/files", headers=customer.headers).status_code
            time.sleep(0.1)
        assert status == 401
        assert time.monotonic() < deadline
