"""``/reports``: a customer's own safety reports as pages, with the customer's own key.

Reachable with ``Authorization: Bearer <key>`` or after logging in at ``/login``. Every read
goes through the tenant-scoped services, so another tenant's file or job is a 404 page, exactly
like an id that never existed. The report contexts built here are shared with the dashboard.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy.orm import Session

from api.deps import DbSession, RequestId, Services, Storage
from api.pages import plots
from api.pages.auth import Caller
from api.pages.playground import playground_context
from api.pages.routing import PageRoute
from api.pages.templating import templates
from api.routers.fine_tuning import adapter_response
from bds_service.admin import repository as admin_queries
from bds_service.dataset_reviews import service as reviews
from bds_service.dataset_reviews.repository import DatasetReviewRepository
from bds_service.errors import NotFoundError
from bds_service.files import service as files
from bds_service.files.previews import example_previews
from bds_service.files.repository import FileRepository
from bds_service.files.states import SafetyStatus
from bds_service.jobs import artifacts
from bds_service.jobs import service as jobs
from bds_service.jobs.history import (
    evaluation_progress,
    final_weights,
    metrics_series,
    progress_from_event,
)
from bds_service.jobs.states import JobStatus
from bds_service.models import File, FineTuningJob, utcnow
from bds_service.storage import LocalStorage

router = APIRouter(prefix="/reports", route_class=PageRoute, include_in_schema=False)

LOWEST_WEIGHTS_SHOWN = 15
LIST_SIZE = 50
JOB_PLOTS = ("loss", "weights")


def png_response(png: bytes) -> Response:
    """A PNG plot of private data: never cached."""
    return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})


def dataset_report_context(file: File) -> dict[str, Any]:
    """What the safety report template needs about one file."""
    validation = file.validation_report or {}
    return {
        "file": file,
        "report": file.safety_report if file.safety_status == SafetyStatus.SUCCEEDED else None,
        "validation": validation,
        "issues": validation.get("issues", []),
        "policy_descriptions": reviews.POLICY_DESCRIPTIONS,
    }


def job_report_context(
    session: Session, job: FineTuningJob, storage: LocalStorage
) -> dict[str, Any]:
    """What the job report template needs: progress, evaluation, weights and the examples BDS
    weighted lowest (with their text while the training file is stored)."""
    training_file = FileRepository(session, job.tenant_id).get(job.training_file_id)
    dataset_report = training_file.safety_report if training_file is not None else None
    report: dict[str, Any] = job.safety_report or {}
    weights = final_weights(report, dataset_report)
    lowest = sorted(weights, key=lambda row: row.weight)[:LOWEST_WEIGHTS_SHOWN]
    previews = {}
    if training_file is not None and training_file.deleted_at is None and lowest:
        previews = example_previews(
            storage.path(training_file.storage_key), {row.line for row in lowest}
        )
    latest = admin_queries.latest_metrics_events(session, [job.id]).get(job.id)
    evaluating = (
        evaluation_progress(admin_queries.job_events(session, job, limit=10))
        if job.status in (JobStatus.RUNNING, JobStatus.CANCELLING)
        else None
    )
    weight_summary = {
        key: value
        for key, value in (report.get("weights") or {}).items()
        if key not in ("examples", "lowest")
    }
    return {
        "job": job,
        "progress": progress_from_event(latest),
        "evaluating": evaluating,
        "report": report or None,
        "evaluation": report.get("evaluation") or {},
        "weight_summary": weight_summary,
        "n_weighted": len(weights),
        "n_flagged_below_mean": sum(1 for row in weights if row.flagged and row.weight < 1.0),
        "n_flagged": sum(1 for row in weights if row.flagged),
        "lowest": lowest,
        "has_intervals": any(row.high is not None for row in weights),
        "previews": previews,
        "training_file": training_file,
        "training_review": DatasetReviewRepository(session, job.tenant_id).for_file(
            job.training_file_id
        ),
        "now": utcnow(),
    }


def render_job_plot(session: Session, job: FineTuningJob, plot: str) -> bytes:
    """The PNG of one of a job's plots: ``loss`` or ``weights`` (404 for another name)."""
    if plot not in JOB_PLOTS:
        raise NotFoundError(
            f"no plot named {plot!r}; there are {', '.join(JOB_PLOTS)}", code="plot_not_found"
        )
    series = metrics_series(admin_queries.job_metrics(session, job))
    if plot == "loss":
        return plots.loss_plot(series)
    training_file = FileRepository(session, job.tenant_id).get(job.training_file_id)
    dataset_report = training_file.safety_report if training_file is not None else None
    if job.method.get("type") != "bds":
        no_weights = "no weights: supervised training counts every example once"
    elif not series.steps:
        no_weights = "weights appear after the first training step"
    else:
        no_weights = "no weight statistics recorded"
    return plots.weights_plot(
        series, final_weights(job.safety_report, dataset_report), no_weights=no_weights
    )


def _render(request: Request, template: str, caller: Any, **context: Any) -> Response:
    return templates.TemplateResponse(
        request, template, {"caller": caller, "csrf": caller.csrf_token or "", **context}
    )


@router.get("")
def report_index(request: Request, session: DbSession, caller: Caller) -> Response:
    """Your newest datasets and jobs, each linking to its safety report."""
    tenant_id = caller.principal.tenant_id
    file_page = files.list_files(session, tenant_id, after=None, limit=LIST_SIZE)
    job_page = jobs.list_jobs(session, tenant_id, after=None, limit=LIST_SIZE)
    file_reviews = DatasetReviewRepository(session, tenant_id).for_files(
        file.id for file in file_page.items
    )
    return _render(
        request,
        "reports/index.html",
        caller,
        files=file_page.items,
        file_reviews=file_reviews,
        jobs=job_page.items,
    )


@router.get("/files/{file_id}")
def file_report(file_id: str, request: Request, session: DbSession, caller: Caller) -> Response:
    """Your dataset's validation and safety report."""
    file = files.get_file(session, caller.principal.tenant_id, file_id)
    review = DatasetReviewRepository(session, file.tenant_id).for_file(file.id)
    return _render(
        request,
        "reports/file.html",
        caller,
        review=review,
        histogram_url=f"/reports/files/{file.id}/histogram.png",
        **dataset_report_context(file),
    )


@router.get("/files/{file_id}/histogram.png")
def file_histogram(file_id: str, session: DbSession, caller: Caller) -> Response:
    """Your dataset's harm score histogram."""
    file = files.get_file(session, caller.principal.tenant_id, file_id)
    return png_response(plots.harm_histogram(file.safety_report or {}))


@router.get("/jobs/{job_id}")
def job_report(
    job_id: str,
    request: Request,
    session: DbSession,
    caller: Caller,
    storage: Storage,
    services: Services,
) -> Response:
    """Your job's safety report: HS before and after, what BDS did to each example, the
    playground and safety evaluations."""
    job = jobs.get_job(session, caller.principal.tenant_id, job_id)
    return _render(
        request,
        "reports/job.html",
        caller,
        plot_base=f"/reports/jobs/{job.id}",
        **job_report_context(session, job, storage),
        **playground_context(session, job, services.settings, f"/reports/jobs/{job.id}"),
    )


@router.get("/jobs/{job_id}/adapter.{archive_format}")
def job_adapter(
    job_id: str,
    archive_format: Literal["tar.gz", "zip"],
    session: DbSession,
    caller: Caller,
    storage: Storage,
    request_id: RequestId,
) -> Response:
    """Your job's trained adapter (a PEFT folder) as tar.gz or zip; audited like the API's."""
    archive, filename = artifacts.adapter_archive_for_download(
        session,
        caller.principal.tenant_id,
        job_id,
        storage,
        archive_format,
        caller.actor(request_id),
    )
    return adapter_response(archive, filename)


@router.get("/jobs/{job_id}/{plot}.png")
def job_plot(job_id: str, plot: str, session: DbSession, caller: Caller) -> Response:
    """Your job's loss curve (``loss``) or weight distribution (``weights``)."""
    job = jobs.get_job(session, caller.principal.tenant_id, job_id)
    return png_response(render_job_plot(session, job, plot))
