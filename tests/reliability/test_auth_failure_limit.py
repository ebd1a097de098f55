"""Failed authentications per client address: after N, the address is refused with 429 before
its key is checked, so API keys and the dashboard login cannot be guessed by brute force."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from sqlalchemy import select

from api.deps import client_address
from api.ratelimit import (
    AUTH_FAILURE_PREFIX,
    MemoryRateLimiter,
    RateLimiter,
    RedisRateLimiter,
    build_auth_failure_limiter,
)
from bds_service.models import WebSession
from bds_service.settings import Settings

TenantKey = Any  # fixture types from tests/api/conftest.py
RecordingPublisher = Any

FakeClock = Any  # the ``clock`` fixture's type, tests/reliability/conftest.py
OTHER_ADDRESS = ("203.0.113.7", 50000)


@pytest.fixture
def db_url(pg_url: str) -> str:
    """PostgreSQL only: the limit does not depend on the database."""
    return pg_url


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own; its counters are deleted afterwards."""
    import redis

    prefix = f"bds-test:authfail:{uuid.uuid4().hex}:"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(f"{prefix}*"):
        client.delete(key)
    client.close()


@pytest.fixture(params=["memory", "redis"])
def limited_app(
    request: pytest.FixtureRequest,
    service_settings: Settings,
    publisher: RecordingPublisher,
    clock: FakeClock,
    redis_prefix: str,
    redis_url: str,
) -> FastAPI:
    """An app allowing 3 failed authentications per 60 s per address, on the fake clock,
    counted in memory or in Redis (under this test's own prefix)."""
    from api.app import create_app

    service_settings.auth_failure_limit = 3
    service_settings.auth_failure_window_seconds = 60.0
    app = create_app(service_settings, publisher)
    limiter: RateLimiter = (
        MemoryRateLimiter(3, 60.0, clock=clock)
        if request.param == "memory"
        else RedisRateLimiter(redis_url, 3, 60.0, prefix=redis_prefix, clock=clock)
    )
    app.state.services.auth_failure_limiter = limiter
    return app


def wrong_key(key: str) -> str:
    """The key with its last character changed: a guess that fails."""
    return key[:-1] + ("A" if key[-1] != "A" else "B")


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def log_in(client: TestClient, key: str) -> Any:
    """Fill in the login form like a browser: fetch it (token cookie), then post it."""
    form = client.get("/login")
    token = re.search(r'name="login_csrf" value="([^"]+)"', form.text)
    assert token is not None, form.text
    return client.post(
        "/login", data={"api_key": key, "login_csrf": token.group(1)}, follow_redirects=False
    )


# ---- the counters -----------------------------------------------------------------------


def test_memory_limiter_blocked_counts_nothing_and_says_how_long_to_wait(
    clock: FakeClock,
) -> None:
    limiter = MemoryRateLimiter(requests=2, window_s=10.0, clock=clock)
    for _ in range(5):
        assert limiter.blocked("10.0.0.1") is None  # checking never uses up the allowance
    assert limiter.hit("10.0.0.1") is None and limiter.hit("10.0.0.1") is None
    assert limiter.blocked("10.0.0.1") == pytest.approx(5.0)
    assert limiter.blocked("10.0.0.2") is None
    clock.now += 5.0
    assert limiter.blocked("10.0.0.1") is None


def test_memory_limiter_forgets_full_buckets_so_many_addresses_cannot_grow_it(
    clock: FakeClock,
) -> None:
    limiter = MemoryRateLimiter(requests=1, window_s=10.0, clock=clock, prune_at=3)
    for address in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
        limiter.hit(address)
    clock.now += 10.0  # all three have refilled
    limiter.hit("10.0.0.4")
    assert set(limiter._buckets) == {"10.0.0.4"}
    # A bucket still in use is kept.
    assert limiter.hit("10.0.0.4") == pytest.approx(10.0)


def test_redis_limiter_blocked_reads_the_window_without_counting(
    clock: FakeClock, redis_prefix: str, redis_url: str
) -> None:
    limiter = RedisRateLimiter(
        redis_url, requests=2, window_s=10.0, prefix=redis_prefix, clock=clock
    )
    assert limiter.blocked("10.0.0.1") is None and limiter.blocked("10.0.0.1") is None
    assert limiter.hit("10.0.0.1") is None and limiter.hit("10.0.0.1") is None
    clock.now += 3.0
    assert limiter.blocked("10.0.0.1") == pytest.approx(7.0)  # the window ends at 1_000_010
    assert limiter.blocked("10.0.0.2") is None
    clock.now += 7.0
    assert limiter.blocked("10.0.0.1") is None


def test_unreachable_redis_blocks_nobody() -> None:
    limiter = RedisRateLimiter("redis://127.0.0.1:1/0", requests=1, window_s=10.0)
    limiter.hit("10.0.0.1")
    limiter.hit("10.0.0.1")
    assert limiter.blocked("10.0.0.1") is None


def test_settings_choose_the_counter_and_zero_turns_it_off(
    service_settings: Settings, redis_url: str
) -> None:
    service_settings.rate_limit_redis_url = None
    assert isinstance(build_auth_failure_limiter(service_settings), MemoryRateLimiter)
    service_settings.rate_limit_redis_url = redis_url
    shared = build_auth_failure_limiter(service_settings)
    assert isinstance(shared, RedisRateLimiter) and shared.prefix == AUTH_FAILURE_PREFIX
    service_settings.auth_failure_limit = 0
    assert build_auth_failure_limiter(service_settings) is None


def test_a_request_without_a_client_address_is_counted_as_unknown() -> None:
    scope: dict[str, Any] = {
        "type": "http",
        "method": "GET",
        "path": "/",
        "headers": [],
        "client": None,
    }
    assert client_address(Request(scope)) == "unknown"
    assert client_address(Request({**scope, "client": ("198.51.100.4", 1)})) == "198.51.100.4"


# ---- through the API ----------------------------------------------------------------------


def test_after_n_failures_even_a_valid_key_gets_429_until_the_wait_is_over(
    limited_app: FastAPI,
    make_tenant: Callable[..., TenantKey],
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    tenant = make_tenant("acme")
    caplog.set_level(logging.WARNING, logger="api.ratelimit")
    with TestClient(limited_app) as client, TestClient(limited_app, client=OTHER_ADDRESS) as other:
        for _ in range(3):
            failed = client.get("/v1/files", headers=bearer(wrong_key(tenant.key)))
            assert failed.status_code == 401
        refused = client.get("/v1/files", headers=bearer(tenant.key))
        assert refused.status_code == 429
        error = refused.json()["error"]
        assert (error["code"], error["type"]) == (
            "too_many_failed_authentications",
            "rate_limit_error",
        )
        assert error["param"] is None
        assert "3 per 60 s" in error["message"]
        retry_after = int(refused.headers["Retry-After"])
        assert 1 <= retry_after <= 60 and f"retry in {retry_after} s" in error["message"]
        # More guesses are refused the same way and not counted or logged again.
        assert client.get("/v1/files", headers=bearer(wrong_key(tenant.key))).status_code == 429

        # Another address is not affected.
        assert other.get("/v1/files", headers=bearer(tenant.key)).status_code == 200
        assert other.get("/v1/files", headers=bearer(wrong_key(tenant.key))).status_code == 401

        clock.now += 60.0
        assert client.get("/v1/files", headers=bearer(tenant.key)).status_code == 200

    blocks = [record for record in caplog.records if record.name == "api.ratelimit"]
    assert len(blocks) == 1 and "testclient" in blocks[0].getMessage()


def test_successful_requests_do_not_count(
    limited_app: FastAPI, make_tenant: Callable[..., TenantKey]
) -> None:
    tenant = make_tenant("acme")
    with TestClient(limited_app) as client:
        for _ in range(2):
            assert client.get("/v1/files", headers=bearer(wrong_key(tenant.key))).status_code == 401
        for _ in range(10):
            assert client.get("/v1/files", headers=bearer(tenant.key)).status_code == 200
        assert client.get("/v1/files", headers=bearer(wrong_key(tenant.key))).status_code == 401
        assert client.get("/v1/files", headers=bearer(tenant.key)).status_code == 429


def test_zero_turns_the_limit_off(
    service_settings: Settings,
    publisher: RecordingPublisher,
    make_tenant: Callable[..., TenantKey],
) -> None:
    from api.app import create_app

    service_settings.auth_failure_limit = 0
    tenant = make_tenant("acme")
    with TestClient(create_app(service_settings, publisher)) as client:
        for _ in range(25):  # more than the default allowance
            assert client.get("/v1/files", headers=bearer(wrong_key(tenant.key))).status_code == 401
        assert client.get("/v1/files", headers=bearer(tenant.key)).status_code == 200


# ---- the dashboard login --------------------------------------------------------------------


def test_login_page_counts_failures_and_refuses_a_blocked_address_with_429(
    limited_app: FastAPI,
    make_tenant: Callable[..., TenantKey],
    read: Callable[..., list[Any]],
    clock: FakeClock,
) -> None:
    admin = make_tenant("provider", admin=True)
    with TestClient(limited_app, base_url="https://testserver") as browser:
        assert log_in(browser, wrong_key(admin.key)).status_code == 401
        # Failures with a Bearer header on the API and on the pages share the allowance.
        assert browser.get("/v1/files", headers=bearer(wrong_key(admin.key))).status_code == 401
        assert browser.get("/admin", headers=bearer(wrong_key(admin.key))).status_code == 401

        refused = log_in(browser, admin.key)
        assert refused.status_code == 429
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
        assert "too many failed authentications" in refused.text
        assert 'name="api_key"' in refused.text  # the form is shown again
        assert "bds_session" not in browser.cookies
        assert read(select(WebSession)) == []

        page = browser.get("/admin", headers=bearer(admin.key))
        assert page.status_code == 429 and "too many failed authentications" in page.text
        assert "Retry-After" in page.headers
        assert browser.get("/v1/files", headers=bearer(admin.key)).status_code == 429

        clock.now += 60.0
        assert log_in(browser, admin.key).status_code == 303
