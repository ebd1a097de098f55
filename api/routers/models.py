"""``/v1/models``: the base models this deployment serves, and your fine-tuned models."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy.orm import Session

from api.deps import AppSettings, CurrentPrincipal, DbSession
from api.schemas.common import ERROR_RESPONSES, ListResponse, list_response
from api.schemas.models import ModelObject
from bds_service.errors import NotFoundError
from bds_service.jobs.service import list_fine_tuned_models
from bds_service.models import unix_seconds
from bds_service.settings import Settings
from bds_service.tenants.service import Principal

router = APIRouter(prefix="/v1/models", tags=["models"], responses=ERROR_RESPONSES)


def _models(session: Session, principal: Principal, settings: Settings) -> list[ModelObject]:
    base = [ModelObject(id=name, created=0, owned_by="system") for name in settings.base_models]
    tuned = [
        ModelObject(
            id=job.fine_tuned_model or job.id,
            created=unix_seconds(job.finished_at) or 0,
            owned_by=principal.tenant_name,
        )
        for job in list_fine_tuned_models(session, principal.tenant_id)
    ]
    return base + tuned


@router.get("", response_model=ListResponse[ModelObject])
def list_models(
    session: DbSession, principal: CurrentPrincipal, settings: AppSettings
) -> ListResponse[ModelObject]:
    """Base models you can fine-tune, then your fine-tuned models."""
    data = _models(session, principal, settings)
    return list_response(data)


@router.get("/{model}", response_model=ModelObject)
def retrieve_model(
    model: str, session: DbSession, principal: CurrentPrincipal, settings: AppSettings
) -> ModelObject:
    """One model by id."""
    for candidate in _models(session, principal, settings):
        if candidate.id == model:
            return candidate
    raise NotFoundError(f"no model {model!r}", code="model_not_found", param="model")
