"""Background work as plain messages, sent only after the transaction that created it commits.

Services never talk to Celery. They call :func:`enqueue_after_commit`, which buffers a
:class:`TaskMessage` on the SQLAlchemy session; :func:`bds_service.db.unit_of_work` (and the
API's session dependency) hand the buffer to a :class:`TaskSender` once the commit succeeded and
drop it on rollback. A task message therefore never names a row that does not exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from sqlalchemy.orm import Session

# Task names are the contract between the API (which sends by name) and the worker (which
# registers them); neither imports the other.
VALIDATE_FILE = "bds.validate_file"
SCORE_DATASET = "bds.score_dataset"
PREPARE_JOB = "bds.prepare_job"
RUN_FINETUNE_JOB = "bds.run_finetune_job"

QueueKind = Literal["cpu", "gpu"]

TASK_QUEUE_KIND: dict[str, QueueKind] = {
    VALIDATE_FILE: "cpu",
    SCORE_DATASET: "cpu",
    PREPARE_JOB: "cpu",
    RUN_FINETUNE_JOB: "gpu",
}

_PENDING_KEY = "bds_pending_tasks"


@dataclass(frozen=True)
class TaskMessage:
    """A task to run: its registered name and the ids it works on."""

    name: str
    args: tuple[str, ...]

    @property
    def queue_kind(self) -> QueueKind:
        """Which queue (cpu or gpu) the task belongs on."""
        return TASK_QUEUE_KIND[self.name]


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
