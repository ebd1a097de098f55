"""The migrations are the schema: they build it from nothing and match the models exactly."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import create_engine, insert, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from bds_service.db import alembic_config, make_engine, upgrade_database
from bds_service.models import AuditLog, Base, utcnow

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_alembic_cli_upgrade_head_on_empty_postgres_then_check_finds_no_diff(
    postgres_server_url: str,
) -> None:
    """`alembic upgrade head` then `alembic check` through the repository's alembic.ini."""
    name = f"bds_migrate_{uuid.uuid4().hex[:8]}"
    server = create_engine(postgres_server_url, isolation_level="AUTOCOMMIT")
    with server.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(postgres_server_url).set(database=name).render_as_string(hide_password=False)
    environment = {**os.environ, "BDS_DATABASE_URL": url}
    alembic = [sys.executable, "-m", "alembic"]
    try:
        for arguments in (["upgrade", "head"], ["check"]):
            completed = subprocess.run(
                [*alembic, *arguments],
                cwd=REPO_ROOT,
                env=environment,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert completed.returncode == 0, completed.stderr
        assert "No new upgrade operations detected" in completed.stdout + completed.stderr
        engine = create_engine(url)
        assert set(inspect(engine).get_table_names()) >= set(Base.metadata.tables)
        engine.dispose()
    finally:
        with server.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        server.dispose()


def test_models_and_migrations_agree_on_both_backends(db_url: str) -> None:
    command.check(alembic_config(db_url))


def test_downgrade_to_base_and_upgrade_again(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'roundtrip.sqlite3'}"
    upgrade_database(url)
    command.downgrade(alembic_config(url), "base")
    engine = make_engine(url)
    assert set(inspect(engine).get_table_names()) == {"alembic_version"}
    engine.dispose()
    upgrade_database(url)
    command.check(alembic_config(url))


@pytest.mark.parametrize(
    "statement", ["UPDATE audit_log SET action = 'x'", "DELETE FROM audit_log"]
)
def test_database_refuses_to_change_audit_rows(db_url: str, statement: str) -> None:
    engine = make_engine(db_url)
    with engine.begin() as connection:
        connection.execute(
            insert(AuditLog).values(
                created_at=utcnow(), actor_type="cli", action="tenant.create", target_type="tenant"
            )
        )
    with pytest.raises(DBAPIError, match="append-only"), engine.begin() as connection:
        connection.execute(text(statement))
    with engine.connect() as connection:
        assert connection.execute(text("SELECT action FROM audit_log")).scalar_one() == (
            "tenant.create"
        )
    engine.dispose()
