"""Tenants and API keys: keys are random, shown once, stored only as an HMAC, and revocable."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from bds_service.audit import Actor
from bds_service.errors import AuthenticationError, ConflictError, InvalidRequestError
from bds_service.models import ApiKey, AuditLog, utcnow
from bds_service.tenants import keys, service

SECRET = "test-secret-0123456789abcdef"
CLI = Actor("cli", "tester")


def test_generated_keys_are_unique_well_formed_and_typos_are_detected() -> None:
    generated = {keys.generate_api_key() for _ in range(200)}
    assert len(generated) == 200
    key = next(iter(generated))
    assert key.startswith("bds-") and len(key) == keys.KEY_LENGTH
    assert keys.is_well_formed(key)
    typo = key[:10] + ("A" if key[10] != "A" else "B") + key[11:]
    assert not keys.is_well_formed(typo)
    assert not keys.is_well_formed(key + "x")
    assert not keys.is_well_formed("sk-" + key[3:])


def test_key_is_stored_only_as_hmac_and_authenticates(session: Session) -> None:
    tenant = service.create_tenant(session, "acme", CLI)
    issued = service.create_api_key(session, tenant, secret=SECRET, actor=CLI)
    session.commit()

    stored = session.scalars(select(ApiKey)).one()
    assert issued.plaintext not in {stored.key_hash, stored.key_prefix, stored.id}
    assert stored.key_hash == keys.hash_api_key(issued.plaintext, SECRET)
    assert issued.plaintext.startswith(stored.key_prefix)

    principal = service.authenticate(session, issued.plaintext, secret=SECRET)
    assert (principal.tenant_id, principal.tenant_name, principal.is_admin) == (
        tenant.id,
        "acme",
        False,
    )
    with pytest.raises(AuthenticationError):
        service.authenticate(session, issued.plaintext, secret="another-secret-0123456789")


def test_revoked_and_expired_keys_are_refused(session: Session) -> None:
    tenant = service.create_tenant(session, "acme", CLI)
    revoked = service.create_api_key(session, tenant, secret=SECRET, actor=CLI)
    expiring = service.create_api_key(
        session, tenant, secret=SECRET, actor=CLI, expires_at=utcnow() + dt.timedelta(hours=1)
    )
    service.revoke_api_key(session, tenant.id, revoked.api_key.id, CLI)
    session.commit()
    with pytest.raises(AuthenticationError, match="revoked"):
        service.authenticate(session, revoked.plaintext, secret=SECRET)

    assert service.authenticate(session, expiring.plaintext, secret=SECRET).key_id == (
        expiring.api_key.id
    )
    expiring.api_key.expires_at = utcnow() - dt.timedelta(seconds=1)
    session.commit()
    with pytest.raises(AuthenticationError, match="expired"):
        service.authenticate(session, expiring.plaintext, secret=SECRET)


def test_admin_flag_and_unknown_or_malformed_keys(session: Session) -> None:
    tenant = service.create_tenant(session, "provider", CLI)
    admin = service.create_api_key(session, tenant, secret=SECRET, actor=CLI, is_admin=True)
    session.commit()
    assert service.authenticate(session, admin.plaintext, secret=SECRET).is_admin
    with pytest.raises(AuthenticationError, match="malformed"):
        service.authenticate(session, "Bearer nonsense", secret=SECRET)
    with pytest.raises(AuthenticationError, match="unknown"):
        service.authenticate(session, keys.generate_api_key(), secret=SECRET)


@pytest.mark.parametrize("name", ["", "A", "Upper", "has space", "-lead", "x" * 65, "a/b"])
def test_invalid_tenant_names_are_refused(session: Session, name: str) -> None:
    with pytest.raises(InvalidRequestError) as raised:
        service.create_tenant(session, name, CLI)
    assert raised.value.param == "name"


def test_duplicate_tenant_is_a_conflict(session: Session) -> None:
    service.create_tenant(session, "acme", CLI)
    session.commit()
    with pytest.raises(ConflictError, match="already exists"):
        service.create_tenant(session, "acme", CLI)


def test_tenant_and_key_creation_and_revocation_are_audited(session: Session) -> None:
    tenant = service.create_tenant(session, "acme", CLI.with_request("req-1"))
    issued = service.create_api_key(session, tenant, secret=SECRET, actor=CLI, is_admin=True)
    service.revoke_api_key(session, tenant.id, issued.api_key.id, CLI)
    service.revoke_api_key(session, tenant.id, issued.api_key.id, CLI)  # second time: no row
    session.commit()
    rows = session.scalars(select(AuditLog).order_by(AuditLog.id)).all()
    assert [(row.action, row.target_id, row.tenant_id) for row in rows] == [
        ("tenant.create", tenant.id, tenant.id),
        ("api_key.create", issued.api_key.id, tenant.id),
        ("api_key.revoke", issued.api_key.id, tenant.id),
    ]
    assert rows[0].request_id == "req-1"
    assert rows[0].actor_type == "cli" and rows[0].actor_id == "tester"
    assert issued.plaintext not in str(rows[1].details)
