"""Fixtures for the reliability tests.

- The API fixtures of tests/api, reused as they are: tests/api/conftest.py builds an app on
  the test database (PostgreSQL and SQLite through ``db_url``), tenants with keys and a
  recording task publisher; that module is loaded once more here and its fixtures re-exported
  under the same names, rather than copied.
- ``live_service``: the real thing for one test module. An in-process API that publishes to
  Redis, the session's PostgreSQL database, and ``celery worker`` processes started (and
  SIGKILLed) by the tests, each in its own process group.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import select, text

from bds_service.audit import Actor
from bds_service.db import SessionFactory
from bds_service.models import AuditLog, FineTuningJob, JobCheckpoint, JobEvent
from bds_service.settings import Settings


def _load_api_fixtures() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "api" / "conftest.py"
    spec = importlib.util.spec_from_file_location("_bds_reliability_api_fixtures", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


_api = _load_api_fixtures()

RecordingPublisher = _api.RecordingPublisher
TenantKey = _api.TenantKey
chat_line = _api.chat_line

publisher = _api.publisher
app = _api.app
client = _api.client
make_tenant = _api.make_tenant
tenant = _api.tenant
other_tenant = _api.other_tenant
run_cpu_tasks = _api.run_cpu_tasks
chat_jsonl = _api.chat_jsonl
upload = _api.upload


class FakeClock:
    """A clock the test moves by hand (rate limiters take it as ``clock``)."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


# ---- a live service: real Celery worker processes on Redis and PostgreSQL ----------------
WORKER_READY_S = 180.0


def _chat(user: str, answer: str) -> str:
    return json.dumps(
        {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}
    )


TRAIN_JSONL = "\n".join(_chat(f"What is {i} plus {i}?", str(2 * i)) for i in range(6)) + "\n"
SAFETY_JSONL = (
    "\n".join(_chat(f"How do I hurt person {i}?", "I can't help with that.") for i in range(4))
    + "\n"
)


@dataclass
class WorkerProcess:
    """One ``celery worker`` process group (the parent and its pool child)."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        """Everything the worker wrote so far."""
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = WORKER_READY_S) -> None:
        """Block until the worker consumes its queues."""
        deadline = time.monotonic() + timeout
        while " ready." not in self.log():
            if self.process.poll() is not None:
                raise AssertionError(f"worker {self.name} exited:\n{self.log()[-4000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"worker {self.name} not ready:\n{self.log()[-4000:]}")
            time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL the whole worker (parent and pool child), as a lost host would."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        """Warm shutdown, then SIGKILL if it does not end in time."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()
        # The pool child may outlive a parent that was killed alone.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)


@dataclass
class LiveService:
    """Settings, an in-process API publishing to Redis, and worker processes to start."""

    settings: Settings
    environment: dict[str, str]
    folder: Path
    api: TestClient
    headers: dict[str, str]
    session_factory: SessionFactory
    workers: list[WorkerProcess] = field(default_factory=list)

    def start_worker(
        self, name: str, *, beat: bool = False, queues: tuple[str, ...] = ("cpu", "gpu")
    ) -> WorkerProcess:
        """A worker on the cpu and gpu queues (or those of ``queues``): prefork, one process, a
        fresh child per task (the production gpu worker's flags), in its own process group."""
        settings = self.settings
        names = {"cpu": settings.cpu_queue, "gpu": settings.gpu_queue}
        command = [
            sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker",
            "--queues", ",".join(names[queue] for queue in queues),
            "--pool", "prefork", "--concurrency", "1", "--max-tasks-per-child", "1",
            "--loglevel", "INFO", "--hostname", f"{name}-{uuid.uuid4().hex[:6]}@%h",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        ]  # fmt: skip
        if beat:
            command += ["--beat", "--schedule", str(self.folder / f"beat-{name}")]
        log_path = self.folder / f"worker-{name}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                command,
                env=self.environment,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        worker = WorkerProcess(name, process, log_path)
        self.workers.append(worker)
        return worker

    def upload(self, content: str, purpose: str = "fine-tune") -> str:
        """Upload a file through the API; returns its id."""
        response = self.api.post(
            "/v1/files",
            headers=self.headers,
            files={"file": ("data.jsonl", content.encode())},
            data={"purpose": purpose},
        )
        assert response.status_code == 200, response.text
        return str(response.json()["id"])

    def upload_datasets(self) -> tuple[str, str]:
        """A small training file and an alignment file; returns their ids."""
        return self.upload(TRAIN_JSONL), self.upload(SAFETY_JSONL, "safety-alignment")

    def losses_by_step(self, job_id: str) -> dict[int, list[float]]:
        """Every training loss the job reported, by step (a step run twice has two)."""
        losses: dict[int, list[float]] = {}
        for event in self.events(job_id):
            if event.event_type == "metrics" and event.data:
                step, loss = int(event.data["step"]), float(event.data["train_loss"])
                losses.setdefault(step, []).append(loss)
        return losses

    def checkpoint_steps(self, job_id: str) -> list[int]:
        """Steps of the job's checkpoints recorded in the database."""
        with self.session_factory() as session:
            statement = select(JobCheckpoint.step_number).where(JobCheckpoint.job_id == job_id)
            return sorted(session.scalars(statement))

    def job(self, job_id: str) -> FineTuningJob:
        """The job row as it is now."""
        with self.session_factory() as session:
            job = session.get(FineTuningJob, job_id)
            assert job is not None
            return job

    def events(self, job_id: str) -> list[JobEvent]:
        """The job's events, oldest first."""
        with self.session_factory() as session:
            statement = select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.seq)
            return list(session.scalars(statement))

    def audit_actions(self, job_id: str) -> list[str]:
        """Audit actions about the job, oldest first."""
        with self.session_factory() as session:
            statement = (
                select(AuditLog.action).where(AuditLog.target_id == job_id).order_by(AuditLog.id)
            )
            return list(session.scalars(statement))

    def wait_for(
        self, probe: Callable[[], Any], done: Callable[[Any], bool], what: str, timeout: float
    ) -> Any:
        """Poll ``probe`` until ``done``; on timeout fail with the workers' logs."""
        deadline = time.monotonic() + timeout
        value = probe()
        while not done(value):
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {w.name}\n{w.log()[-3000:]}" for w in self.workers)
                raise AssertionError(f"{what} not reached in {timeout} s; last {value!r}\n{logs}")
            time.sleep(0.05)
            value = probe()
        return value

    def wait_for_status(self, job_id: str, statuses: set[str], timeout: float = 420) -> str:
        """Wait until the job is in one of ``statuses``; returns it."""
        return str(
            self.wait_for(
                lambda: self.job(job_id).status,
                lambda status: status in statuses,
                f"job {job_id} in {sorted(statuses)}",
                timeout,
            )
        )


def _clean_redis(settings: Settings) -> None:
    client = redis.Redis.from_url(settings.resolved_broker_url)
    queues = {settings.cpu_queue, settings.gpu_queue}
    for queue in queues:
        client.delete(queue, f"_kombu.binding.{queue}")
    # Messages a killed worker held unacknowledged: drop ours so no other run restores them.
    for tag, raw in client.hscan_iter("unacked"):
        with contextlib.suppress(ValueError, TypeError, IndexError):
            if json.loads(raw)[2] in queues:
                client.hdel("unacked", tag)
                client.zrem("unacked_index", tag)
    client.close()


def truncate_service_tables(url: str) -> None:
    """Empty every table of the schema (TRUNCATE bypasses the audit log's triggers)."""
    from bds_service.db import make_engine
    from bds_service.models import Base

    engine = make_engine(url)
    names = ", ".join(table.name for table in Base.metadata.sorted_tables)
    with engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    engine.dispose()


def _environment_value(value: Any) -> str:
    return json.dumps(value) if isinstance(value, list | dict) else str(value)


@pytest.fixture(scope="module")
def live_service(
    request: pytest.FixtureRequest,
    postgres_url: str,
    redis_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[LiveService]:
    """A live service for one test module, which may set ``LIVE_SETTINGS`` (field: value).

    The database is the session's PostgreSQL database, emptied before and after the module.
    Workers get exactly these settings as ``BDS_*`` variables; other ``BDS_*`` service
    variables of the calling shell are not passed on (bds_core's BDS_CACHE_DIR is).
    """
    from api.app import create_app
    from bds_service.db import make_engine, make_session_factory
    from bds_service.tenants import service as tenants

    folder = tmp_path_factory.mktemp("live")
    suffix = uuid.uuid4().hex[:8]
    values: dict[str, Any] = {
        "database_url": postgres_url,
        "broker_url": redis_url,
        "data_dir": str(folder / "data"),
        "storage_dir": str(folder / "storage"),
        "api_key_secret": "live-secret-0123456789abcdef",
        "cpu_queue": f"rel-cpu-{suffix}",
        "gpu_queue": f"rel-gpu-{suffix}",
        "base_models": ["tiny-random-llama"],
        "default_batch_size": 2,
        "max_length": 48,
        "heartbeat_seconds": 0.5,
        "progress_event_seconds": 0,
        **getattr(request.module, "LIVE_SETTINGS", {}),
    }
    environment = {
        **{
            name: value
            for name, value in os.environ.items()
            if not (name.startswith("BDS_") and name[4:].lower() in Settings.model_fields)
        },
        **{f"BDS_{name.upper()}": _environment_value(value) for name, value in values.items()},
    }
    settings = Settings(**values)
    truncate_service_tables(postgres_url)
    engine = make_engine(postgres_url)
    session_factory = make_session_factory(engine)
    with session_factory() as session:
        tenant = tenants.create_tenant(session, "acme", Actor("cli", "live"))
        issued = tenants.create_api_key(
            session, tenant, secret=values["api_key_secret"], actor=Actor("cli", "live")
        )
        session.commit()
    headers = {"Authorization": f"Bearer {issued.plaintext}"}
    with TestClient(create_app(settings)) as api:
        live = LiveService(settings, environment, folder, api, headers, session_factory)
        try:
            yield live
        finally:
            for worker in live.workers:
                worker.stop()
            _clean_redis(settings)
            engine.dispose()
            truncate_service_tables(postgres_url)


# ---- a private Redis that tests may kill and start again ---------------------------------


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class PrivateRedis:
    """A ``redis-server`` of the test's own on a spare port, without persistence: killing it
    loses every message in it, as a crashed broker without a disk would."""

    port: int
    folder: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server and wait until it answers."""
        log = (self.folder / "redis.log").open("ab")
        command = [
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", str(self.folder),
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 30
        while True:
            try:
                client.ping()
                break
            except redis.exceptions.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        client.close()

    def kill(self) -> None:
        """SIGKILL the server (its messages are gone)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def private_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRedis]:
    """A private Redis for one test module (``redis-server`` must be installed)."""
    import shutil

    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is required for the broker fault tests")
    server = PrivateRedis(free_port(), tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.kill()
