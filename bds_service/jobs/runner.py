"""Runs one fine-tuning job: claim, train with bds_core, evaluate, record the outcome.

Postgres owns the job. The runner claims it with a compare-and-set UPDATE (status, lease owner
and lease expiry in one statement), keeps the lease alive from a heartbeat thread, and stops as
soon as the claim is lost: a duplicate delivery or a worker that outlived its lease never writes
a result. No transaction stays open while the model trains; each event, checkpoint and state
change is its own short transaction.

bds_core calls made here (the contract in the design notes):
``bds_core.training.train(TrainConfig(...), callbacks=[...], should_cancel=...)``, or for a
job that asks for several GPUs (``method.bds.n_gpus``)
``bds_core.training.launch.train_with_torchrun(config, n_gpus, ...)``, which runs torchrun
children on this worker's GPUs while this process keeps the lease and reads the cancellation,
``bds_core.schedulers.scheduler_settings_from_flat`` (``method.bds`` to SchedulerSettings),
and for the evaluation ``bds_core.models.load_model``, ``bds_core.eval.harmful_score`` /
``exact_match_accuracy`` (see :mod:`.evaluation`).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sqlalchemy import select

from bds_core.budget import PRE_SWITCH_LOSS_TIMING
from bds_core.schedulers import scheduler_settings_from_flat
from bds_core.training import ProgressEvent, TrainConfig, TrainerCallback, TrainResult, train
from bds_core.training.launch import train_with_torchrun, visible_gpu_count
from bds_service.audit import Actor
from bds_service.dataset_reviews.training import training_file_under_policy
from bds_service.db import UnitOfWork
from bds_service.files.repository import load_file_for_task
from bds_service.ids import CHECKPOINT_PREFIX, new_id
from bds_service.jobs.lifecycle import (
    JobChange,
    add_event,
    fail_job,
    job_error,
    move_job,
)
from bds_service.jobs.repository import claim, load_job_for_task, renew_lease
from bds_service.jobs.service import fine_tuned_model_name
from bds_service.jobs.states import TERMINAL_STATUSES, JobStatus
from bds_service.models import FineTuningJob, JobCheckpoint, JobEvent, Tenant, utcnow
from bds_service.settings import Settings
from bds_service.storage import LocalStorage, job_key

logger = logging.getLogger(__name__)


class ClaimLostError(RuntimeError):
    """Another worker (or the reaper) took the job; this worker must stop without writing."""


def new_worker_id() -> str:
    """Identifies one attempt: host, process and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class RunContext:
    """What a job run needs from its process."""

    uow: UnitOfWork
    storage: LocalStorage
    settings: Settings
    worker_id: str = field(default_factory=new_worker_id)


@dataclass(frozen=True)
class JobPlan:
    """A snapshot of the claimed job: everything training needs, read in one transaction."""

    job_id: str
    tenant_id: str
    tenant_name: str
    model: str
    method_type: str
    hyperparameters: dict[str, Any]
    bds: dict[str, Any]
    seed: int
    attempt: int
    train_file: Path
    validation_file: Path | None
    safety_file: Path | None
    run_dir: Path
    run_key: str
    fine_tuned_model: str


def job_bds_settings(plan: JobPlan) -> dict[str, Any]:
    """The job's ``method.bds`` as it trains.

    A job stores its resolved alignment budget and loss timing when it is created. A bds job
    stored without them was created before the default became a quarter of the batch with
    loss timing `before`: it trains, and resumes its checkpoints, with the budget it was
    created under (`batch_size` alignment rows, loss timing `after`), not today's default.
    """
    bds = dict(plan.bds)
    if plan.method_type == "bds" and bds.get("safety_batch_size") is None:
        bds["safety_batch_size"] = int(plan.hyperparameters["batch_size"])
        bds.setdefault("loss_timing", PRE_SWITCH_LOSS_TIMING)
    return bds


def build_train_config(plan: JobPlan, settings: Settings) -> TrainConfig:
    """The bds_core TrainConfig of a job (raises ValueError naming a bad setting)."""
    bds = job_bds_settings(plan)
    return TrainConfig(
        model=plan.model,
        train_file=plan.train_file,
        out_dir=plan.run_dir,
        safety_file=plan.safety_file if plan.method_type == "bds" else None,
        method="bds" if plan.method_type == "bds" else "sft",
        learning_rate=settings.base_learning_rate
        * float(plan.hyperparameters["learning_rate_multiplier"]),
        batch_size=int(plan.hyperparameters["batch_size"]),
        safety_batch_size=bds.get("safety_batch_size"),
        epochs=float(plan.hyperparameters["n_epochs"]),
        max_steps=bds.get("max_steps"),
        max_length=settings.max_length,
        seed=plan.seed,
        # method.bds names the scheduler settings by their flat names (`scheduler`, ...).
        scheduler=scheduler_settings_from_flat(bds),
        checkpoint_every=settings.checkpoint_every,
        precision=settings.train_precision,
        gradient_checkpointing=settings.gradient_checkpointing,
    )


class LeaseKeeper:
    """Renews the job's lease from a background thread while training runs.

    A thread rather than the step callback, so that a slow model load or a long step cannot
    let the lease lapse. If a renewal finds the lease gone, ``lost`` is set and the training
    callbacks raise ClaimLostError at the next step.
    """

    def __init__(self, context: RunContext, job_id: str) -> None:
        self.context = context
        self.job_id = job_id
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{job_id}", daemon=True)

    def renew(self) -> bool:
        """Extend the lease once; False (and ``lost`` set) if this worker no longer holds it."""
        with self.context.uow() as session:
            held = renew_lease(
                session,
                self.job_id,
                owner=self.context.worker_id,
                now=utcnow(),
                lease_seconds=self.context.settings.lease_seconds,
            )
        if not held:
            self.lost.set()
        return held

    def _run(self) -> None:
        while not self._stop.wait(self.context.settings.heartbeat_seconds):
            try:
                if not self.renew():
                    return
            except Exception:
                # A database hiccup: try again at the next beat; the lease has slack.
                logger.exception("lease renewal of job %s failed", self.job_id)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def check(self) -> None:
        """Raise ClaimLostError if the lease was lost."""
        if self.lost.is_set():
            raise ClaimLostError(f"job {self.job_id}: lease lost by {self.context.worker_id}")


def _job_state(context: RunContext, job_id: str) -> tuple[str, str | None]:
    with context.uow() as session:
        row = session.execute(
            select(FineTuningJob.status, FineTuningJob.lease_owner).where(
                FineTuningJob.id == job_id
            )
        ).one()
    return str(row[0]), row[1]


class JobProgress(TrainerCallback):
    """Trainer callback: progress and checkpoints become job events and checkpoint rows."""

    def __init__(self, context: RunContext, plan: JobPlan, lease: LeaseKeeper) -> None:
        self.context = context
        self.plan = plan
        self.lease = lease
        self._last_event = 0.0
        self._evaluation_started = 0.0
        self._first_batch: tuple[float, int] | None = None
        self.last_metrics: dict[str, Any] = {}
        # After a resume: the last step an earlier attempt reported. The steps between the
        # checkpoint and it run again but are not reported twice (progress never goes back).
        self._reported_through = 0

    # cancellation, read from the database between steps ---------------------------------
    def should_cancel(self) -> bool:
        """True once the job is ``cancelling``; raises ClaimLostError if the job moved on."""
        self.lease.check()
        status, owner = _job_state(self.context, self.plan.job_id)
        if owner != self.context.worker_id:
            raise ClaimLostError(f"job {self.plan.job_id} is now held by {owner}")
        return status == JobStatus.CANCELLING

    def _event(self, message: str, **kwargs: Any) -> None:
        """Append an event to the job in its own short transaction."""
        with self.context.uow() as session:
            job = load_job_for_task(session, self.plan.job_id)
            if job is not None:
                add_event(session, job, message, **kwargs)

    # TrainerCallback hooks ---------------------------------------------------------------
    def on_start(self, info: dict[str, Any]) -> None:
        """Announce the run's size."""
        world_size = int(info.get("world_size", 1))
        where = f"device {info['device']}" if world_size == 1 else f"{world_size} GPUs"
        message = (
            f"Training {info['total_steps']} steps on {info['num_train_examples']} examples "
            f"(method {info['method']}, {where}; {self._steps_from()})"
        )
        data: dict[str, Any] = {
            key: info[key]
            for key in (
                "total_steps",
                "num_train_examples",
                "num_safety_examples",
                "start_step",
                "world_size",
            )
            if key in info
        }
        with self.context.uow() as session:
            job = load_job_for_task(session, self.plan.job_id)
            if job is not None:
                job.total_steps = int(info["total_steps"])
                add_event(session, job, message, data=data)

    def _steps_from(self) -> str:
        max_steps = self.plan.bds.get("max_steps")
        if max_steps is not None:
            return f"max_steps {max_steps}"
        return (
            f"n_epochs {self.plan.hyperparameters['n_epochs']} over the training file, "
            f"batch_size {self.plan.hyperparameters['batch_size']}"
        )

    def on_resume(self, step: int, path: Path) -> None:
        """Say that the run continues from a checkpoint instead of starting over."""
        with self.context.uow() as session:
            latest = session.scalars(
                select(JobEvent.data)
                .where(JobEvent.job_id == self.plan.job_id, JobEvent.event_type == "metrics")
                .order_by(JobEvent.seq.desc())
                .limit(1)
            ).first()
        self._reported_through = int((latest or {}).get("step", 0))
        message = f"Resumed from checkpoint at step {step}"
        if self._reported_through > step:
            message += (
                f"; steps {step + 1}-{self._reported_through} run again and are not reported twice"
            )
        self._event(message, data={"step": step, "reported_through": self._reported_through})

    def on_step(self, event: ProgressEvent) -> None:
        """Record a metrics event (throttled; first and last step always) and the ETA."""
        self.lease.check()
        metrics = {
            "step": event.step,
            "total_steps": event.total_steps,
            "percent": round(event.percent, 2),
            "train_loss": event.loss,
            "task_loss": event.task_loss,
            "safety_loss": event.safety_loss,
            "elapsed_s": round(event.elapsed_s, 3),
            "eta_s": round(event.eta_s, 3),
            "seconds_per_step": round(event.seconds_per_step, 4),
            "weight_stats": event.weight_stats,
        }
        self.last_metrics = metrics
        now = time.monotonic()
        last_step = event.step >= event.total_steps
        due = now - self._last_event >= self.context.settings.progress_event_seconds
        if event.step <= self._reported_through and not last_step:
            return  # reported by an earlier attempt
        if not (due or last_step or self._last_event == 0.0):
            return
        self._last_event = now
        with self.context.uow() as session:
            job = load_job_for_task(session, self.plan.job_id)
            if job is None:
                return
            job.estimated_finish = utcnow() + _seconds(event.eta_s)
            add_event(
                session,
                job,
                f"Step {event.step}/{event.total_steps}: training loss={event.loss:.4f}",
                event_type="metrics",
                data=metrics,
            )

    def on_checkpoint(self, step: int, path: Path) -> None:
        """Record a verified checkpoint (once per step) and forget pruned ones."""
        storage = self.context.storage
        key = path.resolve().relative_to(storage.root).as_posix()
        with self.context.uow() as session:
            existing = session.scalars(
                select(JobCheckpoint).where(JobCheckpoint.job_id == self.plan.job_id)
            ).all()
            for checkpoint in existing:
                if not storage.exists(checkpoint.storage_key):
                    session.delete(checkpoint)
            if all(checkpoint.step_number != step for checkpoint in existing):
                metrics = {"step": float(step)}
                if self.last_metrics.get("step") == step:
                    metrics.update(
                        train_loss=self.last_metrics["train_loss"],
                        task_loss=self.last_metrics["task_loss"],
                        safety_loss=self.last_metrics["safety_loss"],
                    )
                session.add(
                    JobCheckpoint(
                        id=new_id(CHECKPOINT_PREFIX),
                        job_id=self.plan.job_id,
                        tenant_id=self.plan.tenant_id,
                        step_number=step,
                        storage_key=key,
                        metrics=metrics,
                    )
                )
            job = load_job_for_task(session, self.plan.job_id)
            if job is not None:
                add_event(session, job, f"Checkpoint saved at step {step}", data={"step": step})

    def on_end(self, result: TrainResult) -> None:
        """Nothing to do: the runner records the outcome after evaluation."""

    # the evaluation phase -----------------------------------------------------------------
    def start_evaluation(self, n_prompts: int, n_validation: int) -> None:
        """Announce the post-training evaluation and its size."""
        self.lease.check()
        self._evaluation_started = time.monotonic()
        self._first_batch = None
        self._last_event = 0.0
        total = 2 * n_prompts + n_validation
        parts = []
        if n_prompts:
            parts.append(f"{n_prompts} harmful prompts before and after training")
        if n_validation:
            parts.append(f"{n_validation} validation examples")
        what = " and ".join(parts) if parts else "nothing configured"
        self._event(
            f"Training finished; evaluating the adapter: {total} answers to generate ({what})",
            data={"phase": "evaluation", "done": 0, "total": total, "percent": 0.0},
        )

    def on_evaluation(self, stage: str, done: int, total: int) -> None:
        """Record an evaluation progress event (throttled like steps; the last always)."""
        self.lease.check()
        now = time.monotonic()
        elapsed = now - self._evaluation_started
        # The rate since the first batch leaves out the model's loading time; until a second
        # batch is done, the whole elapsed time is all there is to go by.
        if self._first_batch is None:
            self._first_batch = (now, done)
        since, done_then = self._first_batch
        if done > done_then and now > since:
            eta_s: float | None = (now - since) / (done - done_then) * (total - done)
        else:
            eta_s = elapsed / done * (total - done) if done else None
        finished = done >= total
        due = now - self._last_event >= self.context.settings.progress_event_seconds
        if not (due or finished):
            return
        self._last_event = now
        percent = round(100.0 * done / total, 2) if total else 100.0
        eta_text = f", ETA {_duration(eta_s)}" if eta_s is not None and not finished else ""
        with self.context.uow() as session:
            job = load_job_for_task(session, self.plan.job_id)
            if job is None:
                return
            if eta_s is not None:
                job.estimated_finish = utcnow() + _seconds(eta_s)
            add_event(
                session,
                job,
                f"Evaluating: {done}/{total} answers ({percent:.0f}%, {stage}){eta_text}",
                data={
                    "phase": "evaluation",
                    "stage": stage,
                    "done": done,
                    "total": total,
                    "percent": percent,
                    "elapsed_s": round(elapsed, 3),
                    "eta_s": None if eta_s is None else round(eta_s, 3),
                },
            )

    def finish_evaluation(self, evaluation: dict[str, Any]) -> None:
        """Say what the evaluation found (or why it failed)."""
        if evaluation.get("error"):
            self._event(
                f"Evaluation failed: {evaluation['error']}",
                level="warn",
                data={"phase": "evaluation", "error": evaluation["error"]},
            )
            return
        found = []
        before, after = (
            evaluation.get("harmful_score_before"),
            evaluation.get("harmful_score_after"),
        )
        if before is not None and after is not None:
            found.append(f"harmful score {before:.1f}% before, {after:.1f}% after training")
        if evaluation.get("finetune_accuracy") is not None:
            found.append(f"fine-tune accuracy {evaluation['finetune_accuracy']:.1f}%")
        self._event(
            "Evaluation finished: " + ("; ".join(found) or "nothing to measure"),
            data={
                "phase": "evaluation",
                "harmful_score_before": before,
                "harmful_score_after": after,
                "finetune_accuracy": evaluation.get("finetune_accuracy"),
            },
        )


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    minutes, rest = divmod(seconds, 60)
    return f"{minutes}m{rest:02d}s" if minutes else f"{rest}s"


def _seconds(value: float) -> dt.timedelta:
    return dt.timedelta(seconds=max(0.0, value))


def _worker_actor(context: RunContext, tenant_id: str) -> Actor:
    return Actor("worker", context.worker_id, tenant_id)


def _claim(context: RunContext, job_id: str) -> JobPlan | str:
    """Claim the job and snapshot it; a string says why nothing is to be done."""
    settings = context.settings
    with context.uow() as session:
        job = load_job_for_task(session, job_id)
        if job is None:
            return "missing"
        if job.status in TERMINAL_STATUSES or job.status == JobStatus.VALIDATING_FILES:
            return job.status
        if job.status == JobStatus.QUEUED and job.attempt >= settings.max_attempts:
            _fail_locked(
                session,
                job,
                context,
                "max_attempts_exceeded",
                f"the job was started {job.attempt} times without finishing; "
                "giving up (each attempt resumes from the newest checkpoint)",
            )
            return JobStatus.FAILED.value
        if not claim(
            session,
            job_id,
            owner=context.worker_id,
            now=utcnow(),
            lease_seconds=settings.lease_seconds,
            max_attempts=settings.max_attempts,
        ):
            return "not_claimed"
        session.refresh(job)
        if job.started_at is None:
            job.started_at = utcnow()
        tenant = session.get(Tenant, job.tenant_id)
        assert tenant is not None
        run_key = f"{job_key(job.tenant_id, job.id)}/run"

        def file_path(file_id: str | None) -> Path | None:
            if file_id is None:
                return None
            file = load_file_for_task(session, file_id)
            return None if file is None else context.storage.path(file.storage_key)

        method_type = str(job.method.get("type", "bds"))
        plan = JobPlan(
            job_id=job.id,
            tenant_id=job.tenant_id,
            tenant_name=tenant.name,
            model=job.model,
            method_type=method_type,
            hyperparameters=dict(job.hyperparameters),
            bds={
                k: v for k, v in job.method.get(method_type, {}).items() if k != "hyperparameters"
            },
            seed=job.seed,
            attempt=job.attempt,
            train_file=file_path(job.training_file_id) or Path("/nonexistent"),
            validation_file=file_path(job.validation_file_id),
            safety_file=file_path(job.safety_file_id) or settings.safety_alignment_file,
            run_dir=context.storage.path(run_key),
            run_key=run_key,
            fine_tuned_model=fine_tuned_model_name(job, tenant.name),
        )
        JobChange(
            _worker_actor(context, job.tenant_id),
            "fine_tuning_job.start",
            f"Fine-tuning job started (attempt {job.attempt})",
            event_data={"attempt": job.attempt, "worker": context.worker_id},
            details={"attempt": job.attempt},
        ).record(session, job)
    return plan


def _fail_locked(
    session: Any,
    job: FineTuningJob,
    context: RunContext,
    code: str,
    message: str,
    *,
    owner: str | None = None,
) -> bool:
    sources = (
        {JobStatus(job.status)} if owner is None else {JobStatus.RUNNING, JobStatus.CANCELLING}
    )
    return fail_job(
        session,
        job,
        job_error(code, message),
        sources=sources,
        actor=_worker_actor(context, job.tenant_id),
        event=f"Fine-tuning job failed: {message}",
        lease_owner=owner,
    )


def _fail(context: RunContext, plan: JobPlan, code: str, message: str) -> str:
    with context.uow() as session:
        job = load_job_for_task(session, plan.job_id)
        if job is not None and _fail_locked(
            session, job, context, code, message, owner=context.worker_id
        ):
            return JobStatus.FAILED.value
    return "claim_lost"


def _finish_cancelled(context: RunContext, plan: JobPlan) -> str:
    with context.uow() as session:
        job = load_job_for_task(session, plan.job_id)
        if job is None or not move_job(
            session,
            job,
            JobStatus.CANCELLED,
            JobChange(
                _worker_actor(context, plan.tenant_id),
                "fine_tuning_job.cancelled",
                "Fine-tuning job cancelled",
            ),
            sources={JobStatus.CANCELLING},
            lease_owner=context.worker_id,
        ):
            return "claim_lost"
    return JobStatus.CANCELLED.value


def _read_weights(weights_file: Path | None) -> list[dict[str, Any]]:
    if weights_file is None or not weights_file.is_file():
        return []
    with weights_file.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _uncertainty_kind(weights: list[dict[str, Any]]) -> str:
    kinds = {str(row.get("uncertainty", "optimisation")) for row in weights}
    return kinds.pop() if len(kinds) == 1 else "none"


def _safety_report(
    plan: JobPlan, result: TrainResult, evaluation: dict[str, Any]
) -> dict[str, Any]:
    weights = _read_weights(result.weights_file)
    values = [row["weight"] for row in weights]
    lowest = sorted(weights, key=lambda row: row["weight"])[:20]
    metrics = result.metrics
    return {
        "method": plan.method_type,
        "model": plan.model,
        "steps": result.steps,
        "final_loss": metrics.get("final_loss"),
        "elapsed_s": metrics.get("elapsed_s"),
        "weights": {
            "n_examples": len(values),
            "mean": sum(values) / len(values) if values else None,
            "min": min(values) if values else None,
            "max": max(values) if values else None,
            "statistics": metrics.get("weight_stats"),
            # What each example's spread means: "posterior" (sampled: mean and 90% interval),
            # "optimisation" (the optimiser's last iterates, not an uncertainty) or "none".
            "uncertainty": metrics.get("weight_uncertainty")
            or {"kind": _uncertainty_kind(weights)},
            "lowest": lowest,
            "examples": weights,
        },
        "evaluation": evaluation,
    }


def _succeed(
    context: RunContext, plan: JobPlan, result: TrainResult, report: dict[str, Any]
) -> str:
    assert result.adapter_dir is not None
    adapter_key = result.adapter_dir.resolve().relative_to(context.storage.root).as_posix()
    with context.uow() as session:
        job = load_job_for_task(session, plan.job_id)
        if job is None:
            return "missing"
        values = {
            "fine_tuned_model": plan.fine_tuned_model,
            "adapter_key": adapter_key,
            "safety_report": report,
            "trained_tokens": result.metrics.get("trained_tokens"),
        }
        if move_job(
            session,
            job,
            JobStatus.SUCCEEDED,
            JobChange(
                _worker_actor(context, plan.tenant_id),
                "fine_tuning_job.succeed",
                "The job has successfully completed",
                event_data={"fine_tuned_model": plan.fine_tuned_model},
            ),
            sources={JobStatus.RUNNING},
            values=values,
            lease_owner=context.worker_id,
        ):
            return JobStatus.SUCCEEDED.value
    # Cancelled while evaluating: the customer asked to stop, so the job ends cancelled.
    status, _owner = _job_state(context, plan.job_id)
    if status == JobStatus.CANCELLING:
        return _finish_cancelled(context, plan)
    return "claim_lost"


def _evaluate(
    context: RunContext, plan: JobPlan, result: TrainResult, progress: JobProgress
) -> dict[str, Any]:
    """The post-training evaluation, reported as a phase of its own: an event with its size,
    progress events with an ETA after each generated batch, and one with the result."""
    from bds_service.jobs.evaluation import evaluate_adapter, evaluation_size

    try:
        prompts, n_validation = evaluation_size(context.settings, plan.validation_file)
        progress.start_evaluation(len(prompts), n_validation)
        evaluation = evaluate_adapter(
            model_spec=plan.model,
            adapter_dir=result.adapter_dir or plan.run_dir / "adapter",
            validation_file=plan.validation_file,
            settings=context.settings,
            on_progress=progress.on_evaluation,
        )
    except ClaimLostError:
        raise
    except Exception as error:
        # The adapter is good; a broken evaluation setup must not throw the training away.
        logger.exception("post-training evaluation of job %s failed", plan.job_id)
        evaluation = {"error": f"{type(error).__name__}: {error}"}
    progress.finish_evaluation(evaluation)
    return evaluation


def run_job(context: RunContext, job_id: str) -> str:
    """Task body of ``run_finetune_job``; returns the job's final status or why it stopped.

    Safe under redelivery: a job that is finished, held by a live worker or not yet validated
    is left alone.
    """
    plan = _claim(context, job_id)
    if isinstance(plan, str):
        logger.info("job %s not run: %s", job_id, plan)
        return plan

    with LeaseKeeper(context, job_id) as lease:
        progress = JobProgress(context, plan, lease)

        try:
            if not plan.train_file.is_file():
                return _fail(
                    context,
                    plan,
                    "invalid_training_file",
                    "the training file's content is no longer stored",
                )
            if plan.method_type == "bds" and (
                plan.safety_file is None or not plan.safety_file.is_file()
            ):
                return _fail(
                    context,
                    plan,
                    "safety_data_unavailable",
                    "method bds needs alignment data and none is stored",
                )
            n_gpus = int(plan.bds.get("n_gpus", 1))
            if n_gpus > 1 and (available := visible_gpu_count()) < n_gpus:
                return _fail(
                    context,
                    plan,
                    "insufficient_gpus",
                    f"the job asks for {n_gpus} GPUs (method.bds.n_gpus) but worker "
                    f"{context.worker_id} has {available}; multi-GPU jobs need a worker with "
                    f"at least {n_gpus} GPUs on the gpu queue (docs/scaling.md)",
                )
            # The provider's drop_flagged policy trains on a copy without flagged examples.
            train_file = training_file_under_policy(
                context.uow, plan.job_id, plan.train_file, plan.run_dir.parent
            )
            config = build_train_config(replace(plan, train_file=train_file), context.settings)
            if n_gpus > 1:
                # torchrun children inside this lease: the heartbeat thread keeps renewing it,
                # progress and cancellation pass through the run folder.
                result = train_with_torchrun(
                    config, n_gpus, callbacks=[progress], should_cancel=progress.should_cancel
                )
            else:
                result = train(config, callbacks=[progress], should_cancel=progress.should_cancel)
        except ClaimLostError as lost:
            logger.warning("%s", lost)
            return "claim_lost"
        except (ValueError, OSError) as error:
            logger.exception("job %s could not train", job_id)
            return _fail(context, plan, "invalid_job", f"{type(error).__name__}: {error}")
        except Exception as error:
            logger.exception("job %s failed while training", job_id)
            return _fail(context, plan, "training_failed", f"{type(error).__name__}: {error}")

        if result.cancelled:
            return _finish_cancelled(context, plan)

        try:
            evaluation = _evaluate(context, plan, result, progress)
        except ClaimLostError as lost:
            logger.warning("%s", lost)
            return "claim_lost"
        lease.check()
        return _succeed(context, plan, result, _safety_report(plan, result, evaluation))
