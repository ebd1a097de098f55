"""The audit log: who changed what, written in the same transaction as the change.

Services call :func:`record` next to every state change; because the row is added to the same
session, a rolled-back request leaves neither the change nor its audit row. Audit rows are never
updated or deleted: the ORM guard below refuses it inside the application and database triggers
(see the initial migration) refuse it for everyone else.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

from sqlalchemy import event, select
from sqlalchemy.orm import Session, UOWTransaction

from bds_service.models import AuditLog

ActorType = Literal["api_key", "cli", "worker", "system"]


@dataclass(frozen=True)
class Actor:
    """The party a change is attributed to."""

    actor_type: ActorType
    actor_id: str | None
    tenant_id: str | None = None
    request_id: str | None = None

    def with_request(self, request_id: str | None) -> Actor:
        """The same actor, tagged with a request id."""
        return replace(self, request_id=request_id)


def record(
    session: Session,
    actor: Actor,
    action: str,
    *,
    target_type: str,
    target_id: str | None,
    tenant_id: str | None = None,
    details: dict[str, Any] | None = None,
) -> AuditLog:
    """Add an audit row for ``action`` on ``target`` to the session's transaction."""
    row = AuditLog(
        **row_values(
            actor,
            action,
            target_type=target_type,
            target_id=target_id,
            tenant_id=tenant_id,
            details=details,
        )
    )
    session.add(row)
    return row


def row_values(
    actor: Actor,
    action: str,
    *,
    target_type: str,
    target_id: str | None,
    tenant_id: str | None = None,
    details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The columns of the audit row of ``action`` on ``target`` (as :func:`record` writes
    it), for a caller that writes the row with a Core INSERT."""
    return {
        "actor_type": actor.actor_type,
        "actor_id": actor.actor_id,
        "tenant_id": tenant_id if tenant_id is not None else actor.tenant_id,
        "action": action,
        "target_type": target_type,
        "target_id": target_id,
        "request_id": actor.request_id,
        "details": details,
    }


def list_for_tenant(session: Session, tenant_id: str, limit: int = 100) -> list[AuditLog]:
    """The newest audit rows about one tenant, newest first."""
    statement = (
        select(AuditLog)
        .where(AuditLog.tenant_id == tenant_id)
        .order_by(AuditLog.id.desc())
        .limit(limit)
    )
    return list(session.scalars(statement))


class AuditLogImmutableError(RuntimeError):
    """Raised when code tries to change or delete an audit row."""


@event.listens_for(Session, "before_flush")
def _refuse_audit_changes(session: Session, _flush: UOWTransaction, _instances: Any) -> None:
    for instance in (*session.dirty, *session.deleted):
        if isinstance(instance, AuditLog):
            raise AuditLogImmutableError(
                f"audit_log row {instance.id} is append-only and cannot be changed or deleted"
            )
