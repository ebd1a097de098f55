"""The FastAPI application factory.

``create_app(settings)`` builds an app around one engine, storage folder and task publisher;
``app`` is the instance uvicorn serves (``uvicorn api.app:app``), configured from ``BDS_*``
environment variables. Nothing here touches the database until the first request, and the
schema is never created here: ``bds migrate`` (Alembic) does that.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api.deps import AppServices
from api.errors import install_error_handlers
from api.middleware import RejectNulMiddleware, RequestBodyGuard, RequestIdMiddleware
from api.pages import install_pages
from api.publisher import CeleryPublisher
from api.ratelimit import build_auth_failure_limiter, build_rate_limiter
from api.routers import admin, files, fine_tuning, health, inference, models
from bds_service.db import make_engine, make_read_session_factory, make_session_factory
from bds_service.inference.client import InferenceClient
from bds_service.settings import Settings, get_settings
from bds_service.storage import LocalStorage
from bds_service.tasks import TaskSender
from bds_service.tenants.key_cache import KeyCache

POOL_RECYCLE_S = 1800


def create_app(settings: Settings | None = None, publisher: TaskSender | None = None) -> FastAPI:
    """An API app; ``publisher`` defaults to a Celery client on the settings' broker."""
    settings = settings or get_settings()
    # No ping per checkout (a round trip per request): connections are renewed after
    # POOL_RECYCLE_S, and one lost with a database restart fails its request with a 503
    # (api.errors) and invalidates the pool, so the next request connects afresh.
    engine = make_engine(
        settings.resolved_database_url, pool_pre_ping=False, pool_recycle=POOL_RECYCLE_S
    )
    celery_publisher = CeleryPublisher(settings) if publisher is None else None
    services = AppServices(
        settings=settings,
        engine=engine,
        session_factory=make_session_factory(engine),
        read_session_factory=make_read_session_factory(engine),
        storage=LocalStorage(settings.resolved_storage_dir),
        publisher=publisher or celery_publisher,  # type: ignore[arg-type]
        rate_limiter=build_rate_limiter(settings),
        auth_failure_limiter=build_auth_failure_limiter(settings),
        inference=InferenceClient(settings),
        key_cache=KeyCache(settings.api_key_cache_seconds)
        if settings.api_key_cache_seconds > 0
        else None,
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        if services.inference is not None:
            await services.inference.aclose()
        if celery_publisher is not None:
            celery_publisher.close()
        engine.dispose()

    app = FastAPI(
        title="BDS fine-tuning service",
        version="1.0.0",
        description="OpenAI-shaped fine-tuning API with the Bayesian Data Scheduler defence: "
        "per-dataset safety reports and safety-weighted LoRA fine-tuning.",
        lifespan=lifespan,
    )
    app.state.services = services
    app.add_middleware(RejectNulMiddleware)
    app.add_middleware(RequestBodyGuard, max_bytes=settings.max_request_body_bytes)
    app.add_middleware(RequestIdMiddleware)  # outermost: every answer carries the id
    install_error_handlers(app)
    for router in (health.router, files.router, fine_tuning.router, models.router, admin.router):
        app.include_router(router)
    app.include_router(inference.router)
    install_pages(app)
    return app


def __getattr__(name: str) -> FastAPI:
    # `app` is built on first access, so importing this module (tests, tools) needs no
    # environment; `uvicorn api.app:app` accesses it and gets an app from BDS_* settings.
    if name == "app":
        application = create_app()
        globals()["app"] = application
        return application
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
