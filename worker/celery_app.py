"""The Celery application: JSON only, late acks, one message at a time per process.

Postgres, not the broker, holds the truth about a job: a message only wakes a worker, which
claims the job with a lease. So a redelivered message (after a crash, or Redis's visibility
timeout) is harmless: its claim fails and the task returns.
"""

from __future__ import annotations

from celery import Celery

from bds_service.settings import Settings, get_settings
from bds_service.tasks import REAP_JOBS, TASK_QUEUE_KIND, broker_settings, queue_name
from worker.liveness import ConsumerPulse


def create_celery(settings: Settings | None = None) -> Celery:
    """A Celery app for ``settings`` with the cpu and gpu queues and the reaper schedule."""
    settings = settings or get_settings()
    app = Celery("bds", include=["worker.tasks"])
    app.conf.update(broker_settings(settings))
    app.conf.update(
        # A task is acknowledged when it ends, and re-queued if its process dies: every task
        # is idempotent (it takes ids and returns early when its work is done).
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # A short broker outage must not stop a training run: the task keeps running while
        # the consumer reconnects (its lease, not the message, says who owns the job; a
        # redelivered copy loses the claim). A long one ends the worker (worker.liveness).
        worker_cancel_long_running_tasks_on_connection_loss=False,
        task_track_started=True,
        task_default_queue=settings.cpu_queue,
        task_routes={
            name: {"queue": queue_name(kind, settings)} for name, kind in TASK_QUEUE_KIND.items()
        },
        beat_schedule={
            "reap-expired-job-leases": {
                "task": REAP_JOBS,
                "schedule": settings.reaper_interval_seconds,
                "options": {
                    "queue": settings.cpu_queue,
                    "expires": settings.reaper_interval_seconds,
                },
            }
        },
        worker_hijack_root_logger=False,
    )
    app.steps["consumer"].add(ConsumerPulse)
    return app


app = create_celery()
