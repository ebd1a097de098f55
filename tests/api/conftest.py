"""API fixtures: an app on the test database, tenants with keys, and a stand-in for the worker.

The app publishes tasks to a recording publisher; ``run_cpu_tasks`` then runs the recorded cpu
tasks through the same service functions the Celery tasks call (the worker's own wiring is
tested in tests/worker with a real Celery worker on Redis).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.app import create_app
from bds_service.audit import Actor
from bds_service.db import SessionFactory, unit_of_work
from bds_service.files import service as files_service
from bds_service.jobs import service as jobs_service
from bds_service.settings import Settings
from bds_service.storage import LocalStorage
from bds_service.tasks import (
    PREPARE_JOB,
    SCORE_DATASET,
    VALIDATE_FILE,
    TaskMessage,
)
from bds_service.tenants import service as tenants_service
from bds_service.tenants.repository import TenantRepository

REPO_ROOT = Path(__file__).resolve().parents[2]
BROWSER_ARTIFACTS = REPO_ROOT / "test-artifacts" / "pages"
"""Where the browser tests leave their screenshots."""
CHROMIUM = os.environ.get("BDS_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


class RecordingPublisher:
    """Keeps published task messages instead of sending them to a broker."""

    def __init__(self) -> None:
        self.messages: list[TaskMessage] = []

    def send(self, message: TaskMessage) -> None:
        self.messages.append(message)

    def take(self) -> list[TaskMessage]:
        taken, self.messages = self.messages, []
        return taken


@dataclass(frozen=True)
class TenantKey:
    """A tenant and one of its keys, ready to send."""

    tenant_id: str
    name: str
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


@pytest.fixture
def publisher() -> RecordingPublisher:
    return RecordingPublisher()


@pytest.fixture
def app(service_settings: Settings, publisher: RecordingPublisher) -> FastAPI:
    return create_app(service_settings, publisher)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture
def make_tenant(
    session_factory: SessionFactory, service_settings: Settings
) -> Callable[..., TenantKey]:
    def make(name: str, admin: bool = False) -> TenantKey:
        actor = Actor("cli", "tests")
        with session_factory() as session:
            tenant = TenantRepository(session).get_by_name(name)
            if tenant is None:
                tenant = tenants_service.create_tenant(session, name, actor)
            issued = tenants_service.create_api_key(
                session,
                tenant,
                secret=service_settings.api_key_secret.get_secret_value(),
                actor=actor,
                is_admin=admin,
            )
            session.commit()
            return TenantKey(tenant.id, name, issued.plaintext)

    return make


@pytest.fixture
def tenant(make_tenant: Callable[..., TenantKey]) -> TenantKey:
    return make_tenant("acme")


@pytest.fixture
def other_tenant(make_tenant: Callable[..., TenantKey]) -> TenantKey:
    return make_tenant("globex")


@pytest.fixture
def run_cpu_tasks(
    publisher: RecordingPublisher, session_factory: SessionFactory, service_settings: Settings
) -> Callable[[], list[tuple[str, str]]]:
    """Run recorded cpu tasks (and the ones they enqueue) until none is left.

    Returns (task name, outcome) pairs; gpu tasks stay recorded on the publisher.
    """
    storage = LocalStorage(service_settings.resolved_storage_dir)

    def uow() -> Any:
        return unit_of_work(session_factory, publisher)

    def run() -> list[tuple[str, str]]:
        outcomes: list[tuple[str, str]] = []
        gpu: list[TaskMessage] = []
        while True:
            pending = publisher.take()
            if not pending:
                break
            for message in pending:
                (object_id,) = message.args
                if message.name == VALIDATE_FILE:
                    result = files_service.run_validation(uow, object_id, storage, service_settings)
                elif message.name == SCORE_DATASET:
                    result = files_service.run_scoring(uow, object_id, storage, service_settings)
                elif message.name == PREPARE_JOB:
                    with uow() as session:
                        result = jobs_service.prepare_job(session, object_id)
                else:
                    gpu.append(message)
                    continue
                outcomes.append((message.name, result))
        publisher.messages.extend(gpu)
        return outcomes

    return run


def chat_line(index: int, user: str = "What is {i} plus {i}?", answer: str = "{s}") -> str:
    """One valid chat-format JSONL line."""
    return json.dumps(
        {
            "messages": [
                {"role": "user", "content": user.format(i=index)},
                {"role": "assistant", "content": answer.format(s=2 * index)},
            ]
        }
    )


@pytest.fixture
def chat_jsonl() -> Callable[[int], bytes]:
    """A valid chat dataset of n examples."""

    def make(n: int, offset: int = 0) -> bytes:
        return ("\n".join(chat_line(offset + index) for index in range(n)) + "\n").encode()

    return make


@pytest.fixture
def upload(client: TestClient, chat_jsonl: Callable[..., bytes]) -> Callable[..., Any]:
    """Upload content for a tenant; returns the response."""

    def send(
        who: TenantKey,
        content: bytes | None = None,
        *,
        purpose: str = "fine-tune",
        filename: str = "train.jsonl",
    ) -> Any:
        return client.post(
            "/v1/files",
            headers=who.headers,
            files={"file": (filename, chat_jsonl(4) if content is None else content)},
            data={"purpose": purpose},
        )

    return send


def _truncate_all_tables(url: str) -> None:
    from sqlalchemy import text

    from bds_service.db import make_engine
    from bds_service.models import Base

    engine = make_engine(url)
    tables = ", ".join(table.name for table in Base.metadata.sorted_tables)
    with engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()


@pytest.fixture(scope="session")
def truncate_all_tables() -> Callable[[str], None]:
    """Empties every table of a PostgreSQL database (for module-scoped set-ups)."""
    return _truncate_all_tables


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """Debian's Chromium under Playwright (no browser download)."""
    playwright_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install chromium")
    BROWSER_ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()
