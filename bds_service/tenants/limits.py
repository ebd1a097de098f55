"""Per-tenant caps: how many unfinished jobs, how large a file, how many examples.

The deployment's settings give the defaults; a tenant row may override each one (a provider's
larger or smaller plan). Every cap is enforced where the work is accepted, with an error that
names the cap and its value: 413 for a file over the size cap, a 400 ``too_many_examples`` issue
naming the first line past the cap, and 429 ``too_many_active_jobs`` for a job over the
concurrency cap (checked under a lock on the tenant row, so concurrent requests cannot both
slip under it).
"""

from __future__ import annotations

from dataclasses import dataclass

from bds_service.models import Tenant
from bds_service.settings import Settings


@dataclass(frozen=True)
class TenantLimits:
    """The caps in force for one tenant."""

    max_concurrent_jobs: int
    max_file_bytes: int
    max_examples: int


@dataclass(frozen=True)
class TenantLimitOverrides:
    """A tenant's own caps; None keeps the deployment's default."""

    max_concurrent_jobs: int | None = None
    max_file_bytes: int | None = None
    max_examples: int | None = None

    @classmethod
    def of(cls, tenant: Tenant | None) -> TenantLimitOverrides:
        """The overrides stored on a tenant row (none for a missing tenant)."""
        if tenant is None:
            return cls()
        return cls(
            max_concurrent_jobs=tenant.max_concurrent_jobs,
            max_file_bytes=tenant.max_file_bytes,
            max_examples=tenant.max_examples,
        )

    def resolve(self, settings: Settings) -> TenantLimits:
        """The overrides where set, else the deployment's defaults."""
        return TenantLimits(
            max_concurrent_jobs=_pick(self.max_concurrent_jobs, settings.max_concurrent_jobs),
            max_file_bytes=_pick(self.max_file_bytes, settings.max_upload_bytes),
            max_examples=_pick(self.max_examples, settings.max_examples),
        )


def _pick(override: int | None, default: int) -> int:
    return default if override is None else override


def limits_for(tenant: Tenant | None, settings: Settings) -> TenantLimits:
    """The caps in force for ``tenant``: its overrides where it has them, else the defaults."""
    return TenantLimitOverrides.of(tenant).resolve(settings)
