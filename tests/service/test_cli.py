"""The service commands: migrate, admin tenants and keys, worker command lines, embedded serve."""

from __future__ import annotations

import getpass
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import typer
from sqlalchemy import select
from typer.testing import CliRunner

from bds_service.cli import _parse_queue_kinds, inference_command, service_app, worker_command
from bds_service.db import make_engine, make_session_factory
from bds_service.embedded import EmbeddedService, free_port
from bds_service.models import AuditLog
from bds_service.settings import Settings
from bds_service.tenants.keys import is_well_formed
from bds_service.tenants.service import authenticate

runner = CliRunner()
SECRET = "cli-test-secret-0123456789"


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An isolated embedded deployment for the command under test."""
    # Only the service's own settings: bds_core's BDS_CACHE_DIR (model cache) stays.
    for field in Settings.model_fields:
        monkeypatch.delenv(f"BDS_{field.upper()}", raising=False)
    monkeypatch.setenv("BDS_API_KEY_SECRET", SECRET)
    monkeypatch.setenv("BDS_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


def test_admin_commands_on_a_database_without_schema_or_server_say_what_to_do(
    cli_env: Path,
) -> None:
    empty = runner.invoke(service_app, ["admin", "list-tenants"])
    assert empty.exit_code == 2
    assert "has no schema yet; run `bds migrate`" in empty.output
    assert "Traceback" not in empty.output
    assert not cli_env.exists(), "a command that only reads left an empty database behind"

    unreachable = runner.invoke(
        service_app,
        [
            "admin",
            "create-tenant",
            "acme",
            "--database-url",
            "postgresql+psycopg://someone:hunter2@127.0.0.1:1/bds",
        ],
    )
    assert unreachable.exit_code == 2
    assert "cannot connect to the database at postgresql+psycopg://someone:***@127.0.0.1:1/bds" in (
        unreachable.output
    )
    assert "hunter2" not in unreachable.output


def test_admin_commands_without_any_settings_leave_no_database_in_the_working_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """No BDS_* settings at all: the default data folder is ./.bds, and a command that finds
    no database there says so instead of leaving an empty ./.bds/bds.sqlite3 behind."""
    for field in Settings.model_fields:
        monkeypatch.delenv(f"BDS_{field.upper()}", raising=False)
    monkeypatch.chdir(tmp_path)
    for command in (["admin", "list-tenants"], ["admin", "create-tenant", "acme"]):
        result = runner.invoke(service_app, command)
        assert result.exit_code == 2, (command, result.output)
        assert "has no schema yet; run `bds migrate`" in result.output, command
    assert list(tmp_path.iterdir()) == []


def test_alembic_check_without_settings_says_so_and_creates_nothing(
    cli_env: Path, tmp_path: Path
) -> None:
    """`alembic check` run where no database was ever made names the missing file instead of
    creating an empty ./.bds/bds.sqlite3."""
    repo = Path(__file__).resolve().parents[2]
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BDS_")}
    env["PYTHONPATH"] = str(repo)
    checked = subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(repo / "alembic.ini"), "check"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert checked.returncode != 0
    assert f"there is no database at {workdir / '.bds' / 'bds.sqlite3'}" in checked.stderr
    assert list(workdir.iterdir()) == []


def test_admin_commands_create_a_tenant_and_a_key_shown_once(cli_env: Path, db_url: str) -> None:
    assert runner.invoke(service_app, ["migrate", "--database-url", db_url]).exit_code == 0
    created = runner.invoke(
        service_app, ["admin", "create-tenant", "acme", "--database-url", db_url]
    )
    assert created.exit_code == 0, created.output
    assert "created tenant acme (org-" in created.output

    issued = runner.invoke(
        service_app,
        [
            "admin",
            "create-key",
            "--tenant",
            "acme",
            "--admin",
            "--name",
            "ci-deploy",
            "--database-url",
            db_url,
        ],
    )
    assert issued.exit_code == 0, issued.output
    key = issued.stdout.strip()
    assert is_well_formed(key)
    engine = make_engine(db_url)
    with make_session_factory(engine)() as session:
        principal = authenticate(session, key, secret=SECRET)
        rows = session.scalars(select(AuditLog).order_by(AuditLog.id)).all()
    engine.dispose()
    assert principal.is_admin and principal.tenant_name == "acme"
    # The audit log says who ran which command where, and which key was made.
    by_action = {row.action: row for row in rows}
    user_at_host = f"{getpass.getuser()}@{socket.gethostname()}"
    assert by_action["tenant.create"].actor_id == f"{user_at_host} (bds admin create-tenant)"
    key_row = by_action["api_key.create"]
    assert key_row.actor_type == "cli"
    assert key_row.actor_id == f"{user_at_host} (bds admin create-key)"
    assert key_row.target_id == principal.key_id
    assert key_row.details is not None and key_row.details["name"] == "ci-deploy"
    assert key_row.details["is_admin"] is True

    listing = runner.invoke(service_app, ["admin", "list-tenants", "--database-url", db_url])
    assert key[:12] in listing.output and key not in listing.output

    duplicate = runner.invoke(
        service_app, ["admin", "create-tenant", "acme", "--database-url", db_url]
    )
    assert duplicate.exit_code == 1 and "already exists" in duplicate.output
    unknown = runner.invoke(
        service_app, ["admin", "create-key", "--tenant", "nobody", "--database-url", db_url]
    )
    assert unknown.exit_code == 1 and "no tenant named 'nobody'" in unknown.output


def test_worker_command_lines_name_the_deployment_queues(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, cpu_queue="site-cpu", gpu_queue="site-gpu")
    gpu = worker_command(settings, ["gpu"], concurrency=2, beat=False)
    assert gpu[gpu.index("--queues") + 1] == "site-gpu"
    assert gpu[gpu.index("--concurrency") + 1] == "2"
    assert gpu[gpu.index("--max-tasks-per-child") + 1] == "1"
    assert "--beat" not in gpu
    cpu = worker_command(settings, ["cpu"], concurrency=1, beat=True)
    assert cpu[cpu.index("--queues") + 1] == "site-cpu"
    assert "--beat" in cpu and "--max-tasks-per-child" not in cpu
    assert (
        worker_command(settings, ["cpu", "gpu"], concurrency=1, beat=False)[
            gpu.index("--queues") + 1
        ]
        == "site-cpu,site-gpu"
    )


def test_a_multi_gpu_worker_listens_on_the_multi_gpu_queue(tmp_path: Path) -> None:
    routed = Settings(data_dir=tmp_path, gpu_queue="site-gpu", multi_gpu_queue="site-gpu-multi")
    kinds = _parse_queue_kinds("gpu-multi,gpu")
    assert kinds == ["gpu_multi", "gpu"]
    command = worker_command(routed, kinds, concurrency=1, beat=False)
    assert command[command.index("--queues") + 1] == "site-gpu-multi,site-gpu"
    assert command[command.index("--max-tasks-per-child") + 1] == "1"
    # Without a queue of its own, multi-GPU jobs travel on the gpu queue: named once.
    plain = worker_command(
        Settings(data_dir=tmp_path, gpu_queue="site-gpu"), kinds, concurrency=1, beat=False
    )
    assert plain[plain.index("--queues") + 1] == "site-gpu"
    with pytest.raises(typer.BadParameter, match="unknown queue 'gpus'"):
        _parse_queue_kinds("gpus")


def test_the_inference_worker_listens_where_the_api_looks_for_it(tmp_path: Path) -> None:
    command = inference_command(Settings(data_dir=tmp_path, inference_url="http://10.0.0.5:9001"))
    assert command[1:3] == ["-m", "worker.inference"]
    assert command[command.index("--host") + 1] == "10.0.0.5"
    assert command[command.index("--port") + 1] == "9001"
    default = inference_command(Settings(data_dir=tmp_path))
    assert default[default.index("--port") + 1] == "8001"


@pytest.mark.slow
def test_embedded_serve_runs_api_and_workers_without_any_server(
    cli_env: Path, tmp_path: Path
) -> None:
    """`serve` with no options: SQLite database and broker, uploads validated by the worker."""
    environment = {
        **os.environ,
        "BDS_VALIDATE_UPLOADS_SYNCHRONOUSLY": "false",
        "BDS_INFERENCE_URL": f"http://127.0.0.1:{free_port()}",
    }
    serve = EmbeddedService(None, free_port(), environment, tmp_path / "serve.log")
    serve.start()
    base = serve.base_url
    try:
        serve.wait_ready(180)
        assert (cli_env / "bds.sqlite3").is_file() and (cli_env / "broker.sqlite3").is_file()

        assert runner.invoke(service_app, ["admin", "create-tenant", "acme"]).exit_code == 0
        key = runner.invoke(service_app, ["admin", "create-key", "--tenant", "acme"]).stdout
        headers = {"Authorization": f"Bearer {key.strip()}"}
        line = {
            "messages": [
                {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "4"},
            ]
        }
        uploaded = httpx.post(
            f"{base}/v1/files",
            headers=headers,
            files={"file": ("a.jsonl", json.dumps(line).encode())},
            data={"purpose": "fine-tune"},
        ).json()
        assert uploaded["status"] == "uploaded"
        deadline = time.monotonic() + 120
        status = "uploaded"
        while status == "uploaded" and time.monotonic() < deadline:
            time.sleep(1)
            status = httpx.get(f"{base}/v1/files/{uploaded['id']}", headers=headers).json()[
                "status"
            ]
        assert status == "processed"  # the cpu worker consumed the SQLite broker's message

        # The inference worker answers chat completions on a base model.
        chat = httpx.post(
            f"{base}/v1/chat/completions",
            headers=headers,
            json={
                "model": "tiny-random-llama",
                "messages": [{"role": "user", "content": "Hi"}],
                "max_tokens": 4,
            },
            timeout=120,
        )
        assert chat.status_code == 200, chat.text
        assert chat.json()["usage"]["completion_tokens"] <= 4
    finally:
        returncode = serve.stop()
    assert returncode == 0, (tmp_path / "serve.log").read_text()


def test_worker_alive_passes_only_while_the_liveness_file_is_fresh(
    cli_env: Path, tmp_path: Path
) -> None:
    """The liveness check of docker-compose: a fresh file is alive; a stale or missing one is
    not, with a message that says why."""
    path = tmp_path / "worker.alive"
    missing = runner.invoke(service_app, ["worker-alive", "--file", str(path)])
    assert missing.exit_code == 1 and "does not exist" in missing.output
    path.touch()
    fresh = runner.invoke(service_app, ["worker-alive", "--file", str(path), "--max-age", "30"])
    assert fresh.exit_code == 0, fresh.output
    old = time.time() - 120
    os.utime(path, (old, old))
    stale = runner.invoke(service_app, ["worker-alive", "--file", str(path), "--max-age", "30"])
    assert stale.exit_code == 1 and "last consumed 120 s ago" in stale.output
    unnamed = runner.invoke(service_app, ["worker-alive"])
    assert unnamed.exit_code == 1 and "BDS_WORKER_LIVENESS_FILE" in unnamed.output
