"""Per-process resources of a worker: engine, storage and a publisher for follow-up tasks.

Built lazily in the process that runs the tasks (never in the prefork parent), because
database connections must not cross a fork.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager
from dataclasses import dataclass

from celery import Celery
from sqlalchemy.orm import Session

from bds_service.db import SessionFactory, make_engine, make_session_factory, unit_of_work
from bds_service.settings import Settings, get_settings
from bds_service.storage import LocalStorage
from bds_service.tasks import TaskMessage, queue_name


class CeleryTaskSender:
    """Publishes follow-up tasks through the worker's own Celery app."""

    def __init__(self, app: Celery, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    def send(self, message: TaskMessage) -> None:
        """Publish ``message`` on its queue."""
        self.app.send_task(
            message.name,
            args=list(message.args),
            queue=queue_name(message.queue_kind, self.settings),
        )


@dataclass
class WorkerContext:
    """Settings, sessions, storage and the task sender of this process."""

    settings: Settings
    session_factory: SessionFactory
    storage: LocalStorage
    sender: CeleryTaskSender

    def uow(self) -> AbstractContextManager[Session]:
        """One short transaction; tasks it buffered are sent after the commit."""
        return unit_of_work(self.session_factory, self.sender)


_contexts: dict[int, WorkerContext] = {}


def worker_context(app: Celery) -> WorkerContext:
    """This process's context, created on first use."""
    pid = os.getpid()
    context = _contexts.get(pid)
    if context is None:
        settings = get_settings()
        context = WorkerContext(
            settings=settings,
            session_factory=make_session_factory(make_engine(settings.resolved_database_url)),
            storage=LocalStorage(settings.resolved_storage_dir),
            sender=CeleryTaskSender(app, settings),
        )
        _contexts.clear()
        _contexts[pid] = context
    return context
