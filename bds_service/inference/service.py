"""Which engine model a chat request names, and the tokens it used.

A request's ``model`` is a base model of the deployment (``BDS_BASE_MODELS``) or the
``fine_tuned_model`` of one of the caller's succeeded jobs. Another tenant's model is a 404,
exactly like an id that never existed; the model of the caller's own job that has not
succeeded is a 409 ``model_not_ready``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func
from sqlalchemy.orm import Session

from bds_core.eval import RefusalPhraseJudge, judge_name
from bds_service.errors import ConflictError, NotFoundError
from bds_service.ids import JOB_PREFIX, new_id
from bds_service.jobs.repository import JobRepository
from bds_service.jobs.states import JobStatus
from bds_service.models import FineTuningJob, InferenceUsage, SafetyEvaluation
from bds_service.repository import TenantScopedRepository
from bds_service.settings import Settings
from bds_service.storage import LocalStorage

USAGE_PREFIX = "usage-"
SAFETY_EVAL_PREFIX = "safeval-"


@dataclass(frozen=True)
class ModelTarget:
    """What serves a request: the engine's model name and, for a fine-tuned model, its adapter."""

    model: str
    base_model: str
    adapter_dir: Path | None = None
    job_id: str | None = None

    @property
    def adapter(self) -> tuple[str, Path] | None:
        """(engine name, folder) of the adapter, or None for a base model."""
        return (self.model, self.adapter_dir) if self.adapter_dir is not None else None


def _not_found(model: str, settings: Settings) -> NotFoundError:
    return NotFoundError(
        f"no model {model[:300]!r}: use a base model ({', '.join(settings.base_models)}) or the "
        "fine_tuned_model of one of your succeeded fine-tuning jobs",
        code="model_not_found",
        param="model",
    )


def job_target(job: FineTuningJob, storage: LocalStorage) -> ModelTarget:
    """The fine-tuned model of the tenant's job; 409 unless the job has succeeded."""
    if job.status != JobStatus.SUCCEEDED or job.adapter_key is None or not job.fine_tuned_model:
        raise ConflictError(
            f"fine-tuning job {job.id} is {job.status}; its model can be used once the job has "
            "succeeded",
            code="model_not_ready",
            param="model",
        )
    adapter_dir = storage.path(job.adapter_key)
    if not adapter_dir.is_dir():
        raise ConflictError(
            f"the adapter of job {job.id} is no longer stored", code="adapter_not_available"
        )
    return ModelTarget(job.fine_tuned_model, job.model, adapter_dir, job.id)


def resolve_model(
    session: Session, tenant_id: str, model: str, settings: Settings, storage: LocalStorage
) -> ModelTarget:
    """The target of ``model`` for this tenant (404 for unknown and foreign models)."""
    if model in settings.base_models:
        return ModelTarget(model, model)
    parts = model.split(":")
    if len(parts) < 5 or parts[0] != "ft" or parts[-1].startswith("ckpt-"):
        raise _not_found(model, settings)
    job = JobRepository(session, tenant_id).get(JOB_PREFIX + parts[-1])
    if job is None:
        raise _not_found(model, settings)
    if job.status == JobStatus.SUCCEEDED and job.fine_tuned_model != model:
        raise _not_found(model, settings)
    return job_target(job, storage)


def record_usage(
    session: Session,
    *,
    tenant_id: str,
    api_key_id: str | None,
    target: ModelTarget,
    source: str,
    prompt_tokens: int,
    completion_tokens: int,
    request_id: str | None,
) -> None:
    """Charge one completion's tokens to the tenant."""
    session.add(
        InferenceUsage(
            id=new_id(USAGE_PREFIX),
            tenant_id=tenant_id,
            api_key_id=api_key_id,
            model=target.model,
            job_id=target.job_id,
            source=source,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            request_id=request_id,
        )
    )


class UsageRepository(TenantScopedRepository[InferenceUsage]):
    """One tenant's chat completion usage."""

    model = InferenceUsage

    def totals_by_model(self) -> list[dict[str, Any]]:
        """Requests and tokens per model, most used first."""
        statement = (
            self.scoped()
            .with_only_columns(
                InferenceUsage.model,
                func.count(),
                func.sum(InferenceUsage.prompt_tokens),
                func.sum(InferenceUsage.completion_tokens),
            )
            .group_by(InferenceUsage.model)
        )
        rows = [
            {
                "model": model,
                "requests": int(requests),
                "prompt_tokens": int(prompt or 0),
                "completion_tokens": int(completion or 0),
            }
            for model, requests, prompt, completion in self.session.execute(statement)
        ]
        return sorted(rows, key=lambda row: -(row["prompt_tokens"] + row["completion_tokens"]))


def usage_totals(session: Session, tenant_id: str) -> list[dict[str, Any]]:
    """The tenant's requests and tokens per model."""
    return UsageRepository(session, tenant_id).totals_by_model()


class SafetyEvaluationRepository(TenantScopedRepository[SafetyEvaluation]):
    """One tenant's on-demand safety evaluations."""

    model = SafetyEvaluation

    def for_job(self, job_id: str, limit: int = 20) -> list[SafetyEvaluation]:
        """The job's evaluations, newest first."""
        statement = (
            self.scoped()
            .where(SafetyEvaluation.job_id == job_id)
            .order_by(SafetyEvaluation.created_at.desc(), SafetyEvaluation.id.desc())
            .limit(limit)
        )
        return list(self.session.scalars(statement))


def store_safety_evaluation(
    session: Session,
    *,
    job: FineTuningJob,
    created_by: str,
    prompts: list[str],
    base_answers: list[str],
    tuned_answers: list[str],
) -> SafetyEvaluation:
    """Judge each answer for refusal (bds_core's refusal-phrase judge, the one the
    post-training evaluation uses) and keep the evaluation: per prompt both answers and
    whether each refused, and the harmful scores (percent answered, not refused)."""
    judge = RefusalPhraseJudge()
    base_refused = [judge.is_refusal(answer) for answer in base_answers]
    tuned_refused = [judge.is_refusal(answer) for answer in tuned_answers]
    results: list[dict[str, Any]] = [
        {
            "prompt": prompt,
            "base": {"answer": base, "refused": refused_base},
            "tuned": {"answer": tuned, "refused": refused_tuned},
        }
        for prompt, base, tuned, refused_base, refused_tuned in zip(
            prompts, base_answers, tuned_answers, base_refused, tuned_refused, strict=True
        )
    ]
    n = len(results)
    evaluation = SafetyEvaluation(
        id=new_id(SAFETY_EVAL_PREFIX),
        job_id=job.id,
        tenant_id=job.tenant_id,
        created_by=created_by,
        judge=judge_name(judge),
        n_prompts=n,
        harmful_score_base=100.0 * base_refused.count(False) / n,
        harmful_score_tuned=100.0 * tuned_refused.count(False) / n,
        results={"prompts": results},
    )
    session.add(evaluation)
    session.flush()
    return evaluation


def safety_evaluations(session: Session, tenant_id: str, job_id: str) -> list[SafetyEvaluation]:
    """The job's stored evaluations, newest first."""
    return SafetyEvaluationRepository(session, tenant_id).for_job(job_id)
