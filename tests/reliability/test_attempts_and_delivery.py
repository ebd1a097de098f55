"""At-least-once delivery, made safe by leases, and a cap on attempts.

- Celery is set up for at-least-once delivery of idempotent tasks: late acks, re-queued when
  the worker dies, one message at a time, JSON only, the Redis visibility timeout where Celery
  reads it, and the lease reaper on the beat at the configured interval.
- A job that has used all its attempts is not started again: it fails with an error that says
  why (the reaper's path for a running job is tested in tests/service/test_job_claims.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from bds_service.db import SessionFactory, make_engine, make_session_factory, unit_of_work
from bds_service.models import AuditLog, FineTuningJob, JobEvent
from bds_service.settings import Settings
from bds_service.storage import LocalStorage
from bds_service.tasks import TaskMessage


class Discard:
    """A task sender for tests that do not care about follow-up messages."""

    def send(self, message: TaskMessage) -> None:
        pass


def test_celery_delivers_at_least_once_and_runs_the_reaper(tmp_path: Path) -> None:
    from worker.celery_app import create_celery

    settings = Settings(
        broker_url="redis://127.0.0.1:6379/0",
        data_dir=tmp_path,
        broker_visibility_timeout_s=7200,
        reaper_interval_seconds=7.5,
    )
    conf = create_celery(settings).conf
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    # A running task outlives a short broker outage (tests/reliability/test_broker_outage.py).
    assert conf.worker_cancel_long_running_tasks_on_connection_loss is False
    assert (conf.task_serializer, list(conf.accept_content)) == ("json", ["json"])
    assert conf.broker_transport_options["visibility_timeout"] == 7200
    reaper = conf.beat_schedule["reap-expired-job-leases"]
    assert (reaper["task"], reaper["schedule"]) == ("bds.reap_jobs", 7.5)
    assert reaper["options"]["queue"] == settings.cpu_queue
    assert "ConsumerPulse" in {step.__name__ for step in create_celery(settings).steps["consumer"]}


def test_the_training_task_retries_only_transient_database_errors() -> None:
    from worker import tasks

    task = tasks.run_finetune_job
    assert task.autoretry_for == (OperationalError,)
    assert task.max_retries == 5 and task.retry_backoff and task.retry_jitter


@pytest.fixture
def pg_session_factory(pg_url: str) -> Iterator[SessionFactory]:
    engine = make_engine(pg_url)
    yield make_session_factory(engine)
    engine.dispose()


def test_a_job_past_its_attempt_cap_fails_with_a_clear_error(
    pg_url: str,
    pg_session_factory: SessionFactory,
    tmp_path: Path,
    add_tenant_with_file: Callable[..., str],
) -> None:
    from bds_service.jobs.runner import RunContext, run_job

    settings = Settings(
        database_url=pg_url,
        storage_dir=tmp_path,
        api_key_secret=SecretStr("test-secret-0123456789abcdef"),
        max_attempts=3,
    )
    with pg_session_factory() as session:
        tenant_id = add_tenant_with_file(session)
        # Re-queued by the reaper after its third worker died.
        session.add(
            FineTuningJob(
                id="ftjob-tired",
                tenant_id=tenant_id,
                model="tiny-random-llama",
                training_file_id="file-train",
                status="queued",
                hyperparameters={},
                method={"type": "supervised"},
                seed=0,
                attempt=3,
            )
        )
        session.commit()
    context = RunContext(
        uow=lambda: unit_of_work(pg_session_factory, Discard()),
        storage=LocalStorage(tmp_path),
        settings=settings,
    )

    assert run_job(context, "ftjob-tired") == "failed"
    with pg_session_factory() as session:
        job = session.get(FineTuningJob, "ftjob-tired")
        assert job is not None and job.status == "failed" and job.finished_at is not None
        assert job.error is not None and job.error["code"] == "max_attempts_exceeded"
        assert "started 3 times without finishing" in job.error["message"]
        events = session.scalars(select(JobEvent.message).where(JobEvent.job_id == job.id)).all()
        actions = session.scalars(select(AuditLog.action).where(AuditLog.target_id == job.id))
        assert any("started 3 times" in message for message in events)
        assert list(actions) == ["fine_tuning_job.fail"]
    # A redelivered message finds the job failed and leaves it so.
    assert run_job(context, "ftjob-tired") == "failed"
