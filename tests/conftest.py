"""Shared fixtures: real PostgreSQL and SQLite databases built by the Alembic migrations.

- ``postgres_url``: a database with a unique name, created once per test session, migrated with
  ``alembic upgrade head`` and dropped at the end.
- ``sqlite_template``: a migrated SQLite file, copied for each test that uses SQLite.
- ``db_url``: parametrised over both backends; PostgreSQL tables are truncated after each test.

Heavy imports stay inside the fixtures so that tests of bds_core never pay for them.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session
    from sqlalchemy.sql.base import Executable

    from bds_service.db import SessionFactory
    from bds_service.settings import Settings

POSTGRES_SERVER_URL = os.environ.get(
    "BDS_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("BDS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

# Tables in truncation order does not matter with CASCADE; audit_log's triggers guard UPDATE and
# DELETE only, so TRUNCATE (test cleanup, never the application) still empties it.
SERVICE_TABLES = (
    "audit_log",
    "idempotency_keys",
    "job_checkpoints",
    "job_events",
    "fine_tuning_jobs",
    "files",
    "api_keys",
    "tenants",
)


def _server_engine() -> Engine:
    from sqlalchemy import create_engine

    return create_engine(POSTGRES_SERVER_URL, isolation_level="AUTOCOMMIT")


@pytest.fixture(scope="session")
def postgres_server_url() -> str:
    """URL of the PostgreSQL maintenance database (used to create and drop test databases)."""
    return POSTGRES_SERVER_URL


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL of a fresh, migrated PostgreSQL database that lives for the test session."""
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    from bds_service.db import upgrade_database

    name = f"bds_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    server = _server_engine()
    try:
        with server.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as error:  # pragma: no cover - environment problem, not a test failure
        pytest.fail(f"PostgreSQL at {POSTGRES_SERVER_URL} is required for these tests: {error}")
    url = make_url(POSTGRES_SERVER_URL).set(database=name).render_as_string(hide_password=False)
    try:
        upgrade_database(url)
        yield url
    finally:
        with server.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        server.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite database file to copy from."""
    from bds_service.db import upgrade_database

    path = tmp_path_factory.mktemp("sqlite-template") / "template.sqlite3"
    upgrade_database(f"sqlite:///{path}")
    return path


def _truncate_postgres(url: str) -> None:
    from sqlalchemy import text

    from bds_service.db import make_engine

    engine = make_engine(url)
    with engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {', '.join(SERVICE_TABLES)} RESTART IDENTITY CASCADE"))
    engine.dispose()


@pytest.fixture(params=["postgresql", "sqlite"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty database URL, once on PostgreSQL and once on SQLite."""
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_url")
        _truncate_postgres(url)
        yield url
        _truncate_postgres(url)
    else:
        template: Path = request.getfixturevalue("sqlite_template")
        path = tmp_path / "bds.sqlite3"
        shutil.copyfile(template, path)
        yield f"sqlite:///{path}"


@pytest.fixture
def pg_url(postgres_url: str) -> Iterator[str]:
    """The session's PostgreSQL database, emptied before and after the test."""
    _truncate_postgres(postgres_url)
    yield postgres_url
    _truncate_postgres(postgres_url)


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The test Redis (``BDS_TEST_REDIS_URL``, default the local one)."""
    return REDIS_URL


@pytest.fixture
def service_settings(db_url: str, tmp_path: Path) -> Settings:
    """Settings for one test: its own database, storage folder and queue names."""
    from pydantic import SecretStr

    from bds_service.settings import Settings

    suffix = uuid.uuid4().hex[:8]
    return Settings(
        environment="development",
        data_dir=tmp_path / "data",
        database_url=db_url,
        broker_url=REDIS_URL,
        storage_dir=tmp_path / "storage",
        api_key_secret=SecretStr("test-secret-0123456789abcdef"),
        cpu_queue=f"test-cpu-{suffix}",
        gpu_queue=f"test-gpu-{suffix}",
        max_upload_bytes=64 * 1024,
        base_models=["tiny-random-llama"],
        default_n_epochs=1,
        default_batch_size=2,
        max_length=64,
        checkpoint_every=2,
    )


@pytest.fixture
def engine(service_settings: Settings) -> Iterator[Engine]:
    """An engine on the test's database."""
    from bds_service.db import make_engine

    engine = make_engine(service_settings.resolved_database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def session_factory(engine: Engine) -> SessionFactory:
    """Session factory bound to the test's database."""
    from bds_service.db import make_session_factory

    return make_session_factory(engine)


@pytest.fixture
def session(session_factory: SessionFactory) -> Iterator[Session]:
    """A session on the test's database; tests commit when they need to.

    On SQLite every transaction takes the write lock (see bds_service.db), so a test that also
    sends requests must commit or roll back before it does; ``read`` avoids the problem.
    """
    with session_factory() as session:
        yield session


@pytest.fixture
def read(session_factory: SessionFactory) -> Callable[[Executable], list[Any]]:
    """Run a SELECT in its own short transaction and return its scalars."""

    def run(statement: Executable) -> list[Any]:
        with session_factory() as short_session:
            return list(short_session.scalars(statement))

    return run


@pytest.fixture
def add_tenant_with_file() -> Callable[..., str]:
    """A function that adds tenant ``acme`` and a processed fine-tune file row (no bytes in
    storage) to a session and returns the tenant id; the caller commits."""
    from bds_service.audit import Actor
    from bds_service.models import File
    from bds_service.tenants.service import create_tenant

    def add(session: Session, file_id: str = "file-train", filename: str = "train.jsonl") -> str:
        tenant = create_tenant(session, "acme", Actor("cli", "tests"))
        session.add(
            File(
                id=file_id,
                tenant_id=tenant.id,
                filename=filename,
                purpose="fine-tune",
                bytes=1,
                sha256="0" * 64,
                storage_key="x",
                status="processed",
            )
        )
        return tenant.id

    return add
