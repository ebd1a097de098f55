"""How many SQL statements the busiest requests send: each is a round trip to the database,
so a change that adds one to every list or create shows here (a count, not a timing).

The counts are of statements the application executes (SQLAlchemy's ``before_cursor_execute``,
which sees neither BEGIN nor COMMIT), after the first request of the key: that one also looks
the key up, the next ones take it from the process's cache (``api_key_cache_seconds``). On
PostgreSQL the list runs in autocommit, so its count is its round trips; the create's
transaction adds a BEGIN and a COMMIT to its count.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import event

TenantKey = Any  # fixture types from tests/api/conftest.py

LIST_STATEMENTS = 1  # the page
FIRST_LIST_STATEMENTS = 2  # the key's lookup, the page
# The key's claim (INSERT ... ON CONFLICT DO NOTHING), the job's files with the provider's
# reviews (one SELECT ... FOR SHARE), tenant lock (FOR NO KEY UPDATE SKIP LOCKED; a
# lock_timeout is set and reset around a wait only when another transaction holds it), and
# on PostgreSQL one statement that counts the unfinished jobs and, under the cap, inserts
# the job, its audit row and its events (data-modifying CTEs); on SQLite the count and one
# INSERT per table.
CREATE_STATEMENTS = {"postgresql": 4, "sqlite": 7}


@pytest.fixture
def statements(app: FastAPI) -> Iterator[list[str]]:
    """The SQL statements the app sends, in order."""
    sent: list[str] = []

    def record(*args: Any) -> None:
        if not args[2].startswith("BEGIN"):  # SQLite's BEGIN IMMEDIATE (see bds_service.db)
            sent.append(args[2])

    engine = app.state.services.engine
    event.listen(engine, "before_cursor_execute", record)
    yield sent
    event.remove(engine, "before_cursor_execute", record)


def test_a_list_of_files_sends_one_statement_once_the_key_is_known(
    client: TestClient,
    tenant: TenantKey,
    upload: Callable[..., Any],
    statements: list[str],
) -> None:
    for _ in range(3):
        assert upload(tenant).status_code == 200
    statements.clear()
    first = client.get("/v1/files?limit=2", headers=tenant.headers)
    assert first.status_code == 200 and len(first.json()["data"]) == 2
    assert len(statements) <= FIRST_LIST_STATEMENTS, statements
    statements.clear()
    page = client.get(f"/v1/files?limit=2&after={first.json()['last_id']}", headers=tenant.headers)
    assert page.status_code == 200 and len(page.json()["data"]) == 1
    assert len(statements) <= LIST_STATEMENTS + 1, statements  # + the cursor's row
    statements.clear()
    assert client.get("/v1/files?limit=20", headers=tenant.headers).status_code == 200
    assert len(statements) <= LIST_STATEMENTS, statements


def test_a_job_create_sends_a_bounded_number_of_statements(
    client: TestClient,
    tenant: TenantKey,
    upload: Callable[..., Any],
    run_cpu_tasks: Callable[[], Any],
    statements: list[str],
    app: FastAPI,
) -> None:
    training = upload(tenant).json()["id"]
    run_cpu_tasks()  # the file is processed: the job is queued at once
    body = {
        "model": "tiny-random-llama",
        "training_file": training,
        "method": {"type": "supervised"},
    }
    for attempt in range(2):
        statements.clear()
        created = client.post(
            "/v1/fine_tuning/jobs",
            json=body,
            headers={**tenant.headers, "Idempotency-Key": uuid.uuid4().hex},
        )
        assert created.status_code == 200, created.text
        assert created.json()["status"] == "queued"
        limit = CREATE_STATEMENTS[app.state.services.engine.dialect.name]
        assert len(statements) <= limit + (1 if attempt == 0 else 0), statements
