"""The playground and on-demand safety evaluations, on the job page of the dashboard
(``/admin/jobs/{id}``) and of the customer's reports (``/reports/jobs/{id}``).

The playground sends one prompt to the job's base model and to its fine-tuned model and shows
the two answers side by side; a few harmful prompts of the job's evaluation set are buttons
that send themselves. A safety evaluation asks both models a list of prompts, judges each
answer for refusal and stores the harmful scores, listed on the job page. Both go through the
inference engine like ``/v1/chat/completions`` (tokens charged to the caller's tenant); pages
work without JavaScript. On the dashboard every use is audited under the job's tenant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from anyio import from_thread
from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.orm import Session

from api import inference
from api.deps import AppServices, DbSession, RequestId, Services
from api.pages.auth import AdminCaller, Caller, CsrfField, PageCaller, check_csrf
from api.pages.routing import PageRoute
from api.pages.templating import templates
from bds_service.admin import repository as admin_queries
from bds_service.admin import service as admin_service
from bds_service.errors import InvalidRequestError, NotFoundError, ServiceError
from bds_service.inference import service as inference_service
from bds_service.jobs import service as jobs
from bds_service.jobs.evaluation import EvaluationConfigError, load_harmful_prompts
from bds_service.jobs.states import JobStatus
from bds_service.models import FineTuningJob
from bds_service.settings import Settings

admin_router = APIRouter(prefix="/admin", route_class=PageRoute, include_in_schema=False)
reports_router = APIRouter(prefix="/reports", route_class=PageRoute, include_in_schema=False)

HARMFUL_PROMPTS_SHOWN = 4
PLAYGROUND_MAX_TOKENS = 64
MAX_PROMPT_CHARS = 4000
MAX_EVAL_PROMPTS = 50

PromptField = Annotated[str, Form(max_length=MAX_PROMPT_CHARS)]


def harmful_prompts(job: FineTuningJob, settings: Settings) -> list[str]:
    """A few held-out harmful prompts: the ones the job's own evaluation asked, else the first
    of the provider's evaluation file."""
    evaluation = (job.safety_report or {}).get("evaluation") or {}
    prompts = [
        str(sample["prompt"])
        for sample in evaluation.get("sample_answers_after") or []
        if isinstance(sample, dict) and sample.get("prompt")
    ]
    if not prompts and settings.eval_harmful_prompts:
        try:
            prompts = load_harmful_prompts(
                Path(settings.eval_harmful_prompts), HARMFUL_PROMPTS_SHOWN
            )
        except (EvaluationConfigError, OSError, ValueError):
            prompts = []
    return prompts[:HARMFUL_PROMPTS_SHOWN]


def playground_context(
    session: Session, job: FineTuningJob, settings: Settings, page_base: str
) -> dict[str, Any]:
    """What the job page's playground and safety evaluation sections need."""
    return {
        "playground_base": page_base,
        "playground_ready": job.status == JobStatus.SUCCEEDED and bool(job.fine_tuned_model),
        "harmful_prompts": harmful_prompts(job, settings),
        "safety_evals": inference_service.safety_evaluations(session, job.tenant_id, job.id),
    }


def _caller_for_usage(caller: PageCaller, request_id: str) -> inference.Caller:
    principal = caller.principal
    return inference.Caller(principal.tenant_id, principal.key_id, request_id)


def _render_playground(
    request: Request,
    services: AppServices,
    caller: PageCaller,
    job: FineTuningJob,
    page_base: str,
    *,
    prompt: str = "",
    answers: dict[str, str] | None = None,
    error: ServiceError | None = None,
) -> Response:
    context = {
        "caller": caller,
        "csrf": caller.csrf_token or "",
        "job": job,
        "job_page": page_base,
        "prompt": prompt,
        "answers": answers,
        "error": error.message if error else None,
        "harmful_prompts": harmful_prompts(job, services.settings),
        "max_tokens": min(PLAYGROUND_MAX_TOKENS, services.settings.inference_max_tokens),
        "ready": job.status == JobStatus.SUCCEEDED and bool(job.fine_tuned_model),
    }
    return templates.TemplateResponse(
        request, "playground.html", context, status_code=error.status_code if error else 200
    )


def _ask(
    request: Request,
    session: Session,
    services: AppServices,
    caller: PageCaller,
    job: FineTuningJob,
    page_base: str,
    prompt: str,
    request_id: str,
) -> Response:
    prompt = prompt.strip()
    if not prompt:
        error: ServiceError = InvalidRequestError(
            "write a prompt or pick one of the harmful prompts", code="missing_prompt"
        )
        return _render_playground(request, services, caller, job, page_base, error=error)
    # End the request's transaction before waiting for the engine (on SQLite it holds the
    # write lock, which the usage record needs).
    session.commit()
    max_tokens = min(PLAYGROUND_MAX_TOKENS, services.settings.inference_max_tokens)
    try:
        target = inference_service.job_target(job, services.storage)
        answers = from_thread.run(
            inference.side_by_side,
            services,
            _caller_for_usage(caller, request_id),
            target,
            prompt,
            max_tokens,
            "playground",
        )
    except ServiceError as failure:
        return _render_playground(
            request, services, caller, job, page_base, prompt=prompt, error=failure
        )
    return _render_playground(
        request, services, caller, job, page_base, prompt=prompt, answers=answers
    )


def _evaluate(
    session: Session,
    services: AppServices,
    caller: PageCaller,
    job: FineTuningJob,
    page_base: str,
    prompts_text: str,
    request_id: str,
) -> Response:
    prompts = [line.strip() for line in prompts_text.splitlines() if line.strip()]
    if not prompts or len(prompts) > MAX_EVAL_PROMPTS:
        raise InvalidRequestError(
            f"give 1 to {MAX_EVAL_PROMPTS} prompts, one per line (got {len(prompts)})",
            code="invalid_prompts",
            param="prompts",
        )
    if any(len(prompt) > MAX_PROMPT_CHARS for prompt in prompts):
        raise InvalidRequestError(
            f"a prompt is longer than {MAX_PROMPT_CHARS} characters",
            code="invalid_prompts",
            param="prompts",
        )
    session.commit()
    from_thread.run(
        lambda: inference.run_safety_eval(
            services,
            _caller_for_usage(caller, request_id),
            job.tenant_id,
            job.id,
            prompts,
            max_tokens=min(PLAYGROUND_MAX_TOKENS, services.settings.inference_max_tokens),
            actor=caller.actor(request_id, job.tenant_id),
        )
    )
    return RedirectResponse(f"{page_base}#safety-evals", status_code=303)


# ---- the dashboard ----------------------------------------------------------------------


def _admin_job(session: Session, job_id: str) -> FineTuningJob:
    found = admin_queries.job_by_id(session, job_id)
    if found is None:
        raise NotFoundError(f"no fine-tuning job with id {job_id!r}", code="job_not_found")
    return found[0]


def _audit_use(
    session: Session, caller: PageCaller, request_id: str, job: FineTuningJob, what: str
) -> None:
    admin_service.record_view(
        session,
        caller.actor(request_id, job.tenant_id),
        what,
        target_type="fine_tuning_job",
        target_id=job.id,
        tenant_id=job.tenant_id,
    )


@admin_router.get("/jobs/{job_id}/playground")
def admin_playground(
    job_id: str,
    request: Request,
    session: DbSession,
    services: Services,
    caller: AdminCaller,
    request_id: RequestId,
) -> Response:
    """The playground of any tenant's job."""
    job = _admin_job(session, job_id)
    _audit_use(session, caller, request_id, job, "job_playground")
    return _render_playground(request, services, caller, job, f"/admin/jobs/{job.id}")


@admin_router.post("/jobs/{job_id}/playground")
def admin_playground_ask(
    job_id: str,
    request: Request,
    session: DbSession,
    services: Services,
    caller: AdminCaller,
    request_id: RequestId,
    prompt: PromptField = "",
    csrf_token: CsrfField = "",
) -> Response:
    """Ask the base and the fine-tuned model of any tenant's job one prompt."""
    check_csrf(caller, csrf_token)
    job = _admin_job(session, job_id)
    _audit_use(session, caller, request_id, job, "job_playground_ask")
    page_base = f"/admin/jobs/{job.id}"
    return _ask(request, session, services, caller, job, page_base, prompt, request_id)


@admin_router.post("/jobs/{job_id}/safety_eval")
def admin_safety_eval(
    job_id: str,
    session: DbSession,
    services: Services,
    caller: AdminCaller,
    request_id: RequestId,
    prompts: Annotated[str, Form(max_length=MAX_EVAL_PROMPTS * (MAX_PROMPT_CHARS + 1))] = "",
    csrf_token: CsrfField = "",
) -> Response:
    """The operator's own prompts against any tenant's job (stored, shown on the job page)."""
    check_csrf(caller, csrf_token)
    job = _admin_job(session, job_id)
    return _evaluate(session, services, caller, job, f"/admin/jobs/{job.id}", prompts, request_id)


# ---- the customer's reports -------------------------------------------------------------


@reports_router.get("/jobs/{job_id}/playground")
def report_playground(
    job_id: str, request: Request, session: DbSession, services: Services, caller: Caller
) -> Response:
    """The playground of your job."""
    job = jobs.get_job(session, caller.principal.tenant_id, job_id)
    return _render_playground(request, services, caller, job, f"/reports/jobs/{job.id}")


@reports_router.post("/jobs/{job_id}/playground")
def report_playground_ask(
    job_id: str,
    request: Request,
    session: DbSession,
    services: Services,
    caller: Caller,
    request_id: RequestId,
    prompt: PromptField = "",
    csrf_token: CsrfField = "",
) -> Response:
    """Ask the base and the fine-tuned model of your job one prompt."""
    check_csrf(caller, csrf_token)
    job = jobs.get_job(session, caller.principal.tenant_id, job_id)
    page_base = f"/reports/jobs/{job.id}"
    return _ask(request, session, services, caller, job, page_base, prompt, request_id)


@reports_router.post("/jobs/{job_id}/safety_eval")
def report_safety_eval(
    job_id: str,
    session: DbSession,
    services: Services,
    caller: Caller,
    request_id: RequestId,
    prompts: Annotated[str, Form(max_length=MAX_EVAL_PROMPTS * (MAX_PROMPT_CHARS + 1))] = "",
    csrf_token: CsrfField = "",
) -> Response:
    """Your own prompts against your job (stored, shown on the job page)."""
    check_csrf(caller, csrf_token)
    job = jobs.get_job(session, caller.principal.tenant_id, job_id)
    return _evaluate(session, services, caller, job, f"/reports/jobs/{job.id}", prompts, request_id)
