"""Requests a hostile tester sends: each gets a clear 4xx (or a 503 that says when to retry),
never a 500, and leaves nothing behind.

One body-size cap for every non-upload body, one strict request model (no silent coercion,
no repeated JSON members), file names without invisible or control characters, multipart
bodies that must be complete, server-made request ids on audit rows, the database's absence
answered with 503 and Retry-After in one place, integers past the database's range refused.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from api.app import create_app
from bds_service.models import AuditLog, File, FineTuningJob, IdempotencyKey
from bds_service.settings import Settings

TenantKey = Any  # fixture types from tests/api/conftest.py
RecordingPublisher = Any


@pytest.fixture
def db_url(pg_url: str) -> str:
    """PostgreSQL only."""
    return pg_url


def _counts(read: Callable[..., list[Any]]) -> list[Any]:
    return [
        read(select(func.count()).select_from(model))
        for model in (File, FineTuningJob, AuditLog, IdempotencyKey)
    ]


def _job(training: str, **hyperparameters: Any) -> dict[str, Any]:
    return {
        "model": "tiny-random-llama",
        "training_file": training,
        "method": {"type": "supervised"},
        "hyperparameters": hyperparameters,
    }


@pytest.fixture
def training(tenant: TenantKey, upload: Callable[..., Any]) -> str:
    response = upload(tenant)
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def test_a_body_over_the_cap_is_refused_with_413_before_authentication(
    client: TestClient, service_settings: Settings
) -> None:
    cap = service_settings.max_request_body_bytes
    body = b'{"model": "' + b"x" * (cap + 10) + b'"}'
    declared = client.post(
        "/v1/fine_tuning/jobs", content=body, headers={"Content-Type": "application/json"}
    )
    assert declared.status_code == 413, declared.text
    assert declared.json()["error"]["code"] == "request_too_large"
    assert str(cap) in declared.json()["error"]["message"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while it streams
        yield b'{"model": "'
        for _ in range(cap // 65536 + 2):
            yield b"x" * 65536
        yield b'"}'

    streamed = client.post(
        "/v1/fine_tuning/jobs", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert streamed.status_code == 413, streamed.text


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        (
            '{{"model": "m", "training_file": "{f}", "model": "other"}}',
            "duplicate_parameter",
            "model",
        ),
        (
            '{{"model": "tiny-random-llama", "training_file": "{f}", '
            '"hyperparameters": {{"n_epochs": 1, "n_epochs": 3}}}}',
            "duplicate_parameter",
            "n_epochs",
        ),
        (
            '{{"model": "m", "training_file": "{f}", "metadata": ' + "[" * 100 + "]" * 100 + "}}",
            "invalid_json",
            None,
        ),
    ],
    ids=["repeated member", "repeated nested member", "nested 100 deep"],
)
def test_json_that_could_mean_two_things_is_refused(
    client: TestClient,
    tenant: TenantKey,
    training: str,
    read: Callable[..., list[Any]],
    body: str,
    code: str,
    param: str | None,
) -> None:
    before = _counts(read)
    response = client.post(
        "/v1/fine_tuning/jobs",
        content=body.format(f=training).encode(),
        headers={**tenant.headers, "Content-Type": "application/json"},
    )
    assert response.status_code == 400, response.text
    assert (response.json()["error"]["code"], response.json()["error"]["param"]) == (code, param)
    assert _counts(read) == before


@pytest.mark.parametrize(
    ("hyperparameters", "method", "param"),
    [
        ({"n_epochs": "3"}, None, "hyperparameters.n_epochs"),
        ({"n_epochs": True}, None, "hyperparameters.n_epochs"),
        ({"batch_size": 2.0}, None, "hyperparameters.batch_size"),
        ({"learning_rate_multiplier": 1e-320}, None, "hyperparameters.learning_rate_multiplier"),
        ({}, {"type": "bds", "bds": {"sgld": "yes"}}, "method.bds.sgld"),
    ],
    ids=["string epochs", "boolean epochs", "float batch size", "denormal rate", "string sgld"],
)
def test_job_fields_of_the_wrong_type_are_refused_not_coerced(
    client: TestClient,
    tenant: TenantKey,
    training: str,
    read: Callable[..., list[Any]],
    hyperparameters: dict[str, Any],
    method: dict[str, Any] | None,
    param: str,
) -> None:
    before = _counts(read)
    body = _job(training, **hyperparameters)
    if method is not None:
        body["method"] = method
    response = client.post("/v1/fine_tuning/jobs", headers=tenant.headers, json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("invalid_value", param)
    assert _counts(read) == before


@pytest.mark.parametrize(
    "filename",
    [
        "report\u202egpj.jsonl",
        "tra\u200bin.jsonl",
        "train\x7f.jsonl",
        "train\u0085.jsonl",
        "   ",
        "a\u2028b.jsonl",
    ],
    ids=["bidi override", "zero-width space", "DEL", "NEL (C1)", "only spaces", "line separator"],
)
def test_file_names_with_invisible_or_control_characters_are_refused(
    tenant: TenantKey, upload: Callable[..., Any], read: Callable[..., list[Any]], filename: str
) -> None:
    before = _counts(read)
    response = upload(tenant, filename=filename)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_filename"
    assert _counts(read) == before


def test_broken_multipart_bodies_are_refused_and_store_nothing(
    client: TestClient,
    tenant: TenantKey,
    read: Callable[..., list[Any]],
    service_settings: Settings,
) -> None:
    boundary = b"XyZboundary"
    data = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'

    def part(name: bytes, value: bytes, filename: bytes | None = None) -> bytes:
        disposition = b'form-data; name="' + name + b'"'
        if filename is not None:
            disposition += b'; filename="' + filename + b'"'
        return (
            b"--"
            + boundary
            + b"\r\nContent-Disposition: "
            + disposition
            + b"\r\n\r\n"
            + value
            + b"\r\n"
        )

    headers = {
        **tenant.headers,
        "Content-Type": f"multipart/form-data; boundary={boundary.decode()}",
    }
    end = b"--" + boundary + b"--\r\n"
    cases = {
        "cut mid-file": (part(b"purpose", b"fine-tune") + part(b"file", data * 3, b"t.jsonl"))[
            :-40
        ],
        "no closing boundary": part(b"purpose", b"fine-tune") + part(b"file", data, b"t.jsonl"),
        "purpose twice": part(b"purpose", b"safety-alignment")
        + part(b"purpose", b"fine-tune")
        + part(b"file", data, b"t.jsonl")
        + end,
        "file name not UTF-8": part(b"purpose", b"fine-tune")
        + part(b"file", data, b"t\xff.jsonl")
        + end,
    }
    expected = {
        "cut mid-file": ("incomplete_upload", "file"),
        "no closing boundary": ("incomplete_upload", "file"),
        "purpose twice": ("duplicate_parameter", "purpose"),
        "file name not UTF-8": ("invalid_filename", "file"),
    }
    before = _counts(read)
    for case, body in cases.items():
        response = client.post("/v1/files", content=body, headers=headers)
        assert response.status_code == 400, (case, response.text)
        error = response.json()["error"]
        assert (error["code"], error["param"]) == expected[case], case
    assert _counts(read) == before
    storage = service_settings.resolved_storage_dir
    assert not storage.exists() or not [p for p in storage.rglob("*") if p.is_file()]
    # The same parts, complete, are stored.
    whole = part(b"purpose", b"fine-tune") + part(b"file", data, b"t.jsonl") + end
    assert client.post("/v1/files", content=whole, headers=headers).status_code == 200


def test_a_client_request_id_is_echoed_but_never_stored_as_the_audit_request_id(
    client: TestClient, tenant: TenantKey, read: Callable[..., list[Any]]
) -> None:
    response = client.post(
        "/v1/files",
        headers={**tenant.headers, "X-Request-ID": "req_forged-by-client"},
        files={"file": ("t.jsonl", b'{"prompt": "a", "completion": "b"}\n')},
        data={"purpose": "fine-tune"},
    )
    assert response.status_code == 200, response.text
    ours = response.headers["X-Request-ID"]
    assert ours != "req_forged-by-client" and ours.startswith("req_")
    assert response.headers["X-Client-Request-ID"] == "req_forged-by-client"
    stored = read(select(AuditLog.request_id).where(AuditLog.target_id == response.json()["id"]))
    assert stored == [ours]


def test_an_unreachable_database_answers_503_with_retry_after(
    service_settings: Settings, tenant: TenantKey, publisher: RecordingPublisher
) -> None:
    unreachable = service_settings.model_copy(
        update={"database_url": "postgresql+psycopg://postgres@127.0.0.1:9/nowhere"}
    )
    with TestClient(create_app(unreachable, publisher)) as client:
        for method, path in (("GET", "/v1/files"), ("GET", "/v1/fine_tuning/jobs")):
            response = client.request(method, path, headers=tenant.headers)
            assert response.status_code == 503, response.text
            assert response.json()["error"]["code"] == "service_unavailable"
            assert int(response.headers["Retry-After"]) > 0


def test_integers_past_the_database_range_are_400_on_the_dashboard(
    client: TestClient, make_tenant: Callable[..., TenantKey]
) -> None:
    admin = make_tenant("provider", admin=True)
    response = client.get("/admin/audit?before=2147483648", headers=admin.headers)
    assert response.status_code == 400, response.text[:500]
    assert client.get("/admin/audit?before=2147483647", headers=admin.headers).status_code == 200
    # The dashboard's caps form: the same 400 as the JSON admin API, not a database error.
    # (A Bearer admin key needs no CSRF token: only cookie sessions do.)
    url = f"/admin/tenants/{admin.tenant_id}/limits"
    for value in ("2147483648", "99999999999999999999"):
        refused = client.post(url, headers=admin.headers, data={"max_examples": value})
        assert refused.status_code == 400, refused.text[:300]
        assert "max_examples must be a positive number of at most" in refused.text


def test_the_cap_on_unfinished_jobs_says_when_to_look_again(
    client: TestClient, tenant: TenantKey, training: str, service_settings: Settings
) -> None:
    service_settings.max_concurrent_jobs = 1
    first = client.post("/v1/fine_tuning/jobs", headers=tenant.headers, json=_job(training))
    assert first.status_code == 200, first.text
    second = client.post("/v1/fine_tuning/jobs", headers=tenant.headers, json=_job(training))
    assert second.status_code == 429
    assert second.json()["error"]["code"] == "too_many_active_jobs"
    assert int(second.headers["Retry-After"]) > 0
    assert json.loads(second.text)["error"]["message"].startswith("your organization already")
