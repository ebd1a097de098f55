"""A job create and a delete of its training file, sent together: exactly one wins.

Before, both could succeed (10 of 10 over HTTP) and the job then failed with "content no
longer stored". Each order is forced here with two real PostgreSQL transactions: the second
waits on the file row's lock and then sees the first one's outcome.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text

from bds_service.audit import Actor
from bds_service.db import SessionFactory
from bds_service.errors import ConflictError, InvalidRequestError
from bds_service.files import service as files
from bds_service.jobs.service import JobSpec, create_job
from bds_service.models import File, FineTuningJob
from bds_service.settings import Settings
from bds_service.storage import LocalStorage

ACTOR = Actor("api_key", "key-1")


@pytest.fixture
def db_url(pg_url: str) -> str:
    return pg_url


@pytest.fixture
def tenant_and_file(
    session_factory: SessionFactory, add_tenant_with_file: Callable[..., str]
) -> tuple[str, str]:
    with session_factory() as session:
        tenant_id = add_tenant_with_file(session, filename="t.jsonl")
        session.commit()
        return tenant_id, "file-train"


def _in_thread(work: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = work()
        except Exception as error:  # the test inspects it
            outcome["error"] = error

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def _wait_until_blocked(session_factory: SessionFactory) -> None:
    """Until another connection waits for a row lock (so the order is really forced)."""
    for _ in range(600):
        with session_factory() as probe:
            waiting = probe.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE wait_event_type = 'Lock' AND datname = current_database()"
                )
            )
        if waiting:
            return
        threading.Event().wait(0.05)
    raise AssertionError("the second transaction never waited for the file's lock")


def test_create_first_then_delete_refuses_the_delete(
    session_factory: SessionFactory,
    service_settings: Settings,
    tenant_and_file: tuple[str, str],
    tmp_path: Path,
) -> None:
    tenant_id, file_id = tenant_and_file
    spec = JobSpec(model="tiny-random-llama", training_file=file_id, method_type="supervised")
    creating = session_factory()
    create_job(creating, spec, tenant_id=tenant_id, actor=ACTOR, settings=service_settings)

    def delete() -> Any:
        with session_factory() as session:
            files.delete_file(
                session, tenant_id, file_id, actor=ACTOR, storage=LocalStorage(tmp_path)
            )
            session.commit()

    thread, outcome = _in_thread(delete)
    _wait_until_blocked(session_factory)
    creating.commit()
    creating.close()
    thread.join(timeout=60)
    assert isinstance(outcome.get("error"), ConflictError), outcome
    assert outcome["error"].code == "file_in_use"
    with session_factory() as session:
        file = session.get(File, file_id)
        assert file is not None and file.deleted_at is None


def test_delete_first_then_create_refuses_the_create(
    session_factory: SessionFactory,
    service_settings: Settings,
    tenant_and_file: tuple[str, str],
    tmp_path: Path,
) -> None:
    tenant_id, file_id = tenant_and_file
    spec = JobSpec(model="tiny-random-llama", training_file=file_id, method_type="supervised")
    deleting = session_factory()
    files.delete_file(deleting, tenant_id, file_id, actor=ACTOR, storage=LocalStorage(tmp_path))

    def create() -> Any:
        with session_factory() as session:
            created = create_job(
                session, spec, tenant_id=tenant_id, actor=ACTOR, settings=service_settings
            )
            session.commit()
            return created

    thread, outcome = _in_thread(create)
    _wait_until_blocked(session_factory)
    deleting.commit()
    deleting.close()
    thread.join(timeout=60)
    assert isinstance(outcome.get("error"), InvalidRequestError), outcome
    assert outcome["error"].code == "invalid_training_file"
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(FineTuningJob)) == 0
