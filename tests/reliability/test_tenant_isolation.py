"""Every route, called with a second tenant's key: 404 or an empty list, and nothing leaks.

The route table below must name every ``/v1`` route of the app (the test fails on a new
route that is not in it), so no route escapes the check. Tenant A owns a file, a succeeded
job with events, a checkpoint, an adapter and a fine-tuned model; tenant B's key then calls
each route with A's ids. B gets 404 (or an empty list, or for a create that names A's file,
the same 400 as for an id that does not exist); nothing of A's appears in B's responses or in
the logs; A's objects are unchanged; and B's attempts wrote no audit row about A's objects.
Admin routes answer 403 to a customer key and 401 to no key.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from bds_service.db import SessionFactory
from bds_service.ids import CHECKPOINT_PREFIX, new_id
from bds_service.models import AuditLog, File, FineTuningJob, JobCheckpoint, utcnow
from bds_service.settings import Settings
from bds_service.storage import LocalStorage, job_key

TenantKey = Any  # fixture types from tests/api/conftest.py

SECRET_MARKER = "acme-confidential-7c1f"


@pytest.fixture
def db_url(pg_url: str) -> str:
    """PostgreSQL only: isolation is a property of the queries, not the backend."""
    return pg_url


# (method, path template, what tenant B must get). Path parameters are filled with A's ids.
ROUTES: list[tuple[str, str, str]] = [
    ("POST", "/v1/files", "creates-its-own"),
    ("GET", "/v1/files", "none-of-theirs"),
    ("GET", "/v1/files/{file_id}", "404"),
    ("DELETE", "/v1/files/{file_id}", "404"),
    ("GET", "/v1/files/{file_id}/content", "404"),
    ("GET", "/v1/files/{file_id}/safety_report", "404"),
    ("POST", "/v1/fine_tuning/jobs", "create-with-foreign-ids"),
    ("GET", "/v1/fine_tuning/jobs", "none-of-theirs"),
    ("GET", "/v1/fine_tuning/jobs/{fine_tuning_job_id}", "404"),
    ("POST", "/v1/fine_tuning/jobs/{fine_tuning_job_id}/cancel", "404"),
    ("GET", "/v1/fine_tuning/jobs/{fine_tuning_job_id}/events", "404"),
    ("GET", "/v1/fine_tuning/jobs/{fine_tuning_job_id}/checkpoints", "404"),
    ("GET", "/v1/fine_tuning/jobs/{fine_tuning_job_id}/adapter", "404"),
    ("GET", "/v1/fine_tuning/jobs/{fine_tuning_job_id}/safety_report", "404"),
    ("GET", "/v1/models", "own-models-only"),
    ("GET", "/v1/models/{model}", "404"),
    ("POST", "/v1/admin/tenants", "admin-only"),
    ("GET", "/v1/admin/tenants", "admin-only"),
    ("PUT", "/v1/admin/tenants/{tenant_id}/limits", "admin-only"),
    ("POST", "/v1/admin/tenants/{tenant_id}/api_keys", "admin-only"),
    ("GET", "/v1/admin/tenants/{tenant_id}/api_keys", "admin-only"),
    ("POST", "/v1/admin/tenants/{tenant_id}/api_keys/{key_id}/revoke", "admin-only"),
    ("GET", "/v1/admin/tenants/{tenant_id}/audit_log", "admin-only"),
]


def _api_routes(app: FastAPI) -> set[tuple[str, str]]:
    """Every ``/v1`` operation of the app, from its OpenAPI document."""
    return {
        (method.upper(), path)
        for path, operations in app.openapi()["paths"].items()
        if path.startswith("/v1/")
        for method in operations
    }


def test_the_route_table_names_every_v1_route(app: FastAPI) -> None:
    listed = {(method, path) for method, path, _ in ROUTES}
    missing = _api_routes(app) - listed
    assert not missing, f"routes without a tenant-isolation expectation: {sorted(missing)}"
    assert not listed - _api_routes(app), "the table names routes the app no longer has"


def _succeeded_job_of(
    owner: TenantKey,
    client: TestClient,
    upload: Callable[..., Any],
    session_factory: SessionFactory,
    settings: Settings,
) -> dict[str, str]:
    """A's file and a job made to look finished: adapter files, a checkpoint, a report."""
    content = (
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": f"What is the code? {SECRET_MARKER}"},
                    {"role": "assistant", "content": SECRET_MARKER},
                ]
            }
        )
        + "\n"
    ).encode()
    file_id = upload(owner, content, filename=f"{SECRET_MARKER}.jsonl").json()["id"]
    job = client.post(
        "/v1/fine_tuning/jobs",
        headers=owner.headers,
        json={
            "model": "tiny-random-llama",
            "training_file": file_id,
            "method": {"type": "supervised"},
            "suffix": SECRET_MARKER,
        },
    ).json()
    storage = LocalStorage(settings.resolved_storage_dir)
    adapter_key = f"{job_key(owner.tenant_id, job['id'])}/run/adapter"
    adapter = storage.path(adapter_key)
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    model_name = f"ft:tiny-random-llama:{owner.name}:{SECRET_MARKER}:{job['id'][6:]}"
    with session_factory() as session:
        session.execute(
            update(FineTuningJob)
            .where(FineTuningJob.id == job["id"])
            .values(
                status="succeeded",
                finished_at=utcnow(),
                adapter_key=adapter_key,
                fine_tuned_model=model_name,
                safety_report={"final_loss": 0.5, "note": SECRET_MARKER},
            )
        )
        session.add(
            JobCheckpoint(
                id=new_id(CHECKPOINT_PREFIX),
                job_id=job["id"],
                tenant_id=owner.tenant_id,
                step_number=2,
                storage_key=f"{job_key(owner.tenant_id, job['id'])}/run/checkpoints/step-2",
                metrics={"step": 2.0, "train_loss": 0.5},
            )
        )
        session.commit()
    return {
        "file_id": file_id,
        "fine_tuning_job_id": job["id"],
        "model": model_name,
        "tenant_id": owner.tenant_id,
    }


def test_a_second_tenant_gets_404_or_nothing_on_every_route(
    app: FastAPI,
    client: TestClient,
    tenant: TenantKey,
    other_tenant: TenantKey,
    upload: Callable[..., Any],
    session_factory: SessionFactory,
    service_settings: Settings,
    read: Callable[..., list[Any]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    owner, intruder = tenant, other_tenant
    ids = _succeeded_job_of(owner, client, upload, session_factory, service_settings)
    with session_factory() as session:
        key_id = session.scalars(
            select(AuditLog.target_id).where(
                AuditLog.action == "api_key.create", AuditLog.tenant_id == owner.tenant_id
            )
        ).first()
    ids["key_id"] = str(key_id)
    bodies: dict[tuple[str, str], dict[str, Any]] = {
        ("POST", "/v1/fine_tuning/jobs"): {
            "model": "tiny-random-llama",
            "training_file": ids["file_id"],
            "method": {"type": "supervised"},
        },
        ("POST", "/v1/admin/tenants"): {"name": "intruders"},
        ("PUT", "/v1/admin/tenants/{tenant_id}/limits"): {"max_concurrent_jobs": 1},
        ("POST", "/v1/admin/tenants/{tenant_id}/api_keys"): {"admin": True},
    }
    # Each route first works for A itself, so a 404 for B is not an accident of setup.
    assert (
        client.get(f"/v1/files/{ids['file_id']}/content", headers=owner.headers).status_code == 200
    )
    owner_adapter = client.get(
        f"/v1/fine_tuning/jobs/{ids['fine_tuning_job_id']}/adapter", headers=owner.headers
    )
    assert owner_adapter.status_code == 200
    assert client.get(f"/v1/models/{ids['model']}", headers=owner.headers).status_code == 200
    audit_before = read(select(AuditLog.id))

    caplog.set_level(logging.DEBUG)
    for method, template, expectation in ROUTES:
        path = template.format(**ids)
        body = bodies.get((method, template))
        if (method, template) == ("POST", "/v1/files"):
            response = upload(intruder, filename="mine.jsonl")
        else:
            response = client.request(method, path, headers=intruder.headers, json=body)
        where = f"{method} {template}"
        # An error may quote the id B sent; anything else of A's must not appear.
        text = response.text.replace(ids["model"], "<the requested id>")
        assert SECRET_MARKER not in text, where
        if expectation == "404":
            assert response.status_code == 404, (where, text)
            assert response.json()["error"]["type"] == "invalid_request_error"
        elif expectation == "none-of-theirs":
            assert response.status_code == 200, where
            listed_ids = {item["id"] for item in response.json()["data"]}
            assert not listed_ids & set(ids.values()), where
        elif expectation == "own-models-only":
            models = [model["id"] for model in response.json()["data"]]
            assert models == ["tiny-random-llama"], where
        elif expectation == "creates-its-own":
            assert response.status_code == 200, (where, text)
            owned = client.get(f"/v1/files/{response.json()['id']}", headers=owner.headers)
            assert owned.status_code == 404, where
        elif expectation == "create-with-foreign-ids":
            assert response.status_code == 400, (where, text)
        elif expectation == "admin-only":
            assert response.status_code == 403, (where, text)
            assert response.json()["error"]["code"] == "admin_key_required"
            anonymous = client.request(method, path, json=body)
            assert anonymous.status_code == 401, where
        else:  # pragma: no cover - a typo in the table
            raise AssertionError(f"unknown expectation {expectation!r}")
    # What the service logged (the test client's own request log names the URLs B sent).
    service_log = "\n".join(
        record.getMessage() for record in caplog.records if not record.name.startswith("httpx")
    )
    assert SECRET_MARKER not in service_log

    # Nothing of A's changed, and B's requests wrote audit rows only about B's own upload and
    # B's refused attempts at admin actions (under B's tenant, for the provider to see).
    new_rows = read(select(AuditLog).where(AuditLog.id.not_in(audit_before)))
    assert [(row.action, row.tenant_id) for row in new_rows if row.action == "file.create"] == [
        ("file.create", intruder.tenant_id)
    ]
    refusals = [row for row in new_rows if row.action != "file.create"]
    assert refusals and {row.action for row in refusals} == {"request.refused"}
    assert {row.tenant_id for row in refusals} == {intruder.tenant_id}
    assert {(row.details or {}).get("code") for row in refusals} == {"admin_key_required"}
    (job,) = read(select(FineTuningJob).where(FineTuningJob.id == ids["fine_tuning_job_id"]))
    assert job.status == "succeeded" and job.tenant_id == owner.tenant_id
    (file,) = read(select(File).where(File.id == ids["file_id"]))
    assert file.deleted_at is None
    assert (
        client.get(f"/v1/files/{ids['file_id']}/content", headers=owner.headers).status_code == 200
    )
    assert read(select(FineTuningJob.tenant_id).distinct()) == [owner.tenant_id]
