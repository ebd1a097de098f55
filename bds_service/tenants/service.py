"""Tenant and API key operations: create, authenticate, revoke. Services never commit."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import asdict, dataclass, field

from sqlalchemy.orm import Session

from bds_service import audit
from bds_service.audit import Actor
from bds_service.db import call_after_commit
from bds_service.errors import (
    AuthenticationError,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
)
from bds_service.ids import API_KEY_ID_PREFIX, TENANT_PREFIX, new_id
from bds_service.models import MAX_DATABASE_INT, ApiKey, Tenant, utcnow
from bds_service.tenants.key_cache import KeyCache, forget_cached_keys
from bds_service.tenants.keys import display_prefix, generate_api_key, hash_api_key, is_well_formed
from bds_service.tenants.limits import TenantLimitOverrides
from bds_service.tenants.repository import ApiKeyRepository, TenantRepository, find_active_key

TENANT_NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{1,63}$")


@dataclass(frozen=True)
class Principal:
    """The authenticated caller: a key of a tenant."""

    tenant_id: str
    tenant_name: str
    key_id: str
    is_admin: bool
    # The tenant's own caps, read with the key so an upload knows its size cap up front.
    limit_overrides: TenantLimitOverrides = field(default_factory=TenantLimitOverrides)

    def actor(self, request_id: str | None = None) -> Actor:
        """This caller as the actor of audit rows."""
        return Actor("api_key", self.key_id, self.tenant_id, request_id)


@dataclass(frozen=True)
class IssuedKey:
    """A newly created key: the row and the plaintext, which is never available again."""

    api_key: ApiKey
    plaintext: str


def create_tenant(session: Session, name: str, actor: Actor) -> Tenant:
    """Create a tenant named ``name`` (lowercase letters, digits, ``-`` and ``_``)."""
    if not TENANT_NAME_PATTERN.fullmatch(name):
        raise InvalidRequestError(
            f"tenant name {name!r} is invalid: use 2-64 lowercase letters, digits, '-' or '_', "
            "starting with a letter or digit",
            code="invalid_tenant_name",
            param="name",
        )
    repository = TenantRepository(session)
    if repository.get_by_name(name) is not None:
        raise ConflictError(
            f"a tenant named {name!r} already exists", code="tenant_exists", param="name"
        )
    tenant = Tenant(id=new_id(TENANT_PREFIX), name=name)
    session.add(tenant)
    session.flush()
    audit.record(
        session,
        actor,
        "tenant.create",
        target_type="tenant",
        target_id=tenant.id,
        tenant_id=tenant.id,
        details={"name": name},
    )
    return tenant


def set_tenant_limits(
    session: Session, tenant_id: str, overrides: TenantLimitOverrides, actor: Actor
) -> Tenant:
    """Replace a tenant's caps (None restores the deployment's default for that cap)."""
    for name, value in asdict(overrides).items():
        # The columns' range (BIGINT for bytes, INTEGER for the others): past it the database
        # would fail the statement; the same 400 for the JSON API and the dashboard form.
        largest = 2**62 if name == "max_file_bytes" else MAX_DATABASE_INT
        if value is not None and not 1 <= value <= largest:
            raise InvalidRequestError(
                f"{name} must be a positive number of at most {largest} or null (the "
                f"default), got {value}",
                code="invalid_value",
                param=name,
            )
    tenant = TenantRepository(session).lock(tenant_id)
    if tenant is None:
        raise NotFoundError(
            f"no tenant with id {tenant_id!r}", code="tenant_not_found", param="tenant_id"
        )
    before = TenantLimitOverrides.of(tenant)
    tenant.max_concurrent_jobs = overrides.max_concurrent_jobs
    tenant.max_file_bytes = overrides.max_file_bytes
    tenant.max_examples = overrides.max_examples
    _forget_cached_keys_now_and_after_commit(session)
    audit.record(
        session,
        actor,
        "tenant.limits.update",
        target_type="tenant",
        target_id=tenant.id,
        tenant_id=tenant.id,
        details={"before": asdict(before), "after": asdict(overrides)},
    )
    return tenant


def get_tenant_by_name(session: Session, name: str) -> Tenant:
    """The tenant named ``name``; NotFoundError if there is none."""
    tenant = TenantRepository(session).get_by_name(name)
    if tenant is None:
        raise NotFoundError(f"no tenant named {name!r}", code="tenant_not_found", param="name")
    return tenant


def get_tenant(session: Session, tenant_id: str) -> Tenant:
    """The tenant with id ``tenant_id``; NotFoundError if there is none."""
    tenant = TenantRepository(session).get(tenant_id)
    if tenant is None:
        raise NotFoundError(
            f"no tenant with id {tenant_id!r}", code="tenant_not_found", param="tenant_id"
        )
    return tenant


def list_tenants(session: Session) -> list[Tenant]:
    """All tenants, oldest first."""
    return TenantRepository(session).list_all()


def create_api_key(
    session: Session,
    tenant: Tenant,
    *,
    secret: str,
    actor: Actor,
    is_admin: bool = False,
    name: str | None = None,
    expires_at: dt.datetime | None = None,
) -> IssuedKey:
    """Issue a key for ``tenant``; only its HMAC is stored, the plaintext is returned once."""
    if name is not None and not 1 <= len(name) <= 64:
        raise InvalidRequestError(
            "key name must be 1-64 characters", code="invalid_key_name", param="name"
        )
    if expires_at is not None and expires_at <= utcnow():
        raise InvalidRequestError(
            "expires_at must be in the future", code="invalid_expiry", param="expires_at"
        )
    plaintext = generate_api_key()
    api_key = ApiKey(
        id=new_id(API_KEY_ID_PREFIX),
        tenant_id=tenant.id,
        key_hash=hash_api_key(plaintext, secret),
        key_prefix=display_prefix(plaintext),
        name=name,
        is_admin=is_admin,
        expires_at=expires_at,
    )
    session.add(api_key)
    session.flush()
    audit.record(
        session,
        actor,
        "api_key.create",
        target_type="api_key",
        target_id=api_key.id,
        tenant_id=tenant.id,
        details={
            "name": api_key.name,
            "is_admin": is_admin,
            "key_prefix": api_key.key_prefix,
            "expires_at": api_key.expires_at.isoformat() if api_key.expires_at else None,
        },
    )
    return IssuedKey(api_key=api_key, plaintext=plaintext)


def revoke_api_key(session: Session, tenant_id: str, key_id: str, actor: Actor) -> ApiKey:
    """Revoke one of a tenant's keys; revoking twice is harmless."""
    api_key = ApiKeyRepository(session, tenant_id).get(key_id)
    if api_key is None:
        raise NotFoundError(
            f"no API key with id {key_id!r}", code="api_key_not_found", param="key_id"
        )
    if api_key.revoked_at is None:
        api_key.revoked_at = utcnow()
        _forget_cached_keys_now_and_after_commit(session)
        audit.record(
            session,
            actor,
            "api_key.revoke",
            target_type="api_key",
            target_id=key_id,
            tenant_id=tenant_id,
        )
    return api_key


def list_api_keys(session: Session, tenant_id: str) -> list[ApiKey]:
    """A tenant's keys (hashes are never shown, only prefixes)."""
    return ApiKeyRepository(session, tenant_id).list_keys()


def _forget_cached_keys_now_and_after_commit(session: Session) -> None:
    # Now: no request of this process re-reads the old row from the cache; after commit: a
    # request that read the old row between now and the commit does not keep it cached.
    forget_cached_keys()
    call_after_commit(session, forget_cached_keys)


def _well_formed_key_hash(plaintext: str, secret: str) -> str:
    if not is_well_formed(plaintext):
        raise AuthenticationError(
            "the API key is malformed; keys start with 'bds-' and are shown once when created",
            code="invalid_api_key",
        )
    return hash_api_key(plaintext, secret)


def cached_principal(cache: KeyCache, plaintext: str, *, secret: str) -> Principal | None:
    """The principal of a key that authenticated moments ago in this process, else None
    (no database needed); AuthenticationError if the key is malformed."""
    return cache.get(_well_formed_key_hash(plaintext, secret))


def authenticate(
    session: Session, plaintext: str, *, secret: str, cache: KeyCache | None = None
) -> Principal:
    """The principal for a presented key; AuthenticationError if it is not a live key.

    With ``cache``, a key that authenticated in the last ``cache.ttl_s`` seconds is not looked
    up again (see :mod:`bds_service.tenants.key_cache` for when a revocation takes effect).
    """
    key_hash = _well_formed_key_hash(plaintext, secret)
    if cache is not None:
        cached = cache.get(key_hash)
        if cached is not None:
            return cached
    found = find_active_key(session, key_hash, utcnow())
    if found is None:
        raise AuthenticationError(
            "the API key is unknown, revoked or expired", code="invalid_api_key"
        )
    api_key, tenant = found
    principal = Principal(
        tenant_id=tenant.id,
        tenant_name=tenant.name,
        key_id=api_key.id,
        is_admin=api_key.is_admin,
        limit_overrides=TenantLimitOverrides.of(tenant),
    )
    if cache is not None:
        cache.put(key_hash, principal, api_key.expires_at)
    return principal
