"""Logging in to the pages: an API key typed once becomes a session cookie.

- ``POST /login`` checks the key and opens a web session; the cookie holds only the session's
  random token (``Secure``, ``HttpOnly``, ``SameSite=Strict``), never the key. The login form
  itself carries a double-submit token, so another site cannot log a browser in.
- Failed logins count toward the client address's allowance of failed authentications, shared
  with API keys (``api.ratelimit``); an address that has used it up gets the login page back
  with a 429 and the wait, before its key is even checked.
- ``POST /logout`` ends the session in the database, so a copied cookie stops working too.
- Pages accept the cookie or an ``Authorization: Bearer`` key (scripts, curl). Forms posted
  with the cookie must carry the session's CSRF token; a Bearer request needs none, since a
  browser never adds that header on its own.
- Admin pages need an admin key; a customer's key gets a 403 page and nothing is audited.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse, Response

from api.deps import DbSession, RequestId, Services, authenticate_bearer, client_address
from api.pages.routing import LoginRequired, PageRoute
from api.pages.templating import templates
from api.ratelimit import check_auth_failures, record_auth_failure
from bds_service.audit import Actor
from bds_service.errors import AuthenticationError, LimitExceededError, PermissionDeniedError
from bds_service.tenants import web_sessions
from bds_service.tenants.service import Principal, authenticate

SESSION_COOKIE = "bds_session"
LOGIN_CSRF_COOKIE = "bds_login_csrf"
MAX_KEY_CHARS = 200


@dataclass(frozen=True)
class PageCaller:
    """Who is looking at a page, and how they proved it."""

    principal: Principal
    session_id: str | None = None
    csrf_token: str | None = None

    @property
    def is_admin(self) -> bool:
        """Whether the caller holds an admin key."""
        return self.principal.is_admin

    def actor(self, request_id: str | None, tenant_id: str | None = None) -> Actor:
        """The caller as the actor of an audit row; ``tenant_id`` names the customer whose
        data an admin acts on (the key's own tenant otherwise)."""
        actor = self.principal.actor(request_id)
        return (
            actor
            if tenant_id is None
            else Actor(actor.actor_type, actor.actor_id, tenant_id, actor.request_id)
        )


def _secret(services: Services) -> str:
    return services.settings.api_key_secret.get_secret_value()


def optional_caller(request: Request, services: Services) -> PageCaller | None:
    """The caller behind a Bearer header or a live session cookie, or None."""
    caller = _identify(request, services)
    # Kept for error pages, which show the same navigation (and logout) as the page would.
    request.state.page_caller = caller
    return caller


def _identify(request: Request, services: Services) -> PageCaller | None:
    if request.headers.get("authorization"):
        return PageCaller(principal=authenticate_bearer(request, services))
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return None
    secret = _secret(services)
    with services.session_factory() as session:
        login = web_sessions.resolve_session(session, token, secret=secret)
    if login is None:
        return None
    return PageCaller(
        principal=login.principal,
        session_id=login.session_id,
        csrf_token=web_sessions.csrf_token(token, secret),
    )


def require_caller(caller: Annotated[PageCaller | None, Depends(optional_caller)]) -> PageCaller:
    """The caller; without a login the page redirects to the login form."""
    if caller is None:
        raise LoginRequired
    return caller


def require_admin(caller: Annotated[PageCaller, Depends(require_caller)]) -> PageCaller:
    """The caller, who must hold an admin key (403 page otherwise)."""
    if not caller.is_admin:
        raise PermissionDeniedError(
            "the dashboard is for the provider's operators and needs an admin key; "
            "your reports are under /reports",
            code="admin_key_required",
        )
    return caller


Caller = Annotated[PageCaller, Depends(require_caller)]
AdminCaller = Annotated[PageCaller, Depends(require_admin)]
CsrfField = Annotated[str, Form(max_length=128)]


def check_csrf(caller: PageCaller, presented: str) -> None:
    """Refuse a form posted with the session cookie but without the session's CSRF token."""
    if caller.csrf_token is None:
        return  # a Bearer request: no browser sends that header cross-site
    if not secrets.compare_digest(caller.csrf_token, presented or ""):
        raise PermissionDeniedError(
            "the form's security token is missing or out of date; reload the page and retry",
            code="csrf_token_invalid",
        )


def _safe_next(target: str | None, default: str) -> str:
    # Only paths on this site: "//host" or "/\host" would leave it.
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return default
    return target


def _set_cookie(response: Response, name: str, value: str, max_age: int, path: str) -> None:
    response.set_cookie(
        name, value, max_age=max_age, path=path, secure=True, httponly=True, samesite="strict"
    )


router = APIRouter(route_class=PageRoute, include_in_schema=False)


def _login_page(request: Request, next_path: str, error: str | None, status_code: int) -> Response:
    login_csrf = secrets.token_urlsafe(24)
    response = templates.TemplateResponse(
        request,
        "login.html",
        {"caller": None, "next": next_path, "error": error, "login_csrf": login_csrf},
        status_code=status_code,
    )
    _set_cookie(response, LOGIN_CSRF_COOKIE, login_csrf, max_age=3600, path="/login")
    return response


@router.get("/login")
def login_form(request: Request, next: str | None = None) -> Response:
    """The login form: paste an API key (admin keys open the dashboard)."""
    return _login_page(request, _safe_next(next, ""), None, 200)


@router.post("/login")
def login(
    request: Request,
    session: DbSession,
    services: Services,
    request_id: RequestId,
    api_key: Annotated[str, Form(max_length=MAX_KEY_CHARS)] = "",
    next: Annotated[str, Form(max_length=2000)] = "",
    login_csrf: Annotated[str, Form(max_length=128)] = "",
) -> Response:
    """Check the key and open a session; the cookie carries a session token, not the key."""
    expected = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not expected or not secrets.compare_digest(expected, login_csrf):
        return _login_page(
            request, _safe_next(next, ""), "The login form expired; please try again.", 400
        )
    client = client_address(request)
    try:
        check_auth_failures(services.auth_failure_limiter, client, services.settings)
    except LimitExceededError as error:
        response = _login_page(request, _safe_next(next, ""), error.message, 429)
        response.headers.update(error.headers)
        return response
    try:
        principal = authenticate(session, api_key.strip(), secret=_secret(services))
    except AuthenticationError as error:
        record_auth_failure(services.auth_failure_limiter, client, services.settings)
        return _login_page(request, _safe_next(next, ""), error.message, 401)
    started = web_sessions.start_session(
        session, principal, secret=_secret(services), actor=principal.actor(request_id)
    )
    home = "/admin" if principal.is_admin else "/reports"
    response = RedirectResponse(_safe_next(next, home), status_code=303)
    lifetime = int(web_sessions.SESSION_LIFETIME.total_seconds())
    _set_cookie(response, SESSION_COOKIE, started.token, max_age=lifetime, path="/")
    response.delete_cookie(
        LOGIN_CSRF_COOKIE, path="/login", secure=True, httponly=True, samesite="strict"
    )
    return response


@router.post("/logout")
def logout(
    session: DbSession,
    request_id: RequestId,
    caller: Annotated[PageCaller | None, Depends(optional_caller)],
    csrf_token: CsrfField = "",
) -> Response:
    """End the session (in the database too) and drop the cookie."""
    if caller is not None and caller.session_id is not None:
        check_csrf(caller, csrf_token)
        web_sessions.end_session(session, caller.session_id, caller.actor(request_id))
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/", secure=True, httponly=True, samesite="strict")
    return response
