"""Domain errors. Each carries the HTTP status it maps to, a stable code and the offending param.

The API turns them into ``{"error": {"code", "message", "param", "type"}}`` bodies; the worker
stores ``code`` and ``message`` on a failed job. Messages are written for the person who has to
fix the problem: they say what was wrong and, where it helps, what is allowed.
"""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """Base class: a request the service refuses, with everything an error body needs."""

    status_code = 400
    error_type = "invalid_request_error"

    def __init__(
        self,
        message: str,
        *,
        code: str,
        param: str | None = None,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param
        # Extra members of the error body, e.g. the line and field of a bad upload.
        self.details: dict[str, Any] = dict(details or {})
        # Extra HTTP response headers, e.g. Retry-After on a 429.
        self.headers: dict[str, str] = dict(headers or {})


class InvalidRequestError(ServiceError):
    """The request is malformed or names something unusable (400)."""


class AuthenticationError(ServiceError):
    """No valid API key (401)."""

    status_code = 401
    error_type = "authentication_error"


class PermissionDeniedError(ServiceError):
    """The key is valid but may not do this (403)."""

    status_code = 403
    error_type = "permission_error"


class NotFoundError(ServiceError):
    """No such object for this tenant (404); a foreign tenant's id looks exactly the same."""

    status_code = 404


class ConflictError(ServiceError):
    """The object is in a state that forbids the action (409)."""

    status_code = 409


class PayloadTooLargeError(ServiceError):
    """The upload is over the size cap (413)."""

    status_code = 413


class UnprocessableError(ServiceError):
    """Well-formed but contradicts an earlier request, e.g. a reused Idempotency-Key (422)."""

    status_code = 422


class LimitExceededError(ServiceError):
    """A rate limit or a per-tenant cap is reached (429); retrying later may succeed."""

    status_code = 429
    error_type = "rate_limit_error"
