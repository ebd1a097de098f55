"""Engines, sessions and the unit of work, identical on PostgreSQL and SQLite."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from bds_service.tasks import TaskSender, take_pending

logger = logging.getLogger(__name__)

SessionFactory = sessionmaker[Session]
UnitOfWork = Callable[[], AbstractContextManager[Session]]
"""Opens one short transaction: commit on success, rollback on error, then publish tasks."""

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def normalize_database_url(url: str) -> str:
    """Pin PostgreSQL URLs to psycopg 3 (``postgresql://`` would pick psycopg2)."""
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+psycopg://" + url[len(plain) :]
    return url


def missing_sqlite_file(url: str) -> Path | None:
    """The SQLite file ``url`` names when it does not exist yet (None for other databases).

    Commands that only read the schema check this first: connecting would create an empty
    file (and its folder) and leave it behind.
    """
    parsed = make_url(normalize_database_url(url))
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    if parsed.database == ":memory:" or parsed.database.startswith("file:"):
        return None
    path = Path(parsed.database)
    return None if path.exists() else path


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for ``url``; SQLite gets foreign keys, WAL and serialised write transactions."""
    url = normalize_database_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"timeout": 30, "check_same_thread": False}, **kwargs
        )
        _configure_sqlite(engine)
        return engine
    # Pinging each connection as it leaves the pool costs a round trip per checkout; the API
    # turns it off (see api.app) and lives with one 503 per process after a database restart.
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)


def _configure_sqlite(engine: Engine) -> None:
    # The API and the worker processes write to the same file. A deferred transaction that
    # reads and then writes can fail at once with "database is locked" when another process
    # wrote in between; BEGIN IMMEDIATE takes the write lock up front and waits (busy_timeout).
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def make_session_factory(engine: Engine) -> SessionFactory:
    """Sessions whose objects stay readable after commit (responses are built after it)."""
    return sessionmaker(bind=engine, expire_on_commit=False)


def make_read_session_factory(engine: Engine) -> SessionFactory:
    """Sessions for a single read that needs no transaction (an API key's lookup).

    On PostgreSQL they run in autocommit: no BEGIN and no ROLLBACK around the one SELECT, two
    round trips fewer per request. On SQLite (one writer, BEGIN IMMEDIATE) they are ordinary
    sessions.
    """
    if engine.dialect.name == "postgresql":
        return sessionmaker(
            bind=engine.execution_options(isolation_level="AUTOCOMMIT"), expire_on_commit=False
        )
    return make_session_factory(engine)


_AFTER_COMMIT_KEY = "bds_after_commit"


def call_after_commit(session: Session, callback: Callable[[], None]) -> None:
    """Run ``callback`` once the session's transaction has committed (never on rollback).

    For side effects that must not happen unless the change is durable, such as removing a
    deleted file's bytes from storage.
    """
    session.info.setdefault(_AFTER_COMMIT_KEY, []).append(callback)


_AFTER_ROLLBACK_KEY = "bds_after_rollback"


def call_after_rollback(session: Session, callback: Callable[[], None]) -> None:
    """Run ``callback`` if the session's transaction is rolled back instead of committed.

    For undoing side effects outside the database, such as an upload's bytes already written
    to storage when the row that would own them is not stored.
    """
    session.info.setdefault(_AFTER_ROLLBACK_KEY, []).append(callback)


def discard_after_commit(session: Session) -> None:
    """After a rollback: forget the buffered tasks and after-commit callbacks, and run the
    after-rollback callbacks."""
    take_pending(session)
    session.info.pop(_AFTER_COMMIT_KEY, None)
    callbacks: list[Callable[[], None]] = session.info.pop(_AFTER_ROLLBACK_KEY, [])
    for callback in callbacks:
        try:
            callback()
        except Exception:
            logger.exception("after-rollback callback %r failed", callback)


def finish_commit(session: Session, sender: TaskSender) -> None:
    """After a successful commit: publish buffered tasks, then run after-commit callbacks."""
    for message in take_pending(session):
        try:
            sender.send(message)
        except Exception:
            # The change is committed and records what waits for a worker; the dispatch sweep
            # (bds_service.dispatch, on the beat) sends the message again when no worker has
            # claimed the work in time, so a broker hiccup must not turn a success into an error.
            logger.exception("could not publish task %s%s", message.name, message.args)
    session.info.pop(_AFTER_ROLLBACK_KEY, None)
    callbacks: list[Callable[[], None]] = session.info.pop(_AFTER_COMMIT_KEY, [])
    for callback in callbacks:
        try:
            callback()
        except Exception:
            logger.exception("after-commit callback %r failed", callback)


@contextmanager
def unit_of_work(session_factory: SessionFactory, sender: TaskSender) -> Iterator[Session]:
    """A session that commits on success, rolls back on error, then publishes buffered tasks."""
    session = session_factory()
    try:
        yield session
    except BaseException:
        abandon_unit_of_work(session)
        raise
    complete_unit_of_work(session, sender)


def complete_unit_of_work(session: Session, sender: TaskSender) -> None:
    """The successful end of :func:`unit_of_work`: commit and close ``session``, then publish
    its buffered tasks; if the commit fails, :func:`abandon_unit_of_work` and re-raise."""
    try:
        session.commit()
    except BaseException:
        abandon_unit_of_work(session)
        raise
    session.close()
    finish_commit(session, sender)


def abandon_unit_of_work(session: Session) -> None:
    """The failed end of :func:`unit_of_work`: roll back and close ``session``, forget its
    buffered tasks and run its after-rollback callbacks."""
    try:
        session.rollback()
        discard_after_commit(session)
    finally:
        session.close()


def alembic_config(database_url: str) -> Any:
    """An Alembic config for this repository's migrations, pointed at ``database_url``."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser interpolation would choke on the % of URL-encoded passwords.
    config.set_main_option(
        "sqlalchemy.url", normalize_database_url(database_url).replace("%", "%%")
    )
    return config


def upgrade_database(database_url: str) -> None:
    """Bring the schema at ``database_url`` to the newest migration (``alembic upgrade head``)."""
    from alembic import command

    url = normalize_database_url(database_url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database:
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(url), "head")
