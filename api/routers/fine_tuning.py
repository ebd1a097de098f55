"""``/v1/fine_tuning/jobs``: create, list, retrieve, cancel, events, checkpoints, outputs."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from anyio import to_thread
from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask

from api.deps import (
    AppServices,
    CurrentPrincipal,
    DbSession,
    ReadSession,
    RequestId,
    Services,
    Storage,
)
from api.schemas.common import ERROR_RESPONSES, Limit, ListResponse, json_response, list_response
from api.schemas.jobs import (
    CheckpointObject,
    FineTuningJobObject,
    JobCreate,
    JobEventObject,
    JobSafetyReport,
)
from bds_service.audit import Actor
from bds_service.db import unit_of_work
from bds_service.errors import InvalidRequestError
from bds_service.jobs import artifacts
from bds_service.jobs import service as jobs

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine_tuning"], responses=ERROR_RESPONSES)

_METADATA_FILTER = re.compile(r"^metadata\[(.{1,64})\]$")


@router.post("", response_model=FineTuningJobObject)
async def create_job(
    body: JobCreate,
    request: Request,
    services: Services,
    principal: CurrentPrincipal,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> Response:
    """Create a fine-tuning job (BDS by default). A retried ``Idempotency-Key`` returns the
    job the first request created; the same key with a different body is a 422."""
    # The busiest write: everything that waits on the database (the create's statements, the
    # commit) and then on the broker (the task's dispatch) runs in one hop to a worker thread,
    # which holds its connection from the first statement to the commit and needs no second
    # thread for it. The threads are the creates' own (AppServices.create_limiter).
    return await to_thread.run_sync(
        _create_job,
        services,
        body.to_spec(),
        principal.tenant_id,
        principal.actor(str(request.state.request_id)),
        jobs.check_idempotency_key(idempotency_key),
        limiter=services.create_limiter,
    )


def _create_job(
    services: AppServices,
    spec: jobs.JobSpec,
    tenant_id: str,
    actor: Actor,
    idempotency_key: str | None,
) -> Response:
    """The create's unit of work: its transaction, then (once committed) its task message."""
    with unit_of_work(services.session_factory, services.publisher) as session:
        created = jobs.create_job(
            session,
            spec,
            tenant_id=tenant_id,
            actor=actor,
            settings=services.settings,
            idempotency_key=idempotency_key,
        )
    return json_response(
        FineTuningJobObject.from_row(created.job),
        headers=None if created.created else {"Idempotent-Replayed": "true"},
    )


@router.get("", response_model=ListResponse[FineTuningJobObject])
def list_jobs(
    request: Request,
    session: ReadSession,
    principal: CurrentPrincipal,
    after: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Limit] = 20,
) -> Response:
    """Your jobs, newest first; filter with ``metadata[key]=value`` query parameters."""
    metadata: dict[str, str] = {}
    for name, value in request.query_params.multi_items():
        match = _METADATA_FILTER.fullmatch(name)
        if match:
            metadata[match.group(1)] = value
        elif name not in {"after", "limit"}:
            raise InvalidRequestError(
                f"unknown query parameter {name[:64]!r}", code="unknown_parameter", param=name[:64]
            )
    page = jobs.list_jobs(
        session, principal.tenant_id, after=after, limit=limit, metadata=metadata or None
    )
    data = [FineTuningJobObject.from_row(job) for job in page.items]
    return json_response(list_response(data, has_more=page.has_more))


@router.get("/{fine_tuning_job_id}", response_model=FineTuningJobObject)
def retrieve_job(
    fine_tuning_job_id: str, session: DbSession, principal: CurrentPrincipal
) -> FineTuningJobObject:
    """One job."""
    return FineTuningJobObject.from_row(
        jobs.get_job(session, principal.tenant_id, fine_tuning_job_id)
    )


@router.post(
    "/{fine_tuning_job_id}/cancel",
    response_model=FineTuningJobObject,
    responses={409: {"description": "the job has already finished"}},
)
def cancel_job(
    fine_tuning_job_id: str,
    session: DbSession,
    principal: CurrentPrincipal,
    request_id: RequestId,
) -> FineTuningJobObject:
    """Cancel a job: at once if it has not started, else ``cancelling`` until the worker stops
    after its current step."""
    job = jobs.cancel_job(
        session, principal.tenant_id, fine_tuning_job_id, actor=principal.actor(request_id)
    )
    return FineTuningJobObject.from_row(job)


@router.get("/{fine_tuning_job_id}/events", response_model=ListResponse[JobEventObject])
def list_events(
    fine_tuning_job_id: str,
    session: DbSession,
    principal: CurrentPrincipal,
    after: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Limit] = 20,
) -> ListResponse[JobEventObject]:
    """The job's events, newest first: messages, and metrics with progress, loss, ETA and
    weight statistics."""
    page = jobs.list_events(
        session, principal.tenant_id, fine_tuning_job_id, after=after, limit=limit
    )
    data = [JobEventObject.from_row(event) for event in page.items]
    return list_response(data, has_more=page.has_more)


@router.get("/{fine_tuning_job_id}/checkpoints", response_model=ListResponse[CheckpointObject])
def list_checkpoints(
    fine_tuning_job_id: str,
    session: DbSession,
    principal: CurrentPrincipal,
    after: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Limit] = 10,
) -> ListResponse[CheckpointObject]:
    """The job's checkpoints, newest first."""
    job = jobs.get_job(session, principal.tenant_id, fine_tuning_job_id)
    page = jobs.list_checkpoints(
        session, principal.tenant_id, fine_tuning_job_id, after=after, limit=limit
    )
    model_name = job.fine_tuned_model or jobs.fine_tuned_model_name(job, principal.tenant_name)
    data = [CheckpointObject.from_row(checkpoint, model_name) for checkpoint in page.items]
    return list_response(data, has_more=page.has_more)


@router.get(
    "/{fine_tuning_job_id}/adapter",
    response_class=FileResponse,
    responses={
        200: {"content": {"application/gzip": {}, "application/zip": {}}},
        409: {"description": "the job has not succeeded"},
    },
)
def download_adapter(
    fine_tuning_job_id: str,
    session: DbSession,
    principal: CurrentPrincipal,
    storage: Storage,
    request_id: RequestId,
    format: Literal["tar.gz", "zip"] = "tar.gz",
) -> FileResponse:
    """The trained LoRA adapter: a standard PEFT folder (adapter_config.json and
    adapter_model.safetensors) packed as tar.gz or zip; every download is audited."""
    archive, filename = artifacts.adapter_archive_for_download(
        session,
        principal.tenant_id,
        fine_tuning_job_id,
        storage,
        format,
        principal.actor(request_id),
    )
    return adapter_response(archive, filename)


def adapter_response(archive: Path, filename: str) -> FileResponse:
    """An adapter archive as a download; the temporary file goes once it is sent."""
    return FileResponse(
        archive,
        media_type="application/gzip" if filename.endswith(".tar.gz") else "application/zip",
        filename=filename,
        background=BackgroundTask(archive.unlink, missing_ok=True),
    )


@router.get("/{fine_tuning_job_id}/safety_report", response_model=JobSafetyReport)
def job_safety_report(
    fine_tuning_job_id: str, session: DbSession, principal: CurrentPrincipal
) -> JobSafetyReport:
    """Final per-example weights and the post-training safety evaluation (harmful score
    before and after, fine-tune accuracy on the validation file); null until succeeded."""
    job = jobs.get_job(session, principal.tenant_id, fine_tuning_job_id)
    return JobSafetyReport(fine_tuning_job_id=job.id, status=job.status, report=job.safety_report)
