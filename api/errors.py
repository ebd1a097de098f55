"""Error bodies: every failure answers ``{"error": {"message", "type", "param", "code"}}``.

Domain errors carry their own status; request validation becomes a 400 naming the parameter;
unknown routes a 404; anything unexpected a 500 without internals (logged with the request id).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.refusals import record_refusal
from bds_service.errors import ServiceError

logger = logging.getLogger(__name__)

_STATUS_CODES = {
    400: ("invalid_request_error", "invalid_request"),
    401: ("authentication_error", "unauthorized"),
    403: ("permission_error", "forbidden"),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    409: ("invalid_request_error", "conflict"),
    413: ("invalid_request_error", "request_too_large"),
    415: ("invalid_request_error", "unsupported_media_type"),
    422: ("invalid_request_error", "unprocessable"),
    429: ("rate_limit_error", "rate_limited"),
}


def error_response(
    status_code: int,
    *,
    message: str,
    code: str,
    param: str | None = None,
    error_type: str = "invalid_request_error",
    extra: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """A JSON error in the OpenAI shape (``extra`` adds members such as line and field)."""
    body: dict[str, Any] = {"message": message, "type": error_type, "param": param, "code": code}
    body.update(extra or {})
    return JSONResponse({"error": body}, status_code=status_code, headers=headers)


def _validation_code(error_type: str) -> str:
    if error_type == "missing":
        return "missing_required_parameter"
    if error_type == "extra_forbidden":
        return "unknown_parameter"
    if error_type in {"json_invalid", "json_type"}:
        return "invalid_json"
    return "invalid_value"


async def _service_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, ServiceError)
    await run_in_threadpool(record_refusal, request, error)
    headers = dict(error.headers)
    if error.status_code == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return error_response(
        error.status_code,
        message=error.message,
        code=error.code,
        param=error.param,
        error_type=error.error_type,
        extra=error.details,
        headers=headers or None,
    )


_LOCATION_KINDS = {"body", "query", "header", "path", "cookie"}
_UNION_TAG = re.compile(r"^(int|float|str|bool|none|constrained-[a-z]+|[a-z-]+\[.*\])$")


def _param_of(location: tuple[Any, ...]) -> str | None:
    """Dotted parameter name of a pydantic error location, without union-branch tags."""
    parts = [
        str(part)
        for index, part in enumerate(location)
        if not (index == 0 and part in _LOCATION_KINDS)
        and not (isinstance(part, str) and _UNION_TAG.fullmatch(part))
    ]
    return ".".join(parts) or None


async def _request_validation_error(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    # In a union ("auto" or an int) every branch reports; the literal branch is the least
    # helpful ("should be 'auto'"), so prefer the others.
    problems = sorted(error.errors(), key=lambda problem: problem.get("type") == "literal_error")
    first = problems[0] if problems else {"loc": (), "msg": "invalid request", "type": ""}
    param = _param_of(tuple(first.get("loc", ())))
    message = f"{param}: {first.get('msg')}" if param else str(first.get("msg"))
    others = {_param_of(tuple(problem.get("loc", ()))) for problem in problems[1:]} - {param}
    if others:
        message += f" (and {len(others)} more problem(s))"
    return error_response(
        400, message=message, code=_validation_code(str(first.get("type", ""))), param=param
    )


async def _http_error(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, StarletteHTTPException)
    error_type, code = _STATUS_CODES.get(error.status_code, ("invalid_request_error", "error"))
    message = str(error.detail) if error.detail else code
    return error_response(
        error.status_code,
        message=message,
        code=code,
        error_type=error_type,
        headers=dict(error.headers) if error.headers else None,
    )


async def _unexpected_error(request: Request, error: Exception) -> JSONResponse:
    request_id = getattr(request.state, "request_id", None)
    logger.exception("unhandled error in request %s", request_id, exc_info=error)
    return error_response(
        500,
        message=f"internal error; quote request id {request_id} when reporting it",
        code="internal_error",
        error_type="server_error",
    )


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that give every error the OpenAI shape."""
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _request_validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
