"""Shapes shared by every resource: cursor-paginated lists and error bodies."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Generic, Literal, Protocol, TypeVar

from fastapi import Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

ItemT = TypeVar("ItemT")


def nul_location(value: Any, where: str = "") -> str | None:
    """Where the first NUL character sits in a JSON-like value ("" for the value itself,
    ``key`` or ``[2].key`` inside it), or None when there is none."""
    if isinstance(value, str):
        return where if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            inner = f"{where}.{key}" if where else str(key)
            if isinstance(key, str) and "\x00" in key:
                return inner.replace("\x00", "\\x00")
            found = nul_location(item, inner)
            if found is not None:
                return found
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = nul_location(item, f"{where}[{index}]")
            if found is not None:
                return found
    return None


class RequestModel(BaseModel):
    """Base of every JSON request body: unknown members, NaN/inf and NUL characters refused.

    U+0000 cannot be stored in PostgreSQL text; it is refused here with the field named
    rather than failing later inside a query.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_nul_characters(cls, value: Any) -> Any:
        where = nul_location(value)
        if where is not None:
            inside = f" (at {where})" if where else ""
            raise ValueError(f"text must not contain NUL characters (\\u0000){inside}")
        return value


class ListResponse(BaseModel, Generic[ItemT]):
    """A page of objects; pass the last id as ``after`` to get the next page."""

    object: Literal["list"] = "list"
    data: list[ItemT]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None


class Identified(Protocol):
    """An API object with a string ``id``."""

    @property
    def id(self) -> str: ...


IdentifiedT = TypeVar("IdentifiedT", bound=Identified)


def list_response(
    data: Sequence[IdentifiedT], *, has_more: bool = False
) -> ListResponse[IdentifiedT]:
    """The list envelope of a page of ``data``, with its first and last ids as cursors."""
    items = list(data)
    return ListResponse(
        data=items,
        has_more=has_more,
        first_id=items[0].id if items else None,
        last_id=items[-1].id if items else None,
    )


def json_response(model: BaseModel, headers: Mapping[str, str] | None = None) -> Response:
    """``model`` as the JSON response, serialised once, for the busiest routes.

    The route still declares the model as ``response_model`` (its OpenAPI schema). Returning
    the model itself would make FastAPI validate it again, for a sync route on a worker
    thread, before serialising it exactly like this (pydantic's JSON, by alias).
    """
    return Response(
        model.model_dump_json(by_alias=True), media_type="application/json", headers=headers
    )


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
        413: "request body over the cap (BDS_MAX_REQUEST_BODY_BYTES; uploads: the file cap)",
        429: "rate limit, failed-authentication limit or a per-tenant cap reached "
        "(Retry-After says when to retry)",
        503: "the database is unavailable for the moment (Retry-After says when to retry)",
    }.items()
}

Limit = Field(default=20, ge=1, le=100, description="objects per page (1-100)")
