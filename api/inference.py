"""Forwarding chat completions to the inference engine, for the API routes and the pages.

The engine (vLLM, or the local inference worker) runs outside the API process; this module
resolves which model a tenant's request names, forwards it, relays streamed chunks and records
the tokens used. Database work runs in the thread pool, engine calls on the event loop.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
from starlette.concurrency import run_in_threadpool

from api.deps import AppServices
from api.schemas.chat import ChatCompletionCreate
from bds_service import audit
from bds_service.audit import Actor
from bds_service.errors import InvalidRequestError
from bds_service.inference import service as inference
from bds_service.inference.client import iter_events
from bds_service.inference.service import ModelTarget
from bds_service.jobs import service as jobs
from bds_service.models import SafetyEvaluation


@dataclass(frozen=True)
class Caller:
    """Whose tokens these are: the tenant, the key (None for a page session) and the request."""

    tenant_id: str
    api_key_id: str | None
    request_id: str | None


async def resolve_target(services: AppServices, tenant_id: str, model: str) -> ModelTarget:
    """The tenant's model (404 unknown or foreign, 409 not succeeded)."""

    def resolve() -> ModelTarget:
        with services.session_factory() as session:
            return inference.resolve_model(
                session, tenant_id, model, services.settings, services.storage
            )

    return await run_in_threadpool(resolve)


async def record_usage(
    services: AppServices, caller: Caller, target: ModelTarget, source: str, usage: dict[str, Any]
) -> None:
    """Charge the tokens of one completion to the caller's tenant."""

    def record() -> None:
        with services.session_factory() as session:
            inference.record_usage(
                session,
                tenant_id=caller.tenant_id,
                api_key_id=caller.api_key_id,
                target=target,
                source=source,
                prompt_tokens=int(usage.get("prompt_tokens") or 0),
                completion_tokens=int(usage.get("completion_tokens") or 0),
                request_id=caller.request_id,
            )
            session.commit()

    await run_in_threadpool(record)


def engine_body(
    body: ChatCompletionCreate, target: ModelTarget, max_tokens_cap: int
) -> dict[str, Any]:
    """The request as the engine gets it: its model name, a bounded max_tokens."""
    requested = body.max_completion_tokens or body.max_tokens
    if requested is not None and requested > max_tokens_cap:
        param = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
        raise InvalidRequestError(
            f"{param} is {requested}; this deployment answers with at most {max_tokens_cap} tokens",
            code="invalid_value",
            param=param,
        )
    forwarded: dict[str, Any] = {
        "model": target.model,
        "messages": [message.as_dict() for message in body.messages],
        "max_tokens": requested or max_tokens_cap,
    }
    for name in ("temperature", "top_p", "stop", "seed"):
        value = getattr(body, name)
        if value is not None:
            forwarded[name] = value
    if body.stream:
        forwarded["stream"] = True
        forwarded["stream_options"] = {"include_usage": True}  # usage is always recorded
    return forwarded


async def complete(
    services: AppServices, caller: Caller, target: ModelTarget, body: dict[str, Any], source: str
) -> dict[str, Any]:
    """A non-streaming completion, its usage recorded."""
    assert services.inference is not None
    result = await services.inference.complete(body, target.adapter)
    result["model"] = target.model
    await record_usage(services, caller, target, source, result.get("usage") or {})
    return result


async def relay_stream(
    services: AppServices,
    caller: Caller,
    target: ModelTarget,
    response: httpx.Response,
    *,
    include_usage: bool,
) -> AsyncIterator[str]:
    """Server-sent events for the client from the engine's stream; usage recorded at its end.

    The engine is always asked for a usage chunk; the client gets it only if it asked too.
    """
    usage: dict[str, Any] | None = None
    try:
        async for payload in iter_events(response):
            if payload is None:
                break
            if isinstance(payload.get("usage"), dict):
                usage = payload["usage"]
            if not include_usage:
                payload.pop("usage", None)
                if not payload.get("choices") and "error" not in payload:
                    continue  # the usage-only chunk
            if "model" in payload:
                payload["model"] = target.model
            yield f"data: {_json(payload)}\n\n"
        # Recorded before the client learns that the stream is over. A client that leaves
        # early closes the engine's stream too, which stops the generation.
        if usage is not None:
            await record_usage(services, caller, target, "chat", usage)
        yield "data: [DONE]\n\n"
    finally:
        await response.aclose()


def _json(payload: dict[str, Any]) -> str:
    return json.dumps(payload, separators=(",", ":"))


async def answer(
    services: AppServices,
    caller: Caller,
    target: ModelTarget,
    prompt: str,
    *,
    max_tokens: int,
    source: str,
) -> str:
    """The greedy answer of ``target`` to one user prompt (playground, safety evaluation)."""
    body = {
        "model": target.model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
    }
    result = await complete(services, caller, target, body, source)
    choices = result.get("choices") or [{}]
    return str((choices[0].get("message") or {}).get("content") or "").strip()


async def side_by_side(
    services: AppServices,
    caller: Caller,
    job_target: ModelTarget,
    prompt: str,
    max_tokens: int,
    source: str,
) -> dict[str, str]:
    """The base model's and the fine-tuned model's answers to one prompt, asked together."""
    base = ModelTarget(job_target.base_model, job_target.base_model)
    base_answer, tuned_answer = await asyncio.gather(
        answer(services, caller, base, prompt, max_tokens=max_tokens, source=source),
        answer(services, caller, job_target, prompt, max_tokens=max_tokens, source=source),
    )
    return {"base": base_answer, "tuned": tuned_answer}


async def job_model(services: AppServices, tenant_id: str, job_id: str) -> ModelTarget:
    """The fine-tuned model of the tenant's job (404 unknown or foreign, 409 not succeeded)."""

    def load() -> ModelTarget:
        with services.session_factory() as session:
            job = jobs.get_job(session, tenant_id, job_id)
            return inference.job_target(job, services.storage)

    return await run_in_threadpool(load)


async def run_safety_eval(
    services: AppServices,
    caller: Caller,
    job_tenant_id: str,
    job_id: str,
    prompts: list[str],
    *,
    max_tokens: int,
    actor: Actor,
) -> SafetyEvaluation:
    """Ask the tuned and the base model every prompt, judge refusals, store the result.

    ``job_tenant_id`` owns the job (the caller's own tenant, or any for an operator); the
    tokens are charged to the caller's tenant.
    """
    target = await job_model(services, job_tenant_id, job_id)
    pairs = await asyncio.gather(
        *(
            side_by_side(services, caller, target, prompt, max_tokens, "safety_eval")
            for prompt in prompts
        )
    )

    def store() -> SafetyEvaluation:
        with services.session_factory() as session:
            job = jobs.get_job(session, job_tenant_id, job_id)
            evaluation = inference.store_safety_evaluation(
                session,
                job=job,
                created_by=f"{actor.actor_type}:{actor.actor_id}",
                prompts=prompts,
                base_answers=[pair["base"] for pair in pairs],
                tuned_answers=[pair["tuned"] for pair in pairs],
            )
            audit.record(
                session,
                actor,
                "fine_tuning_job.safety_eval",
                target_type="fine_tuning_job",
                target_id=job.id,
                tenant_id=job.tenant_id,
                details={
                    "safety_eval_id": evaluation.id,
                    "n_prompts": evaluation.n_prompts,
                    "harmful_score_base": evaluation.harmful_score_base,
                    "harmful_score_tuned": evaluation.harmful_score_tuned,
                },
            )
            session.commit()
            session.refresh(evaluation)
            session.expunge(evaluation)
            return evaluation

    return await run_in_threadpool(store)
