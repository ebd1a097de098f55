"""Rate limits per API key and caps per tenant: clear errors, and nothing stored past a cap."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from api.ratelimit import MemoryRateLimiter, RedisRateLimiter, check_request_limits
from bds_service.audit import Actor
from bds_service.db import SessionFactory
from bds_service.errors import LimitExceededError
from bds_service.jobs import service as jobs_service
from bds_service.models import AuditLog, File, FineTuningJob
from bds_service.settings import Settings

TenantKey = Any  # fixture types from tests/api/conftest.py
RecordingPublisher = Any

FakeClock = Any  # the ``clock`` fixture's type, tests/reliability/conftest.py


@pytest.fixture
def db_url(pg_url: str) -> str:
    """PostgreSQL only: the caps are about concurrent transactions."""
    return pg_url


# ---- rate limit -------------------------------------------------------------------------


def test_memory_limiter_refills_evenly_and_says_how_long_to_wait(clock: FakeClock) -> None:
    limiter = MemoryRateLimiter(requests=2, window_s=10.0, clock=clock)
    assert limiter.hit("key-a") is None and limiter.hit("key-a") is None
    assert limiter.hit("key-a") == pytest.approx(5.0)  # one token every 5 s
    assert limiter.hit("key-b") is None  # another key has its own bucket
    clock.now += 5.0
    assert limiter.hit("key-a") is None
    assert limiter.hit("key-a") == pytest.approx(5.0)


def test_redis_limiter_counts_per_key_and_window(clock: FakeClock, redis_url: str) -> None:
    prefix = f"bds-test:ratelimit:{uuid.uuid4().hex}:"
    limiter = RedisRateLimiter(redis_url, requests=2, window_s=10.0, prefix=prefix, clock=clock)
    try:
        assert limiter.hit("key-a") is None and limiter.hit("key-a") is None
        clock.now += 3.0
        assert limiter.hit("key-a") == pytest.approx(7.0)  # the window ends at 1_000_010
        assert limiter.hit("key-b") is None
        clock.now += 7.0
        assert limiter.hit("key-a") is None
        ttl = limiter.client.ttl(f"{prefix}key-a:{100_001}")
        assert 0 < ttl <= 11  # counters expire on their own
    finally:
        for key in limiter.client.scan_iter(f"{prefix}*"):
            limiter.client.delete(key)


def test_unreachable_redis_lets_requests_through() -> None:
    limiter = RedisRateLimiter("redis://127.0.0.1:1/0", requests=1, window_s=10.0)
    assert limiter.hit("key-a") is None and limiter.hit("key-a") is None
    check_request_limits(limiter, limiter, "198.51.100.4", "key-a", Settings())


class _CommandCounter:
    """Counts the commands a real Redis client sends (each one is a round trip here)."""

    def __init__(self, limiter: RedisRateLimiter) -> None:
        self.sent: list[str] = []
        send = limiter.client.execute_command

        def counting(*args: Any, **options: Any) -> Any:
            self.sent.append(str(args[0]))
            return send(*args, **options)

        limiter.client.execute_command = counting  # type: ignore[method-assign]


def test_a_known_keys_limits_are_checked_in_one_redis_round_trip(
    clock: FakeClock, redis_url: str, service_settings: Settings
) -> None:
    prefix = f"bds-test:{uuid.uuid4().hex}:"
    failures = RedisRateLimiter(
        redis_url, requests=2, window_s=60.0, prefix=f"{prefix}fail:", clock=clock
    )
    requests = RedisRateLimiter(
        redis_url, requests=3, window_s=10.0, prefix=f"{prefix}req:", clock=clock
    )
    service_settings.rate_limit_requests, service_settings.rate_limit_window_seconds = 3, 10.0
    service_settings.auth_failure_limit = 2

    def check(address: str, key: str) -> None:
        check_request_limits(failures, requests, address, key, service_settings)

    try:
        check("198.51.100.4", "key-a")  # loads the script into Redis if it is not there yet
        counted = _CommandCounter(requests)
        failures_counted = _CommandCounter(failures)
        check("198.51.100.4", "key-a")
        assert counted.sent == ["EVALSHA"] and failures_counted.sent == []
        check("198.51.100.4", "key-a")
        with pytest.raises(LimitExceededError) as limited:
            check("198.51.100.4", "key-a")
        assert limited.value.code == "rate_limit_exceeded"
        assert limited.value.headers == {"Retry-After": "10"}  # the window ends in 10 s
        assert requests.client.ttl(f"{prefix}req:key-a:{100_000}") > 0  # it expires

        # An address that used up its failed authentications is refused before its key's
        # requests are counted, as by check_auth_failures then check_rate_limit.
        failures.hit("203.0.113.7")
        check("203.0.113.7", "key-b")
        failures.hit("203.0.113.7")
        with pytest.raises(LimitExceededError) as blocked:
            check("203.0.113.7", "key-b")
        assert blocked.value.code == "too_many_failed_authentications"
        assert blocked.value.headers == {"Retry-After": "20"}  # its window ends at 1_000_020
        assert requests.client.get(f"{prefix}req:key-b:{100_000}") == b"1"
        clock.now += 20.0
        check("203.0.113.7", "key-b")
    finally:
        for key in requests.client.scan_iter(f"{prefix}*"):
            requests.client.delete(key)


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_rate_limit_is_per_key_and_answers_429_with_retry_after(
    service_settings: Settings,
    make_tenant: Callable[..., TenantKey],
    publisher: RecordingPublisher,
    backend: str,
    redis_url: str,
) -> None:
    from api.app import create_app

    service_settings.rate_limit_requests = 3
    service_settings.rate_limit_window_seconds = 60.0
    service_settings.rate_limit_redis_url = redis_url if backend == "redis" else None
    first_key, second_key = make_tenant("acme"), make_tenant("acme")
    with TestClient(create_app(service_settings, publisher)) as client:
        for _ in range(3):
            assert client.get("/v1/files", headers=first_key.headers).status_code == 200
        limited = client.get("/v1/files", headers=first_key.headers)
        assert limited.status_code == 429
        error = limited.json()["error"]
        assert (error["code"], error["type"]) == ("rate_limit_exceeded", "rate_limit_error")
        assert "3 requests per 60 s" in error["message"]
        assert 1 <= int(limited.headers["Retry-After"]) <= 60
        # Another key, even of the same tenant, has its own allowance.
        assert client.get("/v1/files", headers=second_key.headers).status_code == 200


def test_rate_limit_zero_turns_it_off(service_settings: Settings) -> None:
    from api.ratelimit import build_rate_limiter

    service_settings.rate_limit_requests = 0
    assert build_rate_limiter(service_settings) is None


# ---- per-tenant caps --------------------------------------------------------------------


def _supervised(training_file: str) -> dict[str, Any]:
    return {
        "model": "tiny-random-llama",
        "training_file": training_file,
        "method": {"type": "supervised"},
    }


def _set_limits(client: TestClient, admin: TenantKey, tenant_id: str, **limits: Any) -> Any:
    return client.put(f"/v1/admin/tenants/{tenant_id}/limits", headers=admin.headers, json=limits)


def test_admin_sets_caps_and_null_restores_the_default(
    client: TestClient,
    make_tenant: Callable[..., TenantKey],
    tenant: TenantKey,
    read: Callable[..., list[Any]],
) -> None:
    admin = make_tenant("provider", admin=True)
    changed = _set_limits(client, admin, tenant.tenant_id, max_concurrent_jobs=2, max_examples=5)
    assert changed.status_code == 200, changed.text
    body = changed.json()
    assert (body["max_concurrent_jobs"], body["max_file_bytes"], body["max_examples"]) == (
        2,
        None,
        5,
    )
    (row,) = read(select(AuditLog).where(AuditLog.action == "tenant.limits.update"))
    assert row.details["after"]["max_concurrent_jobs"] == 2
    reset = _set_limits(client, admin, tenant.tenant_id).json()
    assert reset["max_concurrent_jobs"] is None and reset["max_examples"] is None

    assert _set_limits(client, tenant, tenant.tenant_id, max_examples=1).status_code == 403
    zero = _set_limits(client, admin, tenant.tenant_id, max_concurrent_jobs=0)
    assert zero.status_code == 400
    assert zero.json()["error"]["param"] == "max_concurrent_jobs"
    assert _set_limits(client, admin, "org-missing", max_examples=1).status_code == 404


def test_concurrent_job_cap_refuses_the_next_job_until_one_finishes(
    client: TestClient,
    make_tenant: Callable[..., TenantKey],
    tenant: TenantKey,
    other_tenant: TenantKey,
    upload: Callable[..., Any],
    publisher: RecordingPublisher,
    read: Callable[..., list[Any]],
) -> None:
    admin = make_tenant("provider", admin=True)
    assert _set_limits(client, admin, tenant.tenant_id, max_concurrent_jobs=2).status_code == 200
    training = upload(tenant).json()["id"]
    first = client.post(
        "/v1/fine_tuning/jobs",
        headers={**tenant.headers, "Idempotency-Key": "first"},
        json=_supervised(training),
    ).json()
    client.post("/v1/fine_tuning/jobs", headers=tenant.headers, json=_supervised(training))
    publisher.take()
    (last_audit_id,) = read(select(func.max(AuditLog.id)))

    refused = client.post(
        "/v1/fine_tuning/jobs", headers=tenant.headers, json=_supervised(training)
    )
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert (error["code"], error["type"]) == ("too_many_active_jobs", "rate_limit_error")
    assert "at most 2 at once" in error["message"]
    assert read(select(func.count()).select_from(FineTuningJob)) == [2]
    # The refusal is in the audit log, for the operator (it changed nothing else).
    (refusal,) = read(select(AuditLog).where(AuditLog.id > last_audit_id))
    assert refusal.action == "fine_tuning_job.create.refused"
    assert refusal.tenant_id == tenant.tenant_id
    assert (refusal.details or {})["code"] == "too_many_active_jobs"
    assert publisher.messages == []

    # A retry of a job that exists is a replay, not a new job: the cap does not apply.
    replay = client.post(
        "/v1/fine_tuning/jobs",
        headers={**tenant.headers, "Idempotency-Key": "first"},
        json=_supervised(training),
    )
    assert replay.status_code == 200 and replay.json()["id"] == first["id"]
    # The cap is per tenant: another tenant is not affected.
    foreign_training = upload(other_tenant).json()["id"]
    other = client.post(
        "/v1/fine_tuning/jobs", headers=other_tenant.headers, json=_supervised(foreign_training)
    )
    assert other.status_code == 200
    # Once a job ends, there is room again.
    client.post(f"/v1/fine_tuning/jobs/{first['id']}/cancel", headers=tenant.headers)
    again = client.post("/v1/fine_tuning/jobs", headers=tenant.headers, json=_supervised(training))
    assert again.status_code == 200, again.text


def test_concurrent_creates_cannot_exceed_the_cap(
    session_factory: SessionFactory,
    service_settings: Settings,
    tenant: TenantKey,
    upload: Callable[..., Any],
) -> None:
    service_settings.max_concurrent_jobs = 2
    training = upload(tenant).json()["id"]
    spec = jobs_service.JobSpec(
        model="tiny-random-llama", training_file=training, method_type="supervised"
    )
    barrier = threading.Barrier(4)
    outcomes: list[str] = []

    def create() -> None:
        with session_factory() as session:
            barrier.wait()
            try:
                jobs_service.create_job(
                    session,
                    spec,
                    tenant_id=tenant.tenant_id,
                    actor=Actor("cli", "tests"),
                    settings=service_settings,
                )
                session.commit()
                outcomes.append("created")
            except LimitExceededError:
                session.rollback()
                outcomes.append("refused")

    threads = [threading.Thread(target=create) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(outcomes) == ["created", "created", "refused", "refused"]
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(FineTuningJob)) == 2


def test_file_size_cap_of_a_tenant(
    client: TestClient,
    make_tenant: Callable[..., TenantKey],
    tenant: TenantKey,
    other_tenant: TenantKey,
    upload: Callable[..., Any],
    chat_jsonl: Callable[..., bytes],
    read: Callable[..., list[Any]],
    service_settings: Settings,
) -> None:
    admin = make_tenant("provider", admin=True)
    assert _set_limits(client, admin, tenant.tenant_id, max_file_bytes=200).status_code == 200
    content = chat_jsonl(6)
    assert len(content) > 200
    refused = upload(tenant, content)
    assert refused.status_code == 413
    error = refused.json()["error"]
    assert (error["code"], error["param"]) == ("file_too_large", "file")
    assert "200-byte" in error["message"]
    assert read(select(func.count()).select_from(File)) == [0]
    storage = service_settings.resolved_storage_dir
    assert not storage.exists() or not [p for p in storage.rglob("*") if p.is_file()]
    assert upload(other_tenant, content).status_code == 200


def test_examples_cap_of_a_tenant_names_the_first_line_past_it(
    client: TestClient,
    make_tenant: Callable[..., TenantKey],
    tenant: TenantKey,
    upload: Callable[..., Any],
    chat_jsonl: Callable[..., bytes],
    read: Callable[..., list[Any]],
    service_settings: Settings,
    run_cpu_tasks: Callable[[], list[tuple[str, str]]],
) -> None:
    admin = make_tenant("provider", admin=True)
    assert _set_limits(client, admin, tenant.tenant_id, max_examples=3).status_code == 200
    refused = upload(tenant, chat_jsonl(4))
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert (error["code"], error["line"], error["param"]) == ("too_many_examples", 4, "file")
    assert read(select(func.count()).select_from(File)) == [0]
    assert upload(tenant, chat_jsonl(3)).status_code == 200

    # Validation in the background applies the same cap.
    service_settings.validate_uploads_synchronously = False
    late = upload(tenant, chat_jsonl(4)).json()
    run_cpu_tasks()
    after = client.get(f"/v1/files/{late['id']}", headers=tenant.headers).json()
    assert after["status"] == "error"
    assert after["validation_report"]["issues"][0]["code"] == "too_many_examples"


def test_a_create_waits_for_its_tenants_lock_only_briefly(
    client: TestClient,
    session_factory: SessionFactory,
    tenant: TenantKey,
    upload: Callable[..., Any],
    read: Callable[..., list[Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from bds_service.tenants.repository import TenantRepository

    monkeypatch.setattr(jobs_service, "TENANT_LOCK_WAIT_S", 0.3)
    training = upload(tenant).json()["id"]
    # Another transaction holds the tenant's lock (a create that is slow to commit).
    with session_factory() as holder:
        assert TenantRepository(holder).lock(tenant.tenant_id) is not None
        busy = client.post(
            "/v1/fine_tuning/jobs", headers=tenant.headers, json=_supervised(training)
        )
        assert busy.status_code == 429
        assert busy.json()["error"]["code"] == "too_many_concurrent_requests"
        assert busy.headers["Retry-After"] == "1"
        assert read(select(func.count()).select_from(FineTuningJob)) == [0]
        # Other requests of the tenant are not held up.
        assert client.get("/v1/files", headers=tenant.headers).status_code == 200
    retried = client.post(
        "/v1/fine_tuning/jobs", headers=tenant.headers, json=_supervised(training)
    )
    assert retried.status_code == 200, retried.text
