"""Publishes task messages to the broker by name; the API never imports the worker package."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from bds_service.settings import Settings
from bds_service.tasks import TaskMessage, broker_settings, queue_name

if TYPE_CHECKING:
    from celery import Celery


class CeleryPublisher:
    """A Celery client that only sends tasks (``send_task`` by registered name)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._client: Celery | None = None
        self._lock = threading.Lock()

    def _celery(self) -> Celery:
        with self._lock:
            if self._client is None:
                from celery import Celery

                client = Celery("bds-api")
                client.conf.update(broker_settings(self._settings))
                self._client = client
            return self._client

    def send(self, message: TaskMessage) -> None:
        """Publish ``message`` on its queue (cpu or gpu)."""
        self._celery().send_task(
            message.name,
            args=list(message.args),
            queue=queue_name(message.queue_kind, self._settings),
        )

    def close(self) -> None:
        """Release the broker connection pool."""
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None
