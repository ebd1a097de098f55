"""``/v1/chat/completions`` on base and fine-tuned models, and on-demand safety evaluations.

Inference runs in the engine (vLLM, or the local inference worker), never in this process:
these routes check the caller and the model, forward, relay and record the tokens used.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from api import inference
from api.deps import CurrentPrincipal, DbSession, RequestId, Services
from api.schemas.chat import ChatCompletionCreate, SafetyEvalCreate, SafetyEvalObject
from api.schemas.common import ERROR_RESPONSES, ListResponse, list_response
from bds_service.inference import service as inference_service
from bds_service.jobs import service as jobs

router = APIRouter(tags=["inference"], responses=ERROR_RESPONSES)


@router.post(
    "/v1/chat/completions",
    response_model=None,
    responses={
        200: {"content": {"application/json": {}, "text/event-stream": {}}},
        409: {"description": "the fine-tuned model's job has not succeeded"},
        503: {"description": "the inference engine is not available"},
    },
)
async def create_chat_completion(
    body: ChatCompletionCreate,
    services: Services,
    principal: CurrentPrincipal,
    request_id: RequestId,
) -> JSONResponse | StreamingResponse:
    """A chat completion from a base model or one of your fine-tuned models
    (``job.fine_tuned_model``), in OpenAI's shape; ``stream: true`` answers with server-sent
    events in OpenAI's chunk format."""
    caller = inference.Caller(principal.tenant_id, principal.key_id, request_id)
    target = await inference.resolve_target(services, principal.tenant_id, body.model)
    forwarded = inference.engine_body(body, target, services.settings.inference_max_tokens)
    assert services.inference is not None
    if not body.stream:
        result = await inference.complete(services, caller, target, forwarded, "chat")
        return JSONResponse(result)
    response = await services.inference.open_stream(forwarded, target.adapter)
    return StreamingResponse(
        inference.relay_stream(
            services, caller, target, response, include_usage=body.wants_usage_chunk
        ),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.post(
    "/v1/fine_tuning/jobs/{fine_tuning_job_id}/safety_eval",
    response_model=SafetyEvalObject,
    tags=["fine_tuning"],
    responses={409: {"description": "the job has not succeeded"}},
)
async def create_safety_eval(
    fine_tuning_job_id: str,
    body: SafetyEvalCreate,
    services: Services,
    principal: CurrentPrincipal,
    request_id: RequestId,
) -> SafetyEvalObject:
    """Ask the fine-tuned model and its base model your prompts (greedy), judge each answer
    for refusal and store the harmful scores: the percent of prompts answered, not refused."""
    evaluation = await inference.run_safety_eval(
        services,
        inference.Caller(principal.tenant_id, principal.key_id, request_id),
        principal.tenant_id,
        fine_tuning_job_id,
        body.prompts,
        max_tokens=body.max_tokens,
        actor=principal.actor(request_id),
    )
    return SafetyEvalObject.from_row(evaluation)


@router.get(
    "/v1/fine_tuning/jobs/{fine_tuning_job_id}/safety_evals",
    response_model=ListResponse[SafetyEvalObject],
    tags=["fine_tuning"],
)
def list_safety_evals(
    fine_tuning_job_id: str, session: DbSession, principal: CurrentPrincipal
) -> ListResponse[SafetyEvalObject]:
    """The job's stored safety evaluations, newest first (the 20 most recent)."""
    jobs.get_job(session, principal.tenant_id, fine_tuning_job_id)
    data = [
        SafetyEvalObject.from_row(row)
        for row in inference_service.safety_evaluations(
            session, principal.tenant_id, fine_tuning_job_id
        )
    ]
    return list_response(data)


@router.get("/v1/usage", tags=["inference"])
async def usage(services: Services, principal: CurrentPrincipal) -> dict[str, Any]:
    """Your chat completion requests and tokens per model (BDS addition)."""

    def totals() -> list[dict[str, Any]]:
        with services.session_factory() as session:
            return inference_service.usage_totals(session, principal.tenant_id)

    rows = await run_in_threadpool(totals)
    return {"object": "list", "data": rows}
