"""Background work as plain messages, sent only after the transaction that created it commits.

Services never talk to Celery. They call :func:`enqueue_after_commit`, which buffers a
:class:`TaskMessage` on the SQLAlchemy session; :func:`bds_service.db.unit_of_work` (and the
API's session dependency) hand the buffer to a :class:`TaskSender` once the commit succeeded and
drop it on rollback. A task message therefore never names a row that does not exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from sqlalchemy.orm import Session

if TYPE_CHECKING:
    from bds_service.settings import Settings

# Task names are the contract between the API (which sends by name) and the worker (which
# registers them); neither imports the other.
VALIDATE_FILE = "bds.validate_file"
SCORE_DATASET = "bds.score_dataset"
PREPARE_JOB = "bds.prepare_job"
RUN_FINETUNE_JOB = "bds.run_finetune_job"
REAP_JOBS = "bds.reap_jobs"

# gpu_multi: training of a job that asks for several GPUs (its own queue where the
# deployment names one, so only workers with enough GPUs take it; else the gpu queue).
QueueKind = Literal["cpu", "gpu", "gpu_multi"]

TASK_QUEUE_KIND: dict[str, QueueKind] = {
    VALIDATE_FILE: "cpu",
    SCORE_DATASET: "cpu",
    PREPARE_JOB: "cpu",
    RUN_FINETUNE_JOB: "gpu",
    REAP_JOBS: "cpu",
}

_PENDING_KEY = "bds_pending_tasks"


@dataclass(frozen=True)
class TaskMessage:
    """A task to run: its registered name and the ids it works on."""

    name: str
    args: tuple[str, ...]
    queue: QueueKind | None = None  # overrides the task's usual queue kind

    @property
    def queue_kind(self) -> QueueKind:
        """Which queue (cpu, gpu or gpu_multi) the task belongs on."""
        return self.queue or TASK_QUEUE_KIND[self.name]


class TaskSender(Protocol):
    """Publishes task messages to the broker (implemented by the API and the worker)."""

    def send(self, message: TaskMessage) -> None:
        """Publish one message."""
        ...


def enqueue_after_commit(session: Session, message: TaskMessage) -> None:
    """Buffer ``message`` on ``session``; it is sent only if the session's commit succeeds."""
    if message.name not in TASK_QUEUE_KIND:
        raise ValueError(f"unknown task {message.name!r}")
    session.info.setdefault(_PENDING_KEY, []).append(message)


def take_pending(session: Session) -> list[TaskMessage]:
    """Remove and return the messages buffered on ``session``."""
    pending: list[TaskMessage] = session.info.pop(_PENDING_KEY, [])
    return pending


def queue_name(kind: QueueKind, settings: Settings) -> str:
    """The broker queue of a queue kind in this deployment."""
    if kind == "cpu":
        return settings.cpu_queue
    if kind == "gpu_multi":
        return settings.multi_gpu_queue or settings.gpu_queue
    return settings.gpu_queue


def broker_settings(settings: Settings) -> dict[str, Any]:
    """Celery settings shared by the API (which only publishes) and the worker.

    A plain dict, so this package needs no Celery import. JSON only (no pickle); the
    visibility timeout is set in both places Celery reads it (celery#9339).
    """
    broker_url = settings.resolved_broker_url
    transport_options: dict[str, Any] = {}
    if broker_url.split(":", 1)[0] in {"redis", "rediss", "sentinel", "sqs"}:
        # Only these transports know the option (kombu's SQLAlchemy transport would pass it
        # on to create_engine and fail).
        transport_options["visibility_timeout"] = settings.broker_visibility_timeout_s
    return {
        "broker_url": broker_url,
        "broker_transport_options": transport_options,
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": 5,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,
        "task_publish_retry_policy": {
            "max_retries": 3,
            "interval_start": 0.2,
            "interval_step": 0.5,
            "interval_max": 2.0,
        },
    }
