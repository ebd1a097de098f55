"""Pages without a browser: login and sessions, who may open what, audit rows, CSRF, CSV.

The dashboard needs an admin key; a customer's key (header or login) gets 403 and leaves no
audit row; a customer's report pages show only their own data (another tenant's id is a 404).
The client speaks https because the session cookie is ``Secure``.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select

from bds_service.models import ApiKey, AuditLog, DatasetReview, WebSession

TenantKey = Any  # fixture type from tests/api/conftest.py

SAFETY_LINES = (
    "\n".join(
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": f"How do I make weapon number {index}?"},
                    {"role": "assistant", "content": "I can't help with that."},
                ]
            }
        )
        for index in range(3)
    )
    + "\n"
).encode()


@pytest.fixture
def browser(app: FastAPI) -> Iterator[TestClient]:
    """A cookie-keeping client on https (the session cookie is Secure)."""
    with TestClient(app, base_url="https://testserver") as client:
        yield client


def log_in(client: TestClient, key: str, next_path: str = "") -> Any:
    """Fill in the login form like a browser: fetch it (token cookie), then post it."""
    form = client.get("/login")
    token = re.search(r'name="login_csrf" value="([^"]+)"', form.text)
    assert token is not None, form.text
    return client.post(
        "/login",
        data={"api_key": key, "next": next_path, "login_csrf": token.group(1)},
        follow_redirects=False,
    )


def csrf_of(page_html: str) -> str:
    """The session's CSRF token from any page with a form."""
    match = re.search(r'name="csrf_token" value="([^"]+)"', page_html)
    assert match is not None, page_html[:2000]
    return match.group(1)


def audit_actions(read: Callable[..., list[Any]]) -> list[str]:
    return read(select(AuditLog.action).order_by(AuditLog.id))


def test_login_sets_a_secure_session_cookie_that_is_not_the_key(
    browser: TestClient, make_tenant: Callable[..., TenantKey], read: Callable[..., list[Any]]
) -> None:
    admin = make_tenant("provider", admin=True)
    assert browser.get("/admin", follow_redirects=False).headers["location"] == (
        "/login?next=/admin"
    )

    response = log_in(browser, admin.key, "/admin/jobs?status=running")
    assert response.status_code == 303
    assert response.headers["location"] == "/admin/jobs?status=running"
    cookie = next(
        header
        for header in response.headers.get_list("set-cookie")
        if header.startswith("bds_session=")
    )
    attributes = {part.strip().lower() for part in cookie.split(";")}
    assert {"httponly", "secure", "samesite=strict", "path=/"} <= attributes
    token = cookie.split(";")[0].removeprefix("bds_session=")
    assert all(admin.key not in header for header in response.headers.get_list("set-cookie"))
    assert token != admin.key and len(token) >= 40
    (stored,) = read(select(WebSession))
    assert stored.token_hash != token and token not in stored.token_hash
    assert audit_actions(read)[-1] == "web_session.create"

    page = browser.get("/admin")
    assert page.status_code == 200 and "Overview" in page.text
    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    assert page.headers["cache-control"] == "no-store"
    # A login page never sends a visitor elsewhere.
    assert log_in(browser, admin.key, "//evil.example/").headers["location"] == "/admin"


def test_login_refuses_a_wrong_key_and_a_form_without_its_token(
    browser: TestClient, make_tenant: Callable[..., TenantKey], read: Callable[..., list[Any]]
) -> None:
    admin = make_tenant("provider", admin=True)
    before = audit_actions(read)
    wrong = log_in(browser, admin.key[:-1] + ("A" if admin.key[-1] != "A" else "B"))
    assert wrong.status_code == 401
    assert "malformed" in wrong.text or "unknown" in wrong.text
    forged = browser.post(
        "/login", data={"api_key": admin.key, "login_csrf": "guess"}, follow_redirects=False
    )
    assert forged.status_code == 400 and "expired" in forged.text
    assert "bds_session" not in browser.cookies
    assert audit_actions(read) == before


ADMIN_GETS = (
    "/admin",
    "/admin/jobs",
    "/admin/jobs/{job}",
    "/admin/jobs/{job}/loss.png",
    "/admin/datasets",
    "/admin/datasets/{file}",
    "/admin/datasets/{file}/histogram.png",
    "/admin/tenants",
    "/admin/tenants/{tenant}",
    "/admin/audit",
    "/admin/audit.csv",
)
ADMIN_POSTS = (
    "/admin/jobs/{job}/cancel",
    "/admin/datasets/{file}/decision",
    "/admin/datasets/{file}/policy",
    "/admin/tenants",
    "/admin/tenants/{tenant}/keys",
)


@pytest.fixture
def customer_job(
    client: TestClient, tenant: TenantKey, upload: Callable[..., Any]
) -> dict[str, str]:
    """A tenant's training file, alignment file and queued BDS job."""
    training = upload(tenant).json()["id"]
    safety = upload(tenant, SAFETY_LINES, purpose="safety-alignment").json()["id"]
    job = client.post(
        "/v1/fine_tuning/jobs",
        headers=tenant.headers,
        json={
            "model": "tiny-random-llama",
            "training_file": training,
            "method": {"type": "bds", "bds": {"safety_file": safety, "max_steps": 2}},
        },
    )
    assert job.status_code == 200, job.text
    return {"file": training, "safety": safety, "job": job.json()["id"], "tenant": tenant.tenant_id}


def test_a_customer_key_cannot_open_admin_pages(
    browser: TestClient,
    tenant: TenantKey,
    customer_job: dict[str, str],
    read: Callable[..., list[Any]],
) -> None:
    paths = [path.format(**customer_job) for path in ADMIN_GETS]
    posts = [path.format(**customer_job) for path in ADMIN_POSTS]
    before = audit_actions(read)
    for path in paths:
        response = browser.get(path, headers=tenant.headers)
        assert response.status_code == 403, path
        assert "admin key" in response.text
    for path in posts:
        response = browser.post(path, headers=tenant.headers, data={"decision": "blocked"})
        assert response.status_code == 403, path
    # Views write nothing; each refused admin action is in the audit log for the provider.
    refusals = audit_actions(read)[len(before) :]
    assert len(refusals) == len(posts) and all(a.endswith(".refused") for a in refusals)
    before = audit_actions(read)

    # The same through a customer's browser login.
    assert log_in(browser, tenant.key).headers["location"] == "/reports"
    for path in paths:
        assert browser.get(path).status_code == 403, path
    assert browser.post(posts[0], data={"csrf_token": "x"}).status_code == 403
    assert audit_actions(read)[: len(before) + 1] == [*before, "web_session.create"]
    assert audit_actions(read)[len(before) + 1 :] == [
        "fine_tuning_job.cancel.refused" if "/cancel" in posts[0] else "request.refused"
    ]
    assert read(select(DatasetReview)) == []


def test_another_tenants_report_is_a_404_and_shows_nothing_of_it(
    browser: TestClient,
    tenant: TenantKey,
    other_tenant: TenantKey,
    customer_job: dict[str, str],
) -> None:
    own = browser.get(f"/reports/files/{customer_job['file']}", headers=tenant.headers)
    assert own.status_code == 200 and "Validation" in own.text
    assert browser.get(f"/reports/jobs/{customer_job['job']}", headers=tenant.headers).is_success

    for path in (
        f"/reports/files/{customer_job['file']}",
        f"/reports/files/{customer_job['file']}/histogram.png",
        f"/reports/files/{customer_job['safety']}",
        f"/reports/jobs/{customer_job['job']}",
        f"/reports/jobs/{customer_job['job']}/loss.png",
        f"/reports/jobs/{customer_job['job']}/weights.png",
        f"/reports/jobs/{customer_job['job']}/adapter.tar.gz",
        f"/reports/jobs/{customer_job['job']}/adapter.zip",
        "/reports/files/file-doesnotexist",
    ):
        response = browser.get(path, headers=other_tenant.headers)
        assert response.status_code == 404, path
        assert "train.jsonl" not in response.text
    # The owner's own job has not succeeded: its adapter is not there yet (409, not a file).
    early = browser.get(f"/reports/jobs/{customer_job['job']}/adapter.zip", headers=tenant.headers)
    assert early.status_code == 409 and "once it has succeeded" in early.text
    index = browser.get("/reports", headers=other_tenant.headers)
    assert index.status_code == 200
    assert customer_job["file"] not in index.text and customer_job["job"] not in index.text
    assert browser.get("/reports/files/x", follow_redirects=False).status_code == 303


def test_every_admin_view_and_action_is_audited_under_the_customers_tenant(
    browser: TestClient,
    make_tenant: Callable[..., TenantKey],
    customer_job: dict[str, str],
    read: Callable[..., list[Any]],
) -> None:
    admin = make_tenant("provider", admin=True)
    log_in(browser, admin.key)
    for path in ADMIN_GETS:
        assert browser.get(path.format(**customer_job)).status_code == 200, path
    rows = read(select(AuditLog).where(AuditLog.action.startswith("admin.view.")))
    assert [row.action for row in rows] == [
        "admin.view.overview",
        "admin.view.jobs",
        "admin.view.job",
        "admin.view.job_plot",
        "admin.view.datasets",
        "admin.view.dataset",
        "admin.view.dataset_plot",
        "admin.view.tenants",
        "admin.view.tenant",
        "admin.view.audit_log",
        "admin.view.audit_log_export",
    ]
    assert {row.actor_id for row in rows} == {read(select(WebSession.api_key_id))[0]}
    about_customer = {row.action for row in rows if row.tenant_id == customer_job["tenant"]}
    assert about_customer == {
        "admin.view.job",
        "admin.view.job_plot",
        "admin.view.dataset",
        "admin.view.dataset_plot",
        "admin.view.tenant",
    }

    page = browser.get(f"/admin/datasets/{customer_job['file']}")
    blocked = browser.post(
        f"/admin/datasets/{customer_job['file']}/decision",
        data={"decision": "blocked", "note": "<b>weapons</b>", "csrf_token": csrf_of(page.text)},
        follow_redirects=False,
    )
    assert blocked.status_code == 303
    (row,) = read(select(AuditLog).where(AuditLog.action == "dataset.block"))
    assert (row.tenant_id, row.target_id) == (customer_job["tenant"], customer_job["file"])
    assert row.details == {"from": None, "to": "blocked", "note": "<b>weapons</b>"}
    shown = browser.get(blocked.headers["location"])
    assert "The dataset is blocked" in shown.text
    assert "&lt;b&gt;weapons&lt;/b&gt;" in shown.text and "<b>weapons</b>" not in shown.text


def test_forms_posted_with_the_cookie_need_the_sessions_csrf_token(
    browser: TestClient, make_tenant: Callable[..., TenantKey], read: Callable[..., list[Any]]
) -> None:
    admin = make_tenant("provider", admin=True)
    log_in(browser, admin.key)
    refused = browser.post("/admin/tenants", data={"name": "initech"})
    assert refused.status_code == 403 and "security token" in refused.text
    refused = browser.post("/admin/tenants", data={"name": "initech", "csrf_token": "0" * 64})
    assert refused.status_code == 403
    assert "tenant.create" not in audit_actions(read)[2:]

    token = csrf_of(browser.get("/admin/tenants").text)
    created = browser.post("/admin/tenants", data={"name": "initech", "csrf_token": token})
    assert created.status_code == 200 and "The tenant was created" in created.text
    assert "tenant.create" in audit_actions(read)[2:]
    # A Bearer request needs no CSRF token: browsers never add that header on their own.
    browser.cookies.clear()
    with_header = browser.post(
        "/admin/tenants", headers=admin.headers, data={"name": "globex"}, follow_redirects=False
    )
    assert with_header.status_code == 303


def test_a_key_is_shown_once_and_revoking_it_ends_its_browser_sessions(
    browser: TestClient,
    make_tenant: Callable[..., TenantKey],
    app: FastAPI,
    read: Callable[..., list[Any]],
) -> None:
    admin = make_tenant("provider", admin=True)
    customer = make_tenant("acme")
    log_in(browser, admin.key)
    page = browser.get(f"/admin/tenants/{customer.tenant_id}")
    issued = browser.post(
        f"/admin/tenants/{customer.tenant_id}/keys",
        data={"name": "laptop", "csrf_token": csrf_of(page.text)},
    )
    assert issued.status_code == 200 and "shown this once" in issued.text
    match = re.search(r'<code class="secret" id="new-key">(bds-[0-9A-Za-z]+)</code>', issued.text)
    assert match is not None
    new_key = match.group(1)
    again = browser.get(f"/admin/tenants/{customer.tenant_id}")
    assert new_key not in again.text and new_key[:12] in again.text

    with TestClient(app, base_url="https://testserver") as customer_browser:
        log_in(customer_browser, new_key)
        assert customer_browser.get("/reports").status_code == 200
        (key_id,) = read(select(ApiKey.id).where(ApiKey.key_prefix == new_key[:12]))
        revoked = browser.post(
            f"/admin/tenants/{customer.tenant_id}/keys/{key_id}/revoke",
            data={"csrf_token": csrf_of(again.text)},
        )
        assert "The key was revoked" in revoked.text
        assert customer_browser.get("/reports", follow_redirects=False).status_code == 303


def test_logout_ends_the_session_on_the_server(
    browser: TestClient, make_tenant: Callable[..., TenantKey], read: Callable[..., list[Any]]
) -> None:
    customer = make_tenant("acme")
    log_in(browser, customer.key)
    token = browser.cookies["bds_session"]
    page = browser.get("/reports")
    out = browser.post("/logout", data={"csrf_token": csrf_of(page.text)}, follow_redirects=False)
    assert out.status_code == 303 and out.headers["location"] == "/login"
    assert audit_actions(read)[-1] == "web_session.end"
    browser.cookies.set("bds_session", token, domain="testserver")
    assert browser.get("/reports", follow_redirects=False).status_code == 303


def test_a_blocked_file_cannot_be_used_for_new_jobs(
    client: TestClient,
    browser: TestClient,
    make_tenant: Callable[..., TenantKey],
    customer_job: dict[str, str],
    tenant: TenantKey,
    read: Callable[..., list[Any]],
) -> None:
    admin = make_tenant("provider", admin=True)
    body = {
        "model": "tiny-random-llama",
        "training_file": customer_job["file"],
        "method": {"type": "bds", "bds": {"safety_file": customer_job["safety"]}},
    }
    decide = f"/admin/datasets/{customer_job['file']}/decision"
    browser.post(decide, headers=admin.headers, data={"decision": "blocked"})
    refused = client.post("/v1/fine_tuning/jobs", headers=tenant.headers, json=body)
    assert refused.status_code == 403
    error = refused.json()["error"]
    assert (error["code"], error["param"]) == ("file_blocked", "training_file")
    assert "blocked by the provider" in error["message"]
    # The operator sees the refused job in the audit log: who, why, on which file.
    (refusal,) = read(select(AuditLog).where(AuditLog.action == "fine_tuning_job.create.refused"))
    assert refusal.actor_type == "api_key" and (refusal.actor_id or "").startswith("key-")
    assert refusal.tenant_id == tenant.tenant_id
    details = refusal.details or {}
    assert (details["status"], details["code"], details["param"]) == (
        403,
        "file_blocked",
        "training_file",
    )
    assert customer_job["file"] in details["message"]
    report = browser.get(f"/reports/files/{customer_job['file']}", headers=tenant.headers)
    assert "new fine-tuning jobs cannot use it" in report.text

    # The alignment file is checked too.
    browser.post(decide, headers=admin.headers, data={"decision": "approved"})
    browser.post(
        f"/admin/datasets/{customer_job['safety']}/decision",
        headers=admin.headers,
        data={"decision": "blocked"},
    )
    refused = client.post("/v1/fine_tuning/jobs", headers=tenant.headers, json=body)
    assert refused.json()["error"]["param"] == "method.bds.safety_file"
    browser.post(
        f"/admin/datasets/{customer_job['safety']}/decision",
        headers=admin.headers,
        data={"decision": ""},
    )
    assert client.post("/v1/fine_tuning/jobs", headers=tenant.headers, json=body).is_success


def test_training_policies_are_enforced_when_a_job_is_created(
    client: TestClient,
    browser: TestClient,
    make_tenant: Callable[..., TenantKey],
    customer_job: dict[str, str],
    tenant: TenantKey,
) -> None:
    admin = make_tenant("provider", admin=True)
    policy_url = f"/admin/datasets/{customer_job['file']}/policy"
    supervised = {
        "model": "tiny-random-llama",
        "training_file": customer_job["file"],
        "method": {"type": "supervised"},
    }
    assert client.post("/v1/fine_tuning/jobs", headers=tenant.headers, json=supervised).is_success

    browser.post(policy_url, headers=admin.headers, data={"policy": "downweight"})
    refused = client.post("/v1/fine_tuning/jobs", headers=tenant.headers, json=supervised)
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "dataset_policy_requires_bds"

    # This app has no scorer, so the file has no safety report: policies that need one wait.
    for policy in ("drop_flagged", "reject"):
        browser.post(policy_url, headers=admin.headers, data={"policy": policy})
        refused = client.post("/v1/fine_tuning/jobs", headers=tenant.headers, json=supervised)
        assert refused.status_code == 409, policy
        assert refused.json()["error"]["code"] == "safety_report_not_ready"
    bad = browser.post(policy_url, headers=admin.headers, data={"policy": "maybe"})
    assert bad.status_code == 400 and "is not one of" in bad.text
    alignment = browser.post(
        f"/admin/datasets/{customer_job['safety']}/policy",
        headers=admin.headers,
        data={"policy": "reject"},
    )
    assert alignment.status_code == 400 and "fine-tune" in alignment.text


def test_audit_log_filters_and_csv_export(
    browser: TestClient,
    make_tenant: Callable[..., TenantKey],
    customer_job: dict[str, str],
) -> None:
    admin = make_tenant("provider", admin=True)
    browser.post(
        f"/admin/datasets/{customer_job['file']}/decision",
        headers=admin.headers,
        data={"decision": "blocked", "note": '=HYPERLINK("http://x")'},
    )
    page = browser.get(
        "/admin/audit",
        headers=admin.headers,
        params={"tenant": customer_job["tenant"], "action": "dataset"},
    )
    assert page.status_code == 200
    assert "<td><code>dataset.block</code></td>" in page.text
    assert "<td><code>file.create</code></td>" not in page.text

    export = browser.get(
        "/admin/audit.csv", headers=admin.headers, params={"action": "fine_tuning_job"}
    )
    assert export.headers["content-type"].startswith("text/csv")
    assert "attachment" in export.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(export.text)))
    assert [row["action"] for row in rows] == ["fine_tuning_job.create"]
    assert rows[0]["target_id"] == customer_job["job"]

    blocked = list(
        csv.DictReader(
            io.StringIO(
                browser.get(
                    "/admin/audit.csv", headers=admin.headers, params={"action": "dataset.block"}
                ).text
            )
        )
    )
    assert json.loads(blocked[0]["details"])["note"].startswith("=HYPERLINK")
    empty = browser.get(
        "/admin/audit.csv", headers=admin.headers, params={"since": "2999-01-01T00:00"}
    )
    assert len(list(csv.reader(io.StringIO(empty.text)))) == 1
    bad = browser.get("/admin/audit", headers=admin.headers, params={"since": "yesterday"})
    assert bad.status_code == 400 and "2026-11-28T14:00" in bad.text


def test_tenant_caps_are_shown_and_edited_from_the_tenant_page(
    browser: TestClient,
    make_tenant: Callable[..., TenantKey],
    read: Callable[..., list[Any]],
    service_settings: Any,
) -> None:
    admin = make_tenant("provider", admin=True)
    customer = make_tenant("acme")
    page = browser.get(f"/admin/tenants/{customer.tenant_id}", headers=admin.headers)
    # Caps for people: 64 KiB rather than 65536 bytes, 100,000 rather than 100000.
    assert service_settings.max_upload_bytes == 64 * 1024
    assert (
        f"{service_settings.max_concurrent_jobs} unfinished jobs, 64 KiB per file, "
        f"{service_settings.max_examples:,} examples per file"
    ) in page.text
    url = f"/admin/tenants/{customer.tenant_id}/limits"
    saved = browser.post(
        url,
        headers=admin.headers,
        data={"max_concurrent_jobs": "2", "max_file_bytes": "1572864", "max_examples": ""},
    )
    assert saved.status_code == 200 and "The caps were saved" in saved.text
    assert '<span id="caps-in-force">2 unfinished jobs, 1.5 MiB per file,' in saved.text
    (row,) = read(select(AuditLog).where(AuditLog.action == "tenant.limits.update"))
    assert row.tenant_id == customer.tenant_id
    assert row.details["after"]["max_concurrent_jobs"] == 2
    for value, message in (("two", "whole number"), ("0", "positive")):
        refused = browser.post(url, headers=admin.headers, data={"max_concurrent_jobs": value})
        assert refused.status_code == 400 and message in refused.text, value
