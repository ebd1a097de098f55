"""``/admin``: the provider's dashboard (admin keys only; every view and action is audited).

Overview, jobs across tenants (detail with plots, events, checkpoints, cancel), datasets
(validation and safety reports, approve/block, training policy), tenants and keys (create,
revoke, caps) and the audit log (filters, CSV export). Pages work without JavaScript; every
form is a POST carrying the session's CSRF token and answers with a redirect (post/redirect/get)
except key creation, whose answer is the only place the new key is ever shown.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.orm import Session

from api.deps import DbSession, RequestId, Services, Storage
from api.pages.auth import AdminCaller, CsrfField, PageCaller, check_csrf
from api.pages.playground import playground_context
from api.pages.reports import (
    dataset_report_context,
    job_report_context,
    png_response,
    render_job_plot,
)
from api.pages.routing import PageRoute
from api.pages.templating import templates
from bds_service.admin import repository as admin_queries
from bds_service.admin import service as admin_service
from bds_service.admin.repository import AuditFilter
from bds_service.dataset_reviews import service as reviews
from bds_service.dataset_reviews.repository import DatasetReviewRepository
from bds_service.errors import InvalidRequestError, NotFoundError
from bds_service.files.states import UPLOAD_PURPOSES
from bds_service.inference import service as inference_usage
from bds_service.jobs import service as jobs
from bds_service.jobs.states import TERMINAL_STATUSES, JobStatus
from bds_service.models import MAX_DATABASE_INT, File, FineTuningJob, utcnow
from bds_service.tenants import service as tenants
from bds_service.tenants.limits import TenantLimitOverrides, limits_for

router = APIRouter(prefix="/admin", route_class=PageRoute, include_in_schema=False)

PAGE_SIZE = 50
AUDIT_PAGE_SIZE = 200
AUDIT_EXPORT_MAX_ROWS = 100_000
JOB_STATUSES = [status.value for status in JobStatus]
DECISION_FILTERS = ["unreviewed", *reviews.DECISIONS]
NOTICES = {
    "job_cancelled": "The job was cancelled.",
    "job_cancelling": "Cancellation requested: the worker stops after its current step.",
    "dataset_approved": "The dataset is approved.",
    "dataset_blocked": "The dataset is blocked: new jobs cannot use it.",
    "dataset_review_cleared": "The decision was cleared.",
    "policy_set": "The training policy was saved.",
    "tenant_created": "The tenant was created.",
    "key_revoked": "The key was revoked; it stopped working at once.",
    "limits_saved": "The caps were saved.",
}


def _render(
    request: Request,
    template: str,
    caller: PageCaller,
    *,
    status_code: int = 200,
    **context: Any,
) -> Response:
    notice = NOTICES.get(request.query_params.get("notice", ""))
    return templates.TemplateResponse(
        request,
        template,
        {"caller": caller, "csrf": caller.csrf_token or "", "notice": notice, **context},
        status_code=status_code,
    )


def _redirect(path: str, notice: str) -> RedirectResponse:
    return RedirectResponse(f"{path}?{urlencode({'notice': notice})}", status_code=303)


def _page_offset(page: int) -> int:
    return (page - 1) * PAGE_SIZE


def _load_job(session: Session, job_id: str) -> tuple[FineTuningJob, str]:
    found = admin_queries.job_by_id(session, job_id)
    if found is None:
        raise NotFoundError(f"no fine-tuning job with id {job_id!r}", code="job_not_found")
    return found


def _load_file(session: Session, file_id: str) -> tuple[File, str]:
    found = admin_queries.file_by_id(session, file_id)
    if found is None:
        raise NotFoundError(f"no file with id {file_id!r}", code="file_not_found")
    return found


# ---- overview ---------------------------------------------------------------------------


@router.get("")
def overview(
    request: Request, session: DbSession, caller: AdminCaller, request_id: RequestId
) -> Response:
    """Queue depth, running jobs with progress and ETA, workers seen, recent failures."""
    summary = admin_service.overview(session)
    admin_service.record_view(session, caller.actor(request_id), "overview")
    return _render(request, "admin/overview.html", caller, overview=summary, now=utcnow())


# ---- jobs -------------------------------------------------------------------------------


@router.get("/jobs")
def job_list(
    request: Request,
    session: DbSession,
    caller: AdminCaller,
    request_id: RequestId,
    tenant: Annotated[str, Query(max_length=64)] = "",
    status: Annotated[str, Query(max_length=32)] = "",
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
) -> Response:
    """Jobs of every tenant, newest first; filter by tenant and status."""
    if status and status not in JOB_STATUSES:
        raise InvalidRequestError(
            f"status {status!r} is not one of {', '.join(JOB_STATUSES)}", code="invalid_status"
        )
    rows = admin_queries.search_jobs(
        session,
        tenant_id=tenant or None,
        status=status or None,
        limit=PAGE_SIZE + 1,
        offset=_page_offset(page),
    )
    latest = admin_queries.latest_metrics_events(session, [job.id for job, _ in rows])
    admin_service.record_view(
        session,
        caller.actor(request_id),
        "jobs",
        tenant_id=tenant or None,
        details={"tenant": tenant or None, "status": status or None, "page": page},
    )
    return _render(
        request,
        "admin/jobs.html",
        caller,
        rows=rows[:PAGE_SIZE],
        progress={job_id: event.data or {} for job_id, event in latest.items()},
        tenants=tenants.list_tenants(session),
        statuses=JOB_STATUSES,
        filters={"tenant": tenant, "status": status},
        page=page,
        has_next=len(rows) > PAGE_SIZE,
    )


@router.get("/jobs/{job_id}")
def job_detail(
    job_id: str,
    request: Request,
    session: DbSession,
    caller: AdminCaller,
    request_id: RequestId,
    storage: Storage,
    services: Services,
) -> Response:
    """One job: progress, plots, HS before and after, weights, events, checkpoints, cancel,
    the playground and safety evaluations."""
    job, tenant_name = _load_job(session, job_id)
    context = job_report_context(session, job, storage)
    context.update(playground_context(session, job, services.settings, f"/admin/jobs/{job.id}"))
    events = admin_queries.job_events(session, job)
    admin_service.record_view(
        session,
        caller.actor(request_id),
        "job",
        target_type="fine_tuning_job",
        target_id=job.id,
        tenant_id=job.tenant_id,
        details={"plots": ["loss", "weights"]},
    )
    return _render(
        request,
        "admin/job.html",
        caller,
        tenant_name=tenant_name,
        events=list(reversed(events)),
        checkpoints=admin_queries.job_checkpoints(session, job),
        cancellable=JobStatus(job.status) not in TERMINAL_STATUSES
        and job.status != JobStatus.CANCELLING,
        plot_base=f"/admin/jobs/{job.id}",
        plot_query=f"?{urlencode({'view': request_id})}",
        **context,
    )


@router.get("/jobs/{job_id}/{plot}.png")
def job_plot(
    job_id: str,
    plot: str,
    session: DbSession,
    caller: AdminCaller,
    request_id: RequestId,
    view: Annotated[str, Query(max_length=64)] = "",
) -> Response:
    """The job's loss curve (``loss``) or weight distribution over time (``weights``).

    A plot shown on the job page (``view`` = the page's request id) is covered by the page's
    audit row; a plot fetched on its own writes a row of its own.
    """
    job, _tenant_name = _load_job(session, job_id)
    png = render_job_plot(session, job, plot)
    actor = caller.actor(request_id)
    if not view or not admin_queries.page_view_recorded(
        session,
        request_id=view,
        actor_id=actor.actor_id,
        action="admin.view.job",
        tenant_id=job.tenant_id,
        target_id=job.id,
    ):
        admin_service.record_view(
            session,
            actor,
            "job_plot",
            target_type="fine_tuning_job",
            target_id=job.id,
            tenant_id=job.tenant_id,
            details={"plot": plot},
        )
    return png_response(png)


@router.post("/jobs/{job_id}/cancel")
def cancel_job(
    job_id: str,
    session: DbSession,
    caller: AdminCaller,
    request_id: RequestId,
    csrf_token: CsrfField = "",
) -> Response:
    """Cancel a job of any tenant (audited under the job's tenant, by the admin's key)."""
    check_csrf(caller, csrf_token)
    job, _tenant_name = _load_job(session, job_id)
    cancelled = jobs.cancel_job(
        session, job.tenant_id, job.id, actor=caller.actor(request_id, job.tenant_id)
    )
    notice = "job_cancelling" if cancelled.status == JobStatus.CANCELLING else "job_cancelled"
    return _redirect(f"/admin/jobs/{job.id}", notice)


# ---- datasets ---------------------------------------------------------------------------


@router.get("/datasets")
def dataset_list(
    request: Request,
    session: DbSession,
    caller: AdminCaller,
    request_id: RequestId,
    tenant: Annotated[str, Query(max_length=64)] = "",
    decision: Annotated[str, Query(max_length=32)] = "",
    purpose: Annotated[str, Query(max_length=32)] = "",
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
) -> Response:
    """Datasets of every tenant with their safety summary and review, newest first."""
    if decision and decision not in DECISION_FILTERS:
        raise InvalidRequestError(
            f"decision {decision!r} is not one of {', '.join(DECISION_FILTERS)}",
            code="invalid_decision",
        )
    if purpose and purpose not in UPLOAD_PURPOSES:
        raise InvalidRequestError(
            f"purpose {purpose!r} is not one of {', '.join(UPLOAD_PURPOSES)}",
            code="invalid_purpose",
        )
    rows = admin_queries.search_files(
        session,
        tenant_id=tenant or None,
        purpose=purpose or None,
        decision=decision or None,
        limit=PAGE_SIZE + 1,
        offset=_page_offset(page),
    )
    admin_service.record_view(
        session,
        caller.actor(request_id),
        "datasets",
        tenant_id=tenant or None,
        details={"tenant": tenant or None, "decision": decision or None, "page": page},
    )
    return _render(
        request,
        "admin/datasets.html",
        caller,
        rows=rows[:PAGE_SIZE],
        tenants=tenants.list_tenants(session),
        decisions=DECISION_FILTERS,
        purposes=UPLOAD_PURPOSES,
        filters={"tenant": tenant, "decision": decision, "purpose": purpose},
        page=page,
        has_next=len(rows) > PAGE_SIZE,
    )


@router.get("/datasets/{file_id}")
def dataset_detail(
    file_id: str, request: Request, session: DbSession, caller: AdminCaller, request_id: RequestId
) -> Response:
    """One dataset: validation report, safety report, review and the jobs that use it."""
    file, tenant_name = _load_file(session, file_id)
    review = DatasetReviewRepository(session, file.tenant_id).for_file(file.id)
    admin_service.record_view(
        session,
        caller.actor(request_id),
        "dataset",
        target_type="file",
        target_id=file.id,
        tenant_id=file.tenant_id,
    )
    return _render(
        request,
        "admin/dataset.html",
        caller,
        tenant_name=tenant_name,
        review=review,
        jobs=admin_queries.jobs_using_file(session, file),
        decisions=reviews.DECISIONS,
        policies=reviews.POLICY_DESCRIPTIONS,
        histogram_url=f"/admin/datasets/{file.id}/histogram.png",
        **dataset_report_context(file),
    )


@router.get("/datasets/{file_id}/histogram.png")
def dataset_histogram(
    file_id: str, session: DbSession, caller: AdminCaller, request_id: RequestId
) -> Response:
    """The dataset's harm score histogram."""
    from api.pages.plots import harm_histogram

    file, _tenant_name = _load_file(session, file_id)
    admin_service.record_view(
        session,
        caller.actor(request_id),
        "dataset_plot",
        target_type="file",
        target_id=file.id,
        tenant_id=file.tenant_id,
    )
    return png_response(harm_histogram(file.safety_report or {}))


@router.post("/datasets/{file_id}/decision")
def dataset_decision(
    file_id: str,
    session: DbSession,
    caller: AdminCaller,
    request_id: RequestId,
    decision: Annotated[str, Form(max_length=16)] = "",
    note: Annotated[str, Form(max_length=reviews.MAX_NOTE_CHARS)] = "",
    csrf_token: CsrfField = "",
) -> Response:
    """Approve or block a dataset (an empty decision clears it); audited."""
    check_csrf(caller, csrf_token)
    file, _tenant_name = _load_file(session, file_id)
    reviews.set_decision(
        session, file, decision or None, caller.actor(request_id, file.tenant_id), note=note
    )
    notice = {"approved": "dataset_approved", "blocked": "dataset_blocked"}.get(
        decision, "dataset_review_cleared"
    )
    return _redirect(f"/admin/datasets/{file.id}", notice)


@router.post("/datasets/{file_id}/policy")
def dataset_policy(
    file_id: str,
    session: DbSession,
    caller: AdminCaller,
    request_id: RequestId,
    policy: Annotated[str, Form(max_length=16)] = "",
    csrf_token: CsrfField = "",
) -> Response:
    """Set the dataset's training policy (empty: none); audited."""
    check_csrf(caller, csrf_token)
    file, _tenant_name = _load_file(session, file_id)
    reviews.set_policy(session, file, policy or None, caller.actor(request_id, file.tenant_id))
    return _redirect(f"/admin/datasets/{file.id}", "policy_set")


# ---- tenants and keys -------------------------------------------------------------------


@router.get("/tenants")
def tenant_list(
    request: Request, session: DbSession, caller: AdminCaller, request_id: RequestId
) -> Response:
    """Every tenant with its keys, files and jobs counted; create a tenant."""
    admin_service.record_view(session, caller.actor(request_id), "tenants")
    return _render(
        request, "admin/tenants.html", caller, summaries=admin_queries.tenant_summaries(session)
    )


@router.post("/tenants")
def create_tenant(
    session: DbSession,
    caller: AdminCaller,
    request_id: RequestId,
    name: Annotated[str, Form(max_length=64)] = "",
    csrf_token: CsrfField = "",
) -> Response:
    """Create a tenant, then show it (to issue its first key)."""
    check_csrf(caller, csrf_token)
    tenant = tenants.create_tenant(session, name.strip(), caller.actor(request_id))
    return _redirect(f"/admin/tenants/{tenant.id}", "tenant_created")


def _tenant_page(
    request: Request,
    session: DbSession,
    caller: PageCaller,
    services: Services,
    tenant_id: str,
    request_id: str,
    *,
    new_key: tenants.IssuedKey | None = None,
) -> Response:
    tenant = tenants.get_tenant(session, tenant_id)
    admin_service.record_view(
        session,
        caller.actor(request_id),
        "tenant",
        target_type="tenant",
        target_id=tenant.id,
        tenant_id=tenant.id,
    )
    response = _render(
        request,
        "admin/tenant.html",
        caller,
        tenant=tenant,
        keys=tenants.list_api_keys(session, tenant.id),
        new_key=new_key,
        limits=limits_for(tenant, services.settings),
        overrides=TenantLimitOverrides.of(tenant),
        now=utcnow(),
        usage=inference_usage.usage_totals(session, tenant.id),
    )
    return response


@router.get("/tenants/{tenant_id}")
def tenant_detail(
    tenant_id: str,
    request: Request,
    session: DbSession,
    caller: AdminCaller,
    services: Services,
    request_id: RequestId,
) -> Response:
    """A tenant's keys (prefixes only) and caps; issue and revoke keys."""
    return _tenant_page(request, session, caller, services, tenant_id, request_id)


@router.post("/tenants/{tenant_id}/keys")
def create_key(
    tenant_id: str,
    request: Request,
    session: DbSession,
    caller: AdminCaller,
    services: Services,
    request_id: RequestId,
    name: Annotated[str, Form(max_length=64)] = "",
    admin: Annotated[bool, Form()] = False,
    csrf_token: CsrfField = "",
) -> Response:
    """Issue a key; this answer is the only time the key is shown (it is not stored)."""
    check_csrf(caller, csrf_token)
    tenant = tenants.get_tenant(session, tenant_id)
    issued = tenants.create_api_key(
        session,
        tenant,
        secret=services.settings.api_key_secret.get_secret_value(),
        actor=caller.actor(request_id, tenant.id),
        is_admin=admin,
        name=name.strip() or None,
    )
    return _tenant_page(request, session, caller, services, tenant.id, request_id, new_key=issued)


@router.post("/tenants/{tenant_id}/keys/{key_id}/revoke")
def revoke_key(
    tenant_id: str,
    key_id: str,
    session: DbSession,
    caller: AdminCaller,
    request_id: RequestId,
    csrf_token: CsrfField = "",
) -> Response:
    """Revoke a key; it (and every browser session opened with it) stops working at once."""
    check_csrf(caller, csrf_token)
    tenants.revoke_api_key(session, tenant_id, key_id, caller.actor(request_id, tenant_id))
    return _redirect(f"/admin/tenants/{tenant_id}", "key_revoked")


def _optional_cap(value: str, name: str) -> int | None:
    value = value.strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise InvalidRequestError(
            f"{name} must be a whole number, or empty for the deployment's default; got {value!r}",
            code="invalid_value",
            param=name,
        ) from None


@router.post("/tenants/{tenant_id}/limits")
def set_limits(
    tenant_id: str,
    session: DbSession,
    caller: AdminCaller,
    request_id: RequestId,
    max_concurrent_jobs: Annotated[str, Form(max_length=20)] = "",
    max_file_bytes: Annotated[str, Form(max_length=20)] = "",
    max_examples: Annotated[str, Form(max_length=20)] = "",
    csrf_token: CsrfField = "",
) -> Response:
    """Set a tenant's caps (empty: the deployment's default); audited."""
    check_csrf(caller, csrf_token)
    overrides = TenantLimitOverrides(
        max_concurrent_jobs=_optional_cap(max_concurrent_jobs, "max_concurrent_jobs"),
        max_file_bytes=_optional_cap(max_file_bytes, "max_file_bytes"),
        max_examples=_optional_cap(max_examples, "max_examples"),
    )
    tenants.set_tenant_limits(session, tenant_id, overrides, caller.actor(request_id, tenant_id))
    return _redirect(f"/admin/tenants/{tenant_id}", "limits_saved")


# ---- audit log --------------------------------------------------------------------------


def _parse_time(value: str, name: str) -> dt.datetime | None:
    value = value.strip()
    if not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise InvalidRequestError(
            f"{name} must be a date and time such as 2026-11-28T14:00 (UTC); got {value!r}",
            code="invalid_value",
            param=name,
        ) from None
    return parsed.replace(tzinfo=dt.UTC) if parsed.tzinfo is None else parsed.astimezone(dt.UTC)


AuditQuery = Annotated[str, Query(max_length=200)]


def _audit_filter(tenant: str, actor: str, action: str, since: str, until: str) -> AuditFilter:
    return AuditFilter(
        tenant_id=tenant.strip() or None,
        actor_id=actor.strip() or None,
        action=action.strip() or None,
        since=_parse_time(since, "since"),
        until=_parse_time(until, "until"),
    )


@router.get("/audit")
def audit_log(
    request: Request,
    session: DbSession,
    caller: AdminCaller,
    request_id: RequestId,
    tenant: AuditQuery = "",
    actor: AuditQuery = "",
    action: AuditQuery = "",
    since: AuditQuery = "",
    until: AuditQuery = "",
    before: Annotated[int | None, Query(ge=1, le=MAX_DATABASE_INT)] = None,
) -> Response:
    """The audit log, newest first, filtered by tenant, actor, action and time (UTC)."""
    audit_filter = _audit_filter(tenant, actor, action, since, until)
    rows = admin_queries.search_audit_log(
        session, audit_filter, limit=AUDIT_PAGE_SIZE + 1, before_id=before
    )
    filters = {"tenant": tenant, "actor": actor, "action": action, "since": since, "until": until}
    admin_service.record_view(
        session,
        caller.actor(request_id),
        "audit_log",
        tenant_id=audit_filter.tenant_id,
        details={key: value for key, value in filters.items() if value},
    )
    query = {key: value for key, value in filters.items() if value}
    return _render(
        request,
        "admin/audit.html",
        caller,
        rows=rows[:AUDIT_PAGE_SIZE],
        names=admin_queries.display_names(
            session,
            (
                value
                for row in rows[:AUDIT_PAGE_SIZE]
                for value in (row.actor_id, row.tenant_id, row.target_id)
            ),
        ),
        tenants=tenants.list_tenants(session),
        actions=admin_queries.distinct_audit_actions(session),
        filters=filters,
        export_query=urlencode(query),
        older_query=urlencode({**query, "before": rows[AUDIT_PAGE_SIZE - 1].id})
        if len(rows) > AUDIT_PAGE_SIZE
        else None,
    )


CSV_COLUMNS = (
    "id",
    "created_at",
    "actor_type",
    "actor_id",
    "tenant_id",
    "action",
    "target_type",
    "target_id",
    "request_id",
    "details",
)


def _csv_cell(value: Any) -> str:
    text = "" if value is None else str(value)
    # A leading =, +, - or @ would run as a formula in a spreadsheet.
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text


@router.get("/audit.csv")
def audit_log_csv(
    session: DbSession,
    caller: AdminCaller,
    request_id: RequestId,
    tenant: AuditQuery = "",
    actor: AuditQuery = "",
    action: AuditQuery = "",
    since: AuditQuery = "",
    until: AuditQuery = "",
) -> Response:
    """The filtered audit log as CSV, oldest first (at most 100,000 rows); audited."""
    audit_filter = _audit_filter(tenant, actor, action, since, until)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    n_rows = 0
    for row in admin_queries.iter_audit_log(session, audit_filter, max_rows=AUDIT_EXPORT_MAX_ROWS):
        writer.writerow(
            [
                _csv_cell(value)
                for value in (
                    row.id,
                    row.created_at.isoformat(),
                    row.actor_type,
                    row.actor_id,
                    row.tenant_id,
                    row.action,
                    row.target_type,
                    row.target_id,
                    row.request_id,
                    json.dumps(row.details, sort_keys=True) if row.details else None,
                )
            ]
        )
        n_rows += 1
    admin_service.record_view(
        session,
        caller.actor(request_id),
        "audit_log_export",
        tenant_id=audit_filter.tenant_id,
        details={"rows": n_rows, "tenant": tenant or None, "action": action or None},
    )
    stamp = utcnow().strftime("%Y%m%dT%H%M%SZ")
    return Response(
        buffer.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={
            "Content-Disposition": f'attachment; filename="audit-log-{stamp}.csv"',
            "X-Export-Truncated": "true" if n_rows >= AUDIT_EXPORT_MAX_ROWS else "false",
        },
    )
