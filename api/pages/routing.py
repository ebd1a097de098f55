"""Page routes: errors become HTML pages, a missing login a redirect, and every response gets
headers that keep the pages to their own origin and out of caches."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import quote

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool

from api.pages.templating import templates
from api.refusals import record_refusal
from bds_service.errors import ServiceError

# Everything comes from this origin: the stylesheet, the one small script and the plots.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self'; style-src 'self'; script-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class LoginRequired(Exception):
    """The page needs a logged-in browser (or a Bearer key) and the request has neither."""


def login_url(request: Request) -> str:
    """The login page, asked to come back to this page afterwards."""
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return f"/login?next={quote(target, safe='/')}"


def error_page(request: Request, status_code: int, title: str, message: str) -> Response:
    """An HTML error page (with the caller's navigation when the caller is known)."""
    caller = getattr(request.state, "page_caller", None)
    context = {
        "title": title,
        "message": message,
        "status_code": status_code,
        "caller": caller,
        "csrf": (caller.csrf_token if caller is not None else None) or "",
    }
    return templates.TemplateResponse(request, "error.html", context, status_code=status_code)


_TITLES = {
    400: "Bad request",
    401: "Not logged in",
    403: "Not allowed",
    404: "Not found",
    409: "Not possible now",
    422: "Not possible",
    429: "Too many requests",
}


def _validation_message(error: RequestValidationError) -> str:
    problems = []
    for problem in error.errors()[:3]:
        location = ".".join(str(part) for part in problem.get("loc", ())[1:])
        problems.append(f"{location}: {problem.get('msg')}" if location else str(problem["msg"]))
    return "; ".join(problems) or "the request is not valid"


class PageRoute(APIRoute):
    """An APIRoute for HTML pages (see the module docstring)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def page_handler(request: Request) -> Response:
            try:
                response = await handler(request)
            except LoginRequired:
                response = RedirectResponse(login_url(request), status_code=303)
            except ServiceError as error:
                await run_in_threadpool(record_refusal, request, error)
                title = _TITLES.get(error.status_code, "Error")
                response = error_page(request, error.status_code, title, error.message)
                response.headers.update(error.headers)  # e.g. Retry-After on a 429
            except RequestValidationError as error:
                response = error_page(request, 400, _TITLES[400], _validation_message(error))
            for name, value in SECURITY_HEADERS.items():
                response.headers.setdefault(name, value)
            return response

        return page_handler
