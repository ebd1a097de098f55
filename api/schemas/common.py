"""Shapes shared by every resource: cursor-paginated lists and error bodies."""

from __future__ import annotations

from typing import Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

ItemT = TypeVar("ItemT")


class ListResponse(BaseModel, Generic[ItemT]):
    """A page of objects; pass the last id as ``after`` to get the next page."""

    object: Literal["list"] = "list"
    data: list[ItemT]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None


class ErrorDetail(BaseModel):
    """What went wrong, for whom to fix: ``param`` names the offending field."""

    model_config = ConfigDict(extra="allow")

    message: str
    type: str
    param: str | None = None
    code: str


class ErrorResponse(BaseModel):
    """Every non-2xx response body."""

    error: ErrorDetail


ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in {
        400: "invalid request",
        401: "missing or invalid API key",
        404: "no such object for this tenant",
        429: "rate limit or a per-tenant cap reached (Retry-After says when to retry a rate limit)",
    }.items()
}

Limit = Field(default=20, ge=1, le=100, description="objects per page (1-100)")
