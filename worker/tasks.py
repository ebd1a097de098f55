"""Celery tasks: each takes ids, opens its own transactions and calls one service function.

Every task is safe to run twice: it returns early when its work is already done (redelivery
after a crash is normal with late acks). The training task imports the ML stack only when it
runs, so cpu workers never load torch for it.
"""

from __future__ import annotations

import logging
import time

from sqlalchemy.exc import OperationalError

from bds_service.dispatch import redispatch_unclaimed
from bds_service.files import service as files_service
from bds_service.jobs import service as jobs_service
from bds_service.jobs.reaper import reap_expired_leases
from bds_service.jobs.repository import why_not_claimable
from bds_service.models import utcnow
from bds_service.tasks import (
    PREPARE_JOB,
    REAP_JOBS,
    RUN_FINETUNE_JOB,
    SCORE_DATASET,
    VALIDATE_FILE,
)
from worker.celery_app import app
from worker.context import worker_context

logger = logging.getLogger(__name__)

PARTIALS_SWEEP_INTERVAL_S = 3600.0
_last_partials_sweep = -PARTIALS_SWEEP_INTERVAL_S  # the first beat of a process sweeps

# Transient database trouble is retried with backoff; anything else is a bug or bad data and
# is recorded on the file or job by the service itself.
_RETRY = {
    "autoretry_for": (OperationalError,),
    "retry_backoff": True,
    "retry_backoff_max": 300,
    "retry_jitter": True,
    "max_retries": 5,
}


@app.task(name=VALIDATE_FILE, **_RETRY)
def validate_file(file_id: str) -> str:
    """Validate an uploaded file line by line; returns its status."""
    context = worker_context(app)
    return files_service.run_validation(context.uow, file_id, context.storage, context.settings)


@app.task(name=SCORE_DATASET, **_RETRY)
def score_dataset(file_id: str) -> str:
    """Score a processed dataset with the amortized scheduler; returns the report status."""
    context = worker_context(app)
    return files_service.run_scoring(context.uow, file_id, context.storage, context.settings)


@app.task(name=PREPARE_JOB, **_RETRY)
def prepare_job(job_id: str) -> str:
    """Queue a job whose files are processed (or fail it); returns its status."""
    context = worker_context(app)
    with context.uow() as session:
        return jobs_service.prepare_job(session, job_id)


@app.task(name=RUN_FINETUNE_JOB, **_RETRY)
def run_finetune_job(job_id: str) -> str:
    """Claim and train a job; returns its final status or why it was not run."""
    context = worker_context(app)
    # A duplicate message (a cancelled job, a job another worker holds, a re-dispatched copy)
    # costs one read, not the import of the training stack.
    with context.uow() as session:
        reason = why_not_claimable(session, job_id, utcnow())
    if reason is not None:
        logger.info("job %s not run: %s", job_id, reason)
        return reason
    from bds_service.jobs.runner import RunContext, run_job

    status = run_job(RunContext(context.uow, context.storage, context.settings), job_id)
    if status == "succeeded":
        # Tell the inference engine about the adapter (vLLM's dynamic LoRA loading). Best
        # effort: if the engine is down, the API registers the adapter on its first use.
        from bds_service.inference.client import register_job_adapter

        register_job_adapter(context.uow, context.storage, context.settings, job_id)
    return status


@app.task(name=REAP_JOBS, ignore_result=True)
def reap_jobs() -> dict[str, list[str]]:
    """Re-queue (or fail) jobs whose worker stopped renewing its lease, then send again the
    messages of work no worker claimed in time (bds_service.dispatch)."""
    context = worker_context(app)
    with context.uow() as session:
        outcome = reap_expired_leases(session, max_attempts=context.settings.max_attempts)
    if any(outcome.values()):
        logger.warning("lease reaper: %s", outcome)
    with context.uow() as session:
        sweep = redispatch_unclaimed(session, context.settings, utcnow())
    if sweep:
        logger.warning("dispatch sweep sent again: %s", sweep.sent)
    global _last_partials_sweep
    if time.monotonic() - _last_partials_sweep > PARTIALS_SWEEP_INTERVAL_S:
        _last_partials_sweep = time.monotonic()
        removed = context.storage.remove_stale_partials(context.settings.stale_partial_seconds)
        if removed:
            logger.warning("removed %d stale partial file(s) from storage", removed)
    return {**outcome, **{f"redispatched {task}": ids for task, ids in sweep.sent.items()}}
