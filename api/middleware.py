"""Pure ASGI middleware (streamed upload bodies pass through untouched): request ids and the
refusal of NUL characters."""

from __future__ import annotations

import re
import uuid
from urllib.parse import parse_qsl

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_response

_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


class RequestIdMiddleware:
    """Takes a sane client ``X-Request-ID`` or makes one; echoes it on the response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        supplied = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = (
            supplied if _CLIENT_REQUEST_ID.fullmatch(supplied) else f"req_{uuid.uuid4().hex}"
        )
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)["X-Request-ID"] = request_id
            await send(message)

        await self.app(scope, receive, send_with_id)


_FORM_TYPE = b"application/x-www-form-urlencoded"
_MAX_FORM_BYTES = 1 << 20


def _nul_field(pairs: list[tuple[str, str]]) -> str | None:
    """The name of the first pair whose name or value holds a NUL character, else None."""
    for name, value in pairs:
        if "\x00" in name or "\x00" in value:
            return name.replace("\x00", "\\x00")[:64]
    return None


class RejectNulMiddleware:
    """Refuses NUL characters in the path, the query string and urlencoded forms with a 400.

    No stored text may hold U+0000 (PostgreSQL's text type cannot); refusing it at the edge
    names the parameter, where the database would only fail later, deep in a query. JSON
    bodies are checked by the request models (``api.schemas.common.RequestModel``); multipart
    uploads by the file validator.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        problem: str | None = None
        if "\x00" in scope.get("path", ""):
            problem = "path"
        else:
            query = scope.get("query_string", b"").decode("latin-1")
            name = _nul_field(parse_qsl(query, keep_blank_values=True))
            if name is not None:
                problem = name
        content_type = dict(scope["headers"]).get(b"content-type", b"").split(b";")[0].strip()
        if problem is None and content_type.lower() == _FORM_TYPE:
            body, receive = await _buffer_body(receive)
            if len(body) <= _MAX_FORM_BYTES:
                name = _nul_field(parse_qsl(body.decode("latin-1"), keep_blank_values=True))
                if name is not None:
                    problem = name
        if problem is None:
            await self.app(scope, receive, send)
            return
        response = error_response(
            400,
            message=f"{problem}: text must not contain NUL characters (\\u0000)",
            code="invalid_value",
            param=problem,
        )
        await response(scope, receive, send)


async def _buffer_body(receive: Receive) -> tuple[bytes, Receive]:
    """Read a request body whole and give back a receive callable that replays it."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        chunks.append(chunk)
        if not message.get("more_body", False) or size > _MAX_FORM_BYTES:
            break
    body = b"".join(chunks)
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return body, replay
