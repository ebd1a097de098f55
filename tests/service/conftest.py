"""Fixtures for running jobs in this process against PostgreSQL: settings for the tiny model,
a run context whose follow-up task messages go nowhere, and a way to store a validated file."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from bds_service.audit import Actor
from bds_service.db import SessionFactory, make_engine, make_session_factory, unit_of_work
from bds_service.files import service as files_service
from bds_service.jobs.runner import RunContext
from bds_service.models import File
from bds_service.settings import Settings
from bds_service.storage import LocalStorage, file_key
from bds_service.tasks import TaskMessage


class Discard:
    """A task sender for tests that do not care about follow-up messages."""

    def send(self, message: TaskMessage) -> None:
        pass


@pytest.fixture
def settings(pg_url: str, tmp_path: Path) -> Settings:
    """The tiny model on the session's PostgreSQL, short sequences, quick heartbeats."""
    return Settings(
        database_url=pg_url,
        storage_dir=tmp_path / "storage",
        api_key_secret=SecretStr("test-secret-0123456789abcdef"),
        base_models=["tiny-random-llama"],
        default_batch_size=2,
        max_length=48,
        checkpoint_every=50,
        heartbeat_seconds=0.5,
        progress_event_seconds=0.0,
    )


@pytest.fixture
def session_factory_pg(settings: Settings) -> Iterator[SessionFactory]:
    engine = make_engine(settings.resolved_database_url)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def context(settings: Settings, session_factory_pg: SessionFactory) -> RunContext:
    return RunContext(
        uow=lambda: unit_of_work(session_factory_pg, Discard()),
        storage=LocalStorage(settings.resolved_storage_dir),
        settings=settings,
    )


@pytest.fixture
def store_file(context: RunContext, settings: Settings) -> Callable[..., File]:
    """A function that stores ``content`` as a tenant's validated file; returns its row."""

    def store(session: Any, tenant_id: str, content: str, purpose: str) -> File:
        file_id = files_service.new_file_id()
        sink = context.storage.open_upload(file_key(tenant_id, file_id), 1 << 20)
        sink.write(content.encode())
        stored = sink.commit()
        report = files_service.validate_content(context.storage.path(stored.key), settings)
        return files_service.register_upload(
            session,
            actor=Actor("cli", "tests"),
            tenant_id=tenant_id,
            file_id=file_id,
            filename="data.jsonl",
            purpose=purpose,
            stored=stored,
            report=report,
        )

    return store
