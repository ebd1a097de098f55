"""The in-process cache of authenticated keys: entries last their lifetime, never past the
key's own expiry, and revoking a key in this process drops them at once."""

from __future__ import annotations

import datetime as dt

from sqlalchemy.orm import Session

from bds_service.audit import Actor
from bds_service.models import utcnow
from bds_service.tenants import service
from bds_service.tenants.key_cache import KeyCache

SECRET = "test-secret-0123456789abcdef0123"
CLI = Actor("cli", "tests")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_cached_key_is_reused_until_its_lifetime_ends(session: Session) -> None:
    tenant = service.create_tenant(session, "acme", CLI)
    issued = service.create_api_key(session, tenant, secret=SECRET, actor=CLI)
    session.commit()
    clock = FakeClock()
    cache = KeyCache(5.0, clock=clock)
    first = service.authenticate(session, issued.plaintext, secret=SECRET, cache=cache)
    assert service.cached_principal(cache, issued.plaintext, secret=SECRET) == first
    clock.now += 4.9
    assert service.cached_principal(cache, issued.plaintext, secret=SECRET) == first
    clock.now += 0.2
    assert service.cached_principal(cache, issued.plaintext, secret=SECRET) is None


def test_a_cached_key_is_never_reused_past_its_expiry(session: Session) -> None:
    tenant = service.create_tenant(session, "acme", CLI)
    issued = service.create_api_key(
        session,
        tenant,
        secret=SECRET,
        actor=CLI,
        expires_at=utcnow() + dt.timedelta(seconds=2),
    )
    session.commit()
    clock = FakeClock()
    cache = KeyCache(60.0, clock=clock)
    service.authenticate(session, issued.plaintext, secret=SECRET, cache=cache)
    clock.now += 1.0
    assert service.cached_principal(cache, issued.plaintext, secret=SECRET) is not None
    clock.now += 1.5
    assert service.cached_principal(cache, issued.plaintext, secret=SECRET) is None


def test_revoking_a_key_or_changing_caps_in_this_process_empties_the_cache(
    session: Session,
) -> None:
    tenant = service.create_tenant(session, "acme", CLI)
    issued = service.create_api_key(session, tenant, secret=SECRET, actor=CLI)
    other = service.create_api_key(session, tenant, secret=SECRET, actor=CLI)
    session.commit()
    cache = KeyCache(60.0)
    service.authenticate(session, issued.plaintext, secret=SECRET, cache=cache)
    service.revoke_api_key(session, tenant.id, issued.api_key.id, CLI)
    session.commit()
    assert service.cached_principal(cache, issued.plaintext, secret=SECRET) is None

    service.authenticate(session, other.plaintext, secret=SECRET, cache=cache)
    service.set_tenant_limits(session, tenant.id, service.TenantLimitOverrides(max_examples=5), CLI)
    session.commit()
    assert service.cached_principal(cache, other.plaintext, secret=SECRET) is None
    refreshed = service.authenticate(session, other.plaintext, secret=SECRET, cache=cache)
    assert refreshed.limit_overrides.max_examples == 5
