"""Browser logins: an API key presented once on a login page becomes a session cookie.

The cookie carries a random token; the database keeps only its HMAC under the server secret,
so neither the cookie nor a leaked database reveals an API key. A session is refused as soon as
it ends (logout) or expires, or its key is revoked or expires, or its tenant is disabled:
every request re-checks all of them in one query. Forms posted with a session carry a CSRF
token derived from the session token, so another site cannot make a logged-in browser act.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from bds_service import audit
from bds_service.audit import Actor
from bds_service.ids import new_id
from bds_service.models import ApiKey, Tenant, WebSession, utcnow
from bds_service.tenants.service import Principal

WEB_SESSION_PREFIX = "wsess-"
SESSION_LIFETIME = dt.timedelta(hours=8)
_TOKEN_BYTES = 32


@dataclass(frozen=True)
class StartedSession:
    """A new login: its row and the token for the cookie (never stored in plain text)."""

    web_session: WebSession
    token: str


@dataclass(frozen=True)
class WebLogin:
    """A live session and the key's principal it acts as."""

    session_id: str
    principal: Principal


def _digest(secret: str, purpose: str, token: str) -> str:
    message = f"{purpose}:{token}".encode()
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def hash_session_token(token: str, secret: str) -> str:
    """The stored form of a session token."""
    return _digest(secret, "web-session", token)


def csrf_token(token: str, secret: str) -> str:
    """The CSRF token of the session whose cookie holds ``token``."""
    return _digest(secret, "csrf", token)


def check_csrf_token(token: str, secret: str, presented: str | None) -> bool:
    """Whether ``presented`` is the CSRF token of the session ``token`` (constant time)."""
    return bool(presented) and hmac.compare_digest(csrf_token(token, secret), presented or "")


def start_session(
    session: Session, principal: Principal, *, secret: str, actor: Actor
) -> StartedSession:
    """Open a browser session for an authenticated key; audited as ``web_session.create``."""
    token = secrets.token_urlsafe(_TOKEN_BYTES)
    now = utcnow()
    row = WebSession(
        id=new_id(WEB_SESSION_PREFIX),
        token_hash=hash_session_token(token, secret),
        api_key_id=principal.key_id,
        tenant_id=principal.tenant_id,
        created_at=now,
        expires_at=now + SESSION_LIFETIME,
    )
    session.add(row)
    session.flush()
    audit.record(
        session,
        actor,
        "web_session.create",
        target_type="web_session",
        target_id=row.id,
        tenant_id=principal.tenant_id,
        details={"admin": principal.is_admin, "expires_at": row.expires_at.isoformat()},
    )
    return StartedSession(web_session=row, token=token)


def resolve_session(session: Session, token: str, *, secret: str) -> WebLogin | None:
    """The live session behind a cookie token, or None (unknown, ended, expired, revoked)."""
    if not token or len(token) > 128:
        return None
    now = utcnow()
    statement = (
        select(WebSession.id, ApiKey, Tenant)
        .join(ApiKey, ApiKey.id == WebSession.api_key_id)
        .join(Tenant, Tenant.id == ApiKey.tenant_id)
        .where(
            WebSession.token_hash == hash_session_token(token, secret),
            WebSession.ended_at.is_(None),
            WebSession.expires_at > now,
            ApiKey.revoked_at.is_(None),
            or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > now),
            Tenant.disabled_at.is_(None),
        )
    )
    row = session.execute(statement).one_or_none()
    if row is None:
        return None
    session_id, api_key, tenant = row
    principal = Principal(
        tenant_id=tenant.id, tenant_name=tenant.name, key_id=api_key.id, is_admin=api_key.is_admin
    )
    return WebLogin(session_id=session_id, principal=principal)


def end_session(session: Session, session_id: str, actor: Actor) -> bool:
    """End a session (logout); True if it was live. Audited as ``web_session.end``."""
    result = session.execute(
        update(WebSession)
        .where(WebSession.id == session_id, WebSession.ended_at.is_(None))
        .values(ended_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    ended = bool(getattr(result, "rowcount", 0))
    if ended:
        audit.record(
            session, actor, "web_session.end", target_type="web_session", target_id=session_id
        )
    return ended
