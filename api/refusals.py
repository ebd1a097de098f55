"""Refused state-changing requests an operator needs to see, in the audit log.

A refused request changes nothing, so its own transaction (rolled back) cannot carry an audit
row; the row is written in a transaction of its own after the refusal. Audited: POST, PUT,
PATCH and DELETE requests of a known caller (API key or dashboard login) refused because of
a permission or a provider's decision (403, e.g. a job on a blocked file), the state of what
they act on (409, e.g. cancelling a finished job) or a cap (429, e.g. too many unfinished
jobs). Not audited: malformed input and unknown ids (400, 404, 413, 422: nothing was
attempted on anyone's data, and the bad-input promises say such requests leave no row),
unauthenticated requests, and throttling (the rate and failed-authentication limits and the
brief lock wait), whose whole point is to cost the service nothing per request.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import Request
from sqlalchemy.exc import SQLAlchemyError

from bds_service import audit
from bds_service.audit import Actor
from bds_service.errors import ServiceError
from bds_service.tenants.service import Principal

logger = logging.getLogger(__name__)

STATE_CHANGING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
AUDITED_STATUSES = frozenset({403, 409, 429})
THROTTLE_CODES = frozenset(
    {"rate_limit_exceeded", "too_many_failed_authentications", "too_many_concurrent_requests"}
)
MAX_MESSAGE_CHARS = 500

# (method, route path) -> audit action; other routes are recorded as "request.refused".
REFUSED_ACTIONS = {
    ("POST", "/v1/files"): "file.create.refused",
    ("DELETE", "/v1/files/{file_id}"): "file.delete.refused",
    ("POST", "/v1/fine_tuning/jobs"): "fine_tuning_job.create.refused",
    ("POST", "/v1/fine_tuning/jobs/{fine_tuning_job_id}/cancel"): "fine_tuning_job.cancel.refused",
    ("POST", "/admin/jobs/{job_id}/cancel"): "fine_tuning_job.cancel.refused",
}
# Path parameter -> the target type it names, most specific first.
_TARGETS = (
    ("key_id", "api_key"),
    ("fine_tuning_job_id", "fine_tuning_job"),
    ("job_id", "fine_tuning_job"),
    ("file_id", "file"),
    ("tenant_id", "tenant"),
)


def is_audited_refusal(method: str, error: ServiceError) -> bool:
    """Whether a request refused with ``error`` gets an audit row."""
    return (
        method in STATE_CHANGING_METHODS
        and error.status_code in AUDITED_STATUSES
        and error.code not in THROTTLE_CODES
    )


def _actor(request: Request) -> Actor | None:
    """The authenticated caller: an API key (``/v1``) or a page's logged-in caller."""
    principal = getattr(request.state, "principal", None)
    if principal is None:
        principal = getattr(getattr(request.state, "page_caller", None), "principal", None)
    if not isinstance(principal, Principal):
        return None
    return principal.actor(getattr(request.state, "request_id", None))


def record_refusal(request: Request, error: ServiceError) -> None:
    """Write the audit row of a refused request, if it is one an operator needs to see.

    Never raises: a refusal must reach the client even when the database cannot take the
    row (that failure is logged).
    """
    if not is_audited_refusal(request.method, error):
        return
    actor = _actor(request)
    if actor is None:
        return
    route = request.scope.get("route")
    route_path = getattr(route, "path", request.url.path)
    action = REFUSED_ACTIONS.get((request.method, route_path), "request.refused")
    target_type, target_id = "request", None
    params: dict[str, Any] = request.path_params
    for name, kind in _TARGETS:
        if name in params:
            target_type, target_id = kind, str(params[name])[:64]
            break
    details = {
        "method": request.method,
        "path": request.url.path[:300],
        "status": error.status_code,
        "code": error.code,
        "param": error.param,
        "message": error.message[:MAX_MESSAGE_CHARS],
    }
    try:
        with request.app.state.services.session_factory() as session:
            audit.record(
                session,
                actor,
                action,
                target_type=target_type,
                target_id=target_id,
                details=details,
            )
            session.commit()
    except SQLAlchemyError:
        logger.exception("could not audit the refused request %s", actor.request_id)
