"""Files over HTTP: streamed upload with a size cap and sha256, validation, listing, deletion."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from bds_service.models import AuditLog, File
from bds_service.settings import Settings
from bds_service.tasks import SCORE_DATASET, VALIDATE_FILE

# Fixture types (defined in tests/api/conftest.py); tests do not import conftest modules.
TenantKey = Any
RecordingPublisher = Any


def _stored_files(settings: Settings) -> list[Path]:
    root = settings.resolved_storage_dir
    return [path for path in root.rglob("*") if path.is_file()] if root.exists() else []


def test_upload_streams_to_storage_with_sha256_and_validates(
    client: TestClient,
    tenant: TenantKey,
    upload: Callable[..., Any],
    chat_jsonl: Callable[..., bytes],
    publisher: RecordingPublisher,
    read: Callable[..., list[Any]],
) -> None:
    content = chat_jsonl(6)
    response = upload(tenant, content)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"].startswith("file-") and body["object"] == "file"
    assert body["bytes"] == len(content)
    assert body["sha256"] == hashlib.sha256(content).hexdigest()
    assert (body["status"], body["n_examples"], body["format"]) == ("processed", 6, "chat")
    assert body["validation_report"]["ok"] is True
    assert isinstance(body["created_at"], int)
    assert response.headers["X-Request-ID"]

    download = client.get(f"/v1/files/{body['id']}/content", headers=tenant.headers)
    assert download.status_code == 200 and download.content == content
    assert client.get(f"/v1/files/{body['id']}", headers=tenant.headers).json() == body
    # A processed fine-tune file is scored next, and only after the upload committed.
    assert [(m.name, m.args) for m in publisher.messages] == [(SCORE_DATASET, (body["id"],))]
    (audit_row,) = read(select(AuditLog).where(AuditLog.action == "file.create"))
    assert (audit_row.action, audit_row.target_id, audit_row.request_id) == (
        "file.create",
        body["id"],
        response.headers["X-Request-ID"],
    )
    # Every download of the content is in the audit log, with who, which request and its size.
    (downloaded,) = read(select(AuditLog).where(AuditLog.action == "file.download"))
    assert (downloaded.target_type, downloaded.target_id, downloaded.tenant_id) == (
        "file",
        body["id"],
        tenant.tenant_id,
    )
    assert downloaded.request_id == download.headers["X-Request-ID"]
    assert downloaded.actor_type == "api_key" and downloaded.details == {"bytes": len(content)}


def test_uploaded_bytes_live_under_the_file_id_not_the_client_name(
    tenant: TenantKey, upload: Callable[..., Any], service_settings: Settings
) -> None:
    body = upload(tenant, filename="my data.jsonl").json()
    assert body["filename"] == "my data.jsonl"
    (stored,) = _stored_files(service_settings)
    assert stored.name == f"{body['id']}.jsonl"
    assert tenant.tenant_id in stored.parts


BAD_UPLOADS = [
    # (case, content, purpose, filename, status, code, line, field)
    ("empty file", b"", "fine-tune", "a.jsonl", 400, "empty_file", None, None),
    (
        "not utf-8",
        b'{"prompt": "caf\xe9", "completion": "x"}\n',
        "fine-tune",
        "a.jsonl",
        400,
        None,
        1,
        None,
    ),
    ("not json", b"this is not json\n", "fine-tune", "a.jsonl", 400, None, 1, None),
    ("json not an object", b"[1, 2, 3]\n", "fine-tune", "a.jsonl", 400, None, 1, None),
    (
        "wrong role",
        json.dumps(
            {
                "messages": [
                    {"role": "wizard", "content": "hi"},
                    {"role": "assistant", "content": "x"},
                ]
            }
        ).encode(),
        "fine-tune",
        "a.jsonl",
        400,
        None,
        1,
        "messages[0].role",
    ),
    (
        "NaN",
        b'{"prompt": "a", "completion": "b", "metadata": {"w": NaN}}\n',
        "fine-tune",
        "a.jsonl",
        400,
        None,
        1,
        None,
    ),
    ("unknown purpose", None, "batch", "a.jsonl", 400, "invalid_purpose", None, None),
    (
        "filename with path",
        None,
        "fine-tune",
        "../../etc/passwd",
        400,
        "invalid_filename",
        None,
        None,
    ),
    (
        "too large",
        b"x" * (64 * 1024 + 1),
        "fine-tune",
        "a.jsonl",
        413,
        "file_too_large",
        None,
        None,
    ),
]


@pytest.mark.parametrize(
    ("content", "purpose", "filename", "status", "code", "line", "field"),
    [case[1:] for case in BAD_UPLOADS],
    ids=[case[0] for case in BAD_UPLOADS],
)
def test_bad_uploads_are_refused_and_nothing_is_stored(
    tenant: TenantKey,
    upload: Callable[..., Any],
    read: Callable[..., list[Any]],
    service_settings: Settings,
    publisher: RecordingPublisher,
    content: bytes | None,
    purpose: str,
    filename: str,
    status: int,
    code: str | None,
    line: int | None,
    field: str | None,
) -> None:
    response = upload(tenant, content, purpose=purpose, filename=filename)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and error["type"] == "invalid_request_error"
    if code is not None:
        assert error["code"] == code
    if line is not None:
        assert error["line"] == line and error["param"] == "file"
        assert error["validation_report"]["ok"] is False
    if field is not None:
        assert error["field"] == field
    assert read(select(func.count()).select_from(File)) == [0]
    assert read(select(AuditLog.action)) == ["tenant.create", "api_key.create"]
    assert _stored_files(service_settings) == []
    assert publisher.messages == []


def test_malformed_multipart_requests_are_400(client: TestClient, tenant: TenantKey) -> None:
    no_file = client.post("/v1/files", headers=tenant.headers, data={"purpose": "fine-tune"})
    assert no_file.status_code == 400
    not_multipart = client.post("/v1/files", headers=tenant.headers, json={"purpose": "x"})
    assert not_multipart.json()["error"]["code"] == "invalid_content_type"
    extra_field = client.post(
        "/v1/files",
        headers=tenant.headers,
        files={"file": ("a.jsonl", b"{}")},
        data={"purpose": "fine-tune", "colour": "blue"},
    )
    assert extra_field.json()["error"]["code"] == "unknown_parameter"


def test_asynchronous_validation_reports_line_and_field(
    service_settings: Settings,
    tenant: TenantKey,
    upload: Callable[..., Any],
    run_cpu_tasks: Callable[[], list[tuple[str, str]]],
    client: TestClient,
    chat_jsonl: Callable[..., bytes],
) -> None:
    service_settings.validate_uploads_synchronously = False
    bad = chat_jsonl(2) + b'{"messages": [{"role": "user", "content": "no answer"}]}\n'
    bad_file = upload(tenant, bad).json()
    good_file = upload(tenant, chat_jsonl(3)).json()
    assert bad_file["status"] == good_file["status"] == "uploaded"

    outcomes = run_cpu_tasks()
    assert (VALIDATE_FILE, "error") in outcomes and (VALIDATE_FILE, "processed") in outcomes
    bad_after = client.get(f"/v1/files/{bad_file['id']}", headers=tenant.headers).json()
    assert bad_after["status"] == "error"
    assert "line 3" in bad_after["status_details"]
    issue = bad_after["validation_report"]["issues"][0]
    assert issue["line"] == 3 and issue["field"]
    good_after = client.get(f"/v1/files/{good_file['id']}", headers=tenant.headers).json()
    assert (good_after["status"], good_after["n_examples"]) == ("processed", 3)
    report = client.get(f"/v1/files/{bad_file['id']}/safety_report", headers=tenant.headers)
    assert report.json()["status"] == "not_applicable"


def test_list_paginates_with_after_and_has_more(
    client: TestClient,
    tenant: TenantKey,
    upload: Callable[..., Any],
    chat_jsonl: Callable[..., bytes],
) -> None:
    created = [upload(tenant, chat_jsonl(2, offset=i)).json()["id"] for i in range(5)]
    seen: list[str] = []
    after: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 2}
        if after:
            params["after"] = after
        page = client.get("/v1/files", headers=tenant.headers, params=params).json()
        assert page["object"] == "list"
        seen.extend(item["id"] for item in page["data"])
        if not page["has_more"]:
            break
        after = page["last_id"]
    assert seen == list(reversed(created))
    ascending = client.get(
        "/v1/files", headers=tenant.headers, params={"order": "asc", "limit": 100}
    ).json()
    assert [item["id"] for item in ascending["data"]] == created
    bad_cursor = client.get("/v1/files", headers=tenant.headers, params={"after": "file-nope"})
    assert bad_cursor.status_code == 400
    assert client.get("/v1/files", headers=tenant.headers, params={"limit": 0}).status_code == 400


def test_other_tenants_get_404_and_empty_lists(
    client: TestClient, tenant: TenantKey, other_tenant: TenantKey, upload: Callable[..., Any]
) -> None:
    file_id = upload(tenant).json()["id"]
    for path in ("", "/content", "/safety_report"):
        response = client.get(f"/v1/files/{file_id}{path}", headers=other_tenant.headers)
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == "file_not_found"
        assert file_id not in response.text.replace(f"'{file_id}'", "")
    assert client.delete(f"/v1/files/{file_id}", headers=other_tenant.headers).status_code == 404
    assert client.get("/v1/files", headers=other_tenant.headers).json()["data"] == []
    assert client.get(f"/v1/files/{file_id}", headers=tenant.headers).status_code == 200


def test_delete_removes_content_and_is_audited(
    client: TestClient,
    tenant: TenantKey,
    upload: Callable[..., Any],
    service_settings: Settings,
    read: Callable[..., list[Any]],
) -> None:
    file_id = upload(tenant).json()["id"]
    response = client.delete(f"/v1/files/{file_id}", headers=tenant.headers)
    assert response.json() == {"id": file_id, "object": "file", "deleted": True}
    assert client.get(f"/v1/files/{file_id}", headers=tenant.headers).status_code == 404
    assert _stored_files(service_settings) == []
    actions = read(select(AuditLog.action).order_by(AuditLog.id))
    assert actions[-2:] == ["file.create", "file.delete"]


def test_requests_without_a_valid_key_are_401(client: TestClient, tenant: TenantKey) -> None:
    for headers in ({}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer bds-nope"}):
        response = client.get("/v1/files", headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["type"] == "authentication_error"
