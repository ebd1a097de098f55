"""Liveness and readiness probes (no authentication)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from api.deps import Services

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


def _schema_is_current(services: Services) -> tuple[bool, str]:
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from bds_service.db import alembic_config

    heads = set(
        ScriptDirectory.from_config(
            alembic_config(services.settings.resolved_database_url)
        ).get_heads()
    )
    with services.engine.connect() as connection:
        connection.execute(text("SELECT 1"))
        current = set(MigrationContext.configure(connection).get_current_heads())
    if current != heads:
        return False, f"schema at {sorted(current) or 'nothing'}, code expects {sorted(heads)}"
    return True, "ok"


def _broker_reachable(services: Services) -> tuple[bool, str]:
    from kombu import Connection

    with Connection(services.settings.resolved_broker_url, connect_timeout=2) as connection:
        connection.ensure_connection(max_retries=1, timeout=2)
    return True, "ok"


@router.get("/readyz", responses={503: {"description": "a dependency is not ready"}})
def readyz(services: Services) -> JSONResponse:
    """Ready to serve: the database answers with the current schema and the broker is up."""
    checks: dict[str, Any] = {}
    for name, check in (("database", _schema_is_current), ("broker", _broker_reachable)):
        try:
            ok, detail = check(services)
        except Exception as error:
            # Unauthenticated route: name the failure, not hosts or credentials.
            ok, detail = False, type(error).__name__
        checks[name] = {"ok": ok, "detail": detail}
    ready = all(check["ok"] for check in checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "not_ready", "checks": checks},
        status_code=200 if ready else 503,
    )
