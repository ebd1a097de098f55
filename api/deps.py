"""Request dependencies, as ``Annotated`` aliases: the session, the caller, the app's services.

``DbSession`` is one session per request: it commits when the endpoint returns, rolls back if
it raises, and only after a successful commit publishes the tasks the services buffered. It is
a ``scope="function"`` dependency, so the commit happens before the response is sent and a
client never sees a success that was not stored.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated

from anyio import CapacityLimiter, to_thread
from fastapi import Depends, Request
from sqlalchemy import Engine
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.ratelimit import (
    MemoryRateLimiter,
    RateLimiter,
    check_auth_failures,
    check_rate_limit,
    check_request_limits,
    record_auth_failure,
)
from bds_service.db import SessionFactory, abandon_unit_of_work, complete_unit_of_work
from bds_service.errors import AuthenticationError, PermissionDeniedError
from bds_service.inference.client import InferenceClient
from bds_service.settings import Settings
from bds_service.storage import LocalStorage
from bds_service.tasks import TaskSender
from bds_service.tenants.key_cache import KeyCache
from bds_service.tenants.service import Principal, authenticate, cached_principal

CREATE_THREADS = 40  # as many as the default pool's (anyio's default limiter)


@dataclass
class AppServices:
    """Everything the endpoints share, built once by the app factory."""

    settings: Settings
    engine: Engine
    session_factory: SessionFactory
    storage: LocalStorage
    publisher: TaskSender
    read_session_factory: SessionFactory | None = None  # one-statement reads (authentication)
    rate_limiter: RateLimiter | None = None
    auth_failure_limiter: RateLimiter | None = None
    inference: InferenceClient | None = None
    key_cache: KeyCache | None = None  # keys that authenticated moments ago (api_key_cache_seconds)
    # Worker threads for job creates, apart from the default pool's: a create waits on the
    # broker to dispatch its task (seconds while the broker is down), and must not take the
    # threads every other route needs meanwhile.
    create_limiter: CapacityLimiter = field(default_factory=lambda: CapacityLimiter(CREATE_THREADS))


async def get_services(request: Request) -> AppServices:
    """The app's shared services."""
    services: AppServices = request.app.state.services
    return services


Services = Annotated[AppServices, Depends(get_services)]


async def get_settings(services: Services) -> Settings:
    """The app's settings."""
    return services.settings


async def get_storage(services: Services) -> LocalStorage:
    """The artifact storage."""
    return services.storage


AppSettings = Annotated[Settings, Depends(get_settings)]
Storage = Annotated[LocalStorage, Depends(get_storage)]


async def get_session(services: Services) -> AsyncIterator[Session]:
    """One transaction per request (:func:`bds_service.db.unit_of_work`): commit on success,
    roll back on error, then publish.

    Async, so that opening the session costs no hop to a worker thread (it does no I/O: it
    connects at its first statement, on the endpoint's thread). The commit or rollback, which
    wait on the database, run on a worker thread with a limiter of their own, as FastAPI runs
    a sync dependency's exit: never waiting for a thread that a request waiting for this
    session's connection may hold. FastAPI shields a dependency's exit from cancellation.
    """
    session = services.session_factory()
    try:
        yield session
    except BaseException:
        await to_thread.run_sync(abandon_unit_of_work, session, limiter=CapacityLimiter(1))
        raise
    await to_thread.run_sync(
        complete_unit_of_work, session, services.publisher, limiter=CapacityLimiter(1)
    )


DbSession = Annotated[Session, Depends(get_session, scope="function")]


async def get_read_session(services: Services) -> AsyncIterator[Session]:
    """A session for an endpoint that only reads and never commits. On PostgreSQL each
    statement runs on its own (autocommit): no BEGIN and COMMIT round trips around a list.

    Async, so that FastAPI does not hand it to a worker thread to open and again to close:
    opening a session does no I/O (it connects at its first statement, on the endpoint's
    thread), and closing one that holds no transaction gives its connection back to the pool
    without a round trip.
    """
    with (services.read_session_factory or services.session_factory)() as session:
        yield session


ReadSession = Annotated[Session, Depends(get_read_session, scope="function")]


async def get_request_id(request: Request) -> str:
    """The request id set by the middleware (echoed in X-Request-ID, stored in audit rows)."""
    return str(request.state.request_id)


RequestId = Annotated[str, Depends(get_request_id)]

UNKNOWN_CLIENT = "unknown"


def client_address(request: Request) -> str:
    """The client's IP address, as the server resolved it (behind a proxy, uvicorn's
    ``--proxy-headers`` with ``--forwarded-allow-ips``); "unknown" when there is none.

    X-Forwarded-For is not read here: any client can send it, so trusting it would let one
    address pose as many.
    """
    return request.client.host if request.client else UNKNOWN_CLIENT


def _bearer_key(request: Request) -> str:
    """The key of ``Authorization: Bearer <key>``; AuthenticationError without one."""
    header = request.headers.get("authorization")
    if not header:
        raise AuthenticationError(
            "no API key: send it as 'Authorization: Bearer <key>'", code="missing_api_key"
        )
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        raise AuthenticationError(
            "the Authorization header must be 'Bearer <key>'", code="invalid_authorization_header"
        )
    return credentials.strip()


async def authenticate_request(request: Request, services: Services) -> Principal:
    """The caller behind ``Authorization: Bearer <key>``; 401 without a live key, 429 past
    the key's rate limit or once the client's address has used up its failed authentications
    (then even a valid key is refused; only keys that fail to authenticate count).

    The key is looked up in its own short transaction, not the request's, so that a long
    upload does not hold a transaction (on SQLite: the write lock) while the body streams in.
    A key that authenticated in this process in the last ``api_key_cache_seconds`` is not
    looked up again; then, with the limits counted in memory (or off), nothing here waits on
    I/O and the check runs on the event loop instead of a worker thread.
    """
    key = _bearer_key(request)
    client = client_address(request)
    no_io = services.key_cache is not None and all(
        limiter is None or isinstance(limiter, MemoryRateLimiter)
        for limiter in (services.rate_limiter, services.auth_failure_limiter)
    )
    cached = _cached(services, key) if no_io else None
    if cached is not None:
        principal = _authenticate_key(services, key, client, cached)
    else:
        principal = await run_in_threadpool(_authenticate_key, services, key, client)
    request.state.principal = principal
    return principal


def authenticate_bearer(request: Request, services: AppServices) -> Principal:
    """:func:`authenticate_request` for callers on a worker thread (it may block)."""
    principal = _authenticate_key(services, _bearer_key(request), client_address(request))
    request.state.principal = principal
    return principal


def _cached(services: AppServices, key: str) -> Principal | None:
    assert services.key_cache is not None
    try:
        return cached_principal(
            services.key_cache, key, secret=services.settings.api_key_secret.get_secret_value()
        )
    except AuthenticationError:
        return None  # malformed: _authenticate_key refuses it and counts the failure


def _authenticate_key(
    services: AppServices, key: str, client: str, cached: Principal | None = None
) -> Principal:
    """Check the address's failed authentications, look the key up (unless ``cached``, its
    principal from the cache), count a failure or the request against the key's rate limit.

    A key found in the cache needs no lookup between the two checks, so they are made
    together: one Redis round trip where both count in Redis.
    """
    if cached is None and services.key_cache is not None:
        cached = _cached(services, key)
    if cached is not None:
        check_request_limits(
            services.auth_failure_limiter,
            services.rate_limiter,
            client,
            cached.key_id,
            services.settings,
        )
        return cached
    check_auth_failures(services.auth_failure_limiter, client, services.settings)
    try:
        with (services.read_session_factory or services.session_factory)() as session:
            principal = authenticate(
                session,
                key,
                secret=services.settings.api_key_secret.get_secret_value(),
                cache=services.key_cache,
            )
    except AuthenticationError:
        record_auth_failure(services.auth_failure_limiter, client, services.settings)
        raise
    check_rate_limit(services.rate_limiter, principal.key_id, services.settings)
    return principal


CurrentPrincipal = Annotated[Principal, Depends(authenticate_request)]


async def require_admin(principal: CurrentPrincipal) -> Principal:
    """The caller, who must hold an admin key; 403 otherwise."""
    if not principal.is_admin:
        raise PermissionDeniedError("this route needs an admin API key", code="admin_key_required")
    return principal


AdminPrincipal = Annotated[Principal, Depends(require_admin)]
