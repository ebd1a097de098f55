"""NUL characters (U+0000) anywhere in a request get a 400 naming where, never a 5xx.

PostgreSQL text cannot hold U+0000, so a NUL that reached a query used to fail deep inside it
(found by the OpenAPI fuzzer). Each way in is refused at the edge and stores nothing; a NUL
inside a dataset's text is content, not a request field, and must not break the pipeline.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from bds_service.models import AuditLog, File, FineTuningJob, Tenant

TenantKey = Any  # fixture types from tests/api/conftest.py


@pytest.fixture
def db_url(pg_url: str) -> str:
    """PostgreSQL: the database that cannot store NUL."""
    return pg_url


def _counts(read: Callable[..., list[Any]]) -> tuple[int, ...]:
    return tuple(
        read(select(func.count()).select_from(model))[0]
        for model in (File, FineTuningJob, Tenant, AuditLog)
    )


def _assert_refused(response: Any, param: str) -> None:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_value"
    assert error["param"] == param
    assert "NUL" in error["message"]
    assert response.headers["X-Request-ID"]


def test_nul_in_a_path_parameter(client: TestClient, tenant: TenantKey) -> None:
    _assert_refused(client.get("/v1/files/file-%00", headers=tenant.headers), "path")
    _assert_refused(client.post("/v1/fine_tuning/jobs/%00/cancel", headers=tenant.headers), "path")


def test_nul_in_a_query_parameter(client: TestClient, tenant: TenantKey) -> None:
    _assert_refused(client.get("/v1/files?after=file-%00x", headers=tenant.headers), "after")
    _assert_refused(
        client.get("/v1/fine_tuning/jobs?limit=2&after=%00", headers=tenant.headers), "after"
    )


def test_nul_in_a_json_body_names_the_field_and_stores_nothing(
    client: TestClient,
    tenant: TenantKey,
    make_tenant: Callable[..., TenantKey],
    upload: Callable[..., Any],
    read: Callable[..., list[Any]],
) -> None:
    training = upload(tenant).json()["id"]
    admin = make_tenant("provider", admin=True)
    before = _counts(read)
    cases = [
        (
            "/v1/fine_tuning/jobs",
            tenant,
            {"model": "tiny-random-llama", "training_file": training, "metadata": {"a": "b\x00"}},
            "metadata",
        ),
        (
            "/v1/fine_tuning/jobs",
            tenant,
            {"model": "tiny-random-llama", "training_file": training + "\x00"},
            "training_file",
        ),
        ("/v1/admin/tenants", admin, {"name": "acme\x00"}, "name"),
        (f"/v1/admin/tenants/{tenant.tenant_id}/api_keys", admin, {"name": "\x00"}, "name"),
    ]
    for path, who, body, param in cases:
        response = client.post(
            path,
            headers={**who.headers, "Content-Type": "application/json"},
            content=json.dumps(body),
        )
        _assert_refused(response, param)
        if param == "metadata":
            assert "(at a)" in response.json()["error"]["message"]
    assert _counts(read) == before


def test_nul_in_a_form_field(client: TestClient) -> None:
    response = client.post(
        "/login",
        content=b"api_key=sk-%00&login_csrf=x",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        follow_redirects=False,
    )
    _assert_refused(response, "api_key")


def test_a_key_expiry_past_year_9999_is_a_400(
    client: TestClient, tenant: TenantKey, make_tenant: Callable[..., TenantKey]
) -> None:
    admin = make_tenant("provider", admin=True)
    response = client.post(
        f"/v1/admin/tenants/{tenant.tenant_id}/api_keys",
        headers=admin.headers,
        json={"expires_at": 10**15},
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "expires_at"


def test_nul_inside_dataset_text_is_content_not_a_failure(
    client: TestClient, tenant: TenantKey, upload: Callable[..., Any]
) -> None:
    line = {
        "messages": [
            {"role": "user", "content": "a\x00b"},
            {"role": "assistant", "content": "c"},
        ]
    }
    response = upload(tenant, (json.dumps(line) + "\n").encode() * 3)
    assert response.status_code in (200, 400), response.text
    if response.status_code == 400:
        assert response.json()["error"]["line"] == 1
        return
    file_id = response.json()["id"]
    assert client.get(f"/v1/files/{file_id}", headers=tenant.headers).status_code == 200
    assert client.get(f"/v1/files/{file_id}/content", headers=tenant.headers).status_code == 200
