"""Audit rows are written in the caller's transaction and can never be changed."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bds_service import audit
from bds_service.audit import Actor, AuditLogImmutableError
from bds_service.models import AuditLog, Tenant
from bds_service.tenants import service

CLI = Actor("cli", "tester")


def test_rollback_discards_both_the_change_and_its_audit_row(session: Session) -> None:
    service.create_tenant(session, "acme", CLI)
    session.flush()
    session.rollback()
    assert session.scalar(select(func.count()).select_from(Tenant)) == 0
    assert session.scalar(select(func.count()).select_from(AuditLog)) == 0


def test_application_cannot_update_or_delete_audit_rows(session: Session) -> None:
    row = audit.record(session, CLI, "tenant.create", target_type="tenant", target_id="org-x")
    session.commit()

    row.action = "tampered"
    with pytest.raises(AuditLogImmutableError):
        session.flush()
    session.rollback()

    session.delete(row)
    with pytest.raises(AuditLogImmutableError):
        session.flush()
    session.rollback()
    assert session.scalars(select(AuditLog.action)).one() == "tenant.create"
