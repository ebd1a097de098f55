"""Pure ASGI middleware (streamed upload bodies pass through untouched): request ids and the
refusal of NUL characters."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any
from urllib.parse import parse_qsl

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_response

_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


class RequestIdMiddleware:
    """Gives every request an id of the server's own, stored on its audit rows and echoed as
    ``X-Request-ID``. A client's own sane ``X-Request-ID`` is echoed back as
    ``X-Client-Request-ID`` and logged beside ours, never used as ours: audit correlation
    cannot be forged."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        supplied = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        client_id = supplied if _CLIENT_REQUEST_ID.fullmatch(supplied) else None
        request_id = f"req_{uuid.uuid4().hex}"
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["client_request_id"] = client_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["X-Request-ID"] = request_id
                if client_id is not None:
                    headers["X-Client-Request-ID"] = client_id
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


def _replaying(body: bytes, receive: Receive) -> Receive:
    """A receive callable that hands the app ``body`` once, then defers to ``receive``."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


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
    return body, _replaying(body, receive)


_MULTIPART_TYPE = b"multipart/form-data"
MAX_JSON_DEPTH = 64


class _BodyProblem(Exception):
    def __init__(self, status: int, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.param = status, code, message, param


def _object_without_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise _BodyProblem(
                400,
                "duplicate_parameter",
                f"{key[:64]}: the member appears more than once in the JSON object; send it once",
                key[:64],
            )
        seen[key] = value
    return seen


def _json_depth(value: Any) -> int:
    """How deeply objects and arrays nest in ``value`` (iteratively: no recursion limit)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return deepest


class RequestBodyGuard:
    """One cap on every request body but the streamed multipart upload, and JSON that means
    one thing.

    - A body over ``max_bytes`` is refused with 413 ``request_too_large``: at once when its
      Content-Length says so, else as soon as the streamed bytes pass the cap. Nothing reads a
      large body whole, and the 413 comes before authentication.
    - A JSON body whose object repeats a member (``{"n_epochs": 1, "n_epochs": 3}``) is refused
      with 400 ``duplicate_parameter`` naming it (the parser would silently keep the last), and
      one nested deeper than ``MAX_JSON_DEPTH`` with 400 ``invalid_json``.
    The body is then replayed to the app unchanged.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") in {"GET", "HEAD", "OPTIONS"}:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        content_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if content_type == _MULTIPART_TYPE:  # the upload route streams and caps it itself
            await self.app(scope, receive, send)
            return
        try:
            declared = headers.get(b"content-length", b"")
            if declared.isdigit() and int(declared) > self.max_bytes:
                raise self._too_large()
            body, receive = await self._read(receive)
            if content_type == b"application/json" or content_type.endswith(b"+json"):
                self._check_json(body)
        except _BodyProblem as problem:
            response = error_response(
                problem.status, message=problem.message, code=problem.code, param=problem.param
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _too_large(self) -> _BodyProblem:
        return _BodyProblem(
            413,
            "request_too_large",
            f"the request body is larger than the {self.max_bytes}-byte limit "
            "(uploads go to POST /v1/files as multipart/form-data)",
        )

    async def _read(self, receive: Receive) -> tuple[bytes, Receive]:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                raise self._too_large()
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        return body, _replaying(body, receive)

    @staticmethod
    def _check_json(body: bytes) -> None:
        try:
            value = json.loads(body, object_pairs_hook=_object_without_repeated_keys)
        except RecursionError:
            value = None
            depth = MAX_JSON_DEPTH + 1
        except ValueError:
            return  # not JSON at all: the route's own validation answers invalid_json
        else:
            depth = _json_depth(value)
        if depth > MAX_JSON_DEPTH:
            raise _BodyProblem(
                400,
                "invalid_json",
                f"the JSON body nests objects and arrays more than {MAX_JSON_DEPTH} deep",
            )
