"""Service commands: ``serve``, ``worker``, ``migrate`` and ``admin ...``.

``service_app`` is mounted into the top-level ``bds`` command (``app.add_typer(service_app)``,
without a name, so the commands read ``bds serve``, ``bds worker --queues gpu``,
``bds admin create-key --tenant acme``). The API and the worker are started as subprocesses by
module path (``uvicorn api.app:app``, ``celery -A worker.celery_app``): this package imports
neither of them.
"""

from __future__ import annotations

import datetime as dt
import getpass
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from sqlalchemy import Engine, inspect, make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from bds_service.audit import Actor
from bds_service.db import (
    make_engine,
    make_session_factory,
    missing_sqlite_file,
    upgrade_database,
)
from bds_service.errors import ServiceError
from bds_service.settings import Settings, get_settings
from bds_service.tasks import QueueKind, queue_name
from bds_service.tenants import service as tenants

service_app = typer.Typer(help="Run and administer the fine-tuning service.", no_args_is_help=True)
admin_app = typer.Typer(help="Tenants and API keys (keys are shown once).", no_args_is_help=True)
service_app.add_typer(admin_app, name="admin")


def cli_actor(command: str) -> Actor:
    """The audit actor of a command-line action: who ran which command, on which host.

    ``alice@build-7 (bds admin create-key)`` rather than a bare ``cli``, so an operator can
    tell one person's or script's actions from another's.
    """
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no user name in the environment nor in the password file
        user = f"uid {os.getuid()}"
    return Actor("cli", f"{user}@{socket.gethostname()} (bds admin {command})"[:200])


_SHUTDOWN_GRACE_S = 30.0

DatabaseUrl = Annotated[
    str | None,
    typer.Option("--database-url", help="SQLAlchemy URL (default: SQLite under the data dir)"),
]
BrokerUrl = Annotated[
    str | None,
    typer.Option("--broker-url", help="Celery broker URL (default: SQLite broker, no server)"),
]
DataDir = Annotated[
    Path | None, typer.Option("--data-dir", help="embedded database, broker and files (.bds)")
]


def _apply_overrides(
    database_url: str | None = None, broker_url: str | None = None, data_dir: Path | None = None
) -> Settings:
    """Put command-line overrides into the environment (children inherit them); reload."""
    for name, value in (
        ("BDS_DATABASE_URL", database_url),
        ("BDS_BROKER_URL", broker_url),
        ("BDS_DATA_DIR", str(data_dir.resolve()) if data_dir else None),
    ):
        if value is not None:
            os.environ[name] = value
    get_settings.cache_clear()
    return get_settings()


def _check_database(engine: Engine, url: str) -> None:
    """Exit with a clear message when the database is unreachable or has no schema yet."""
    shown = make_url(url).render_as_string(hide_password=True)
    try:
        migrated = inspect(engine).has_table("alembic_version")
    except OperationalError as error:
        typer.secho(
            f"error: cannot connect to the database at {shown}: {error.orig}",
            err=True,
            fg=typer.colors.RED,
        )
        raise typer.Exit(code=2) from None
    if not migrated:
        raise _no_schema(shown)


def _no_schema(shown: str) -> typer.Exit:
    typer.secho(
        f"error: the database at {shown} has no schema yet; run `bds migrate` with the same "
        "--database-url / --data-dir first (`bds serve` does it by itself)",
        err=True,
        fg=typer.colors.RED,
    )
    return typer.Exit(code=2)


@contextmanager
def _session(settings: Settings) -> Iterator[Session]:
    if missing_sqlite_file(settings.resolved_database_url) is not None:
        # Connecting would leave an empty database file (and its folder) behind.
        raise _no_schema(settings.resolved_database_url)
    engine = make_engine(settings.resolved_database_url)
    try:
        _check_database(engine, settings.resolved_database_url)
    except typer.Exit:
        engine.dispose()
        raise
    session = make_session_factory(engine)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
        engine.dispose()


def _fail(error: ServiceError) -> None:
    typer.secho(f"error: {error.message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code=1)


@service_app.command()
def migrate(database_url: DatabaseUrl = None, data_dir: DataDir = None) -> None:
    """Apply the database migrations (alembic upgrade head)."""
    settings = _apply_overrides(database_url, data_dir=data_dir)
    upgrade_database(settings.resolved_database_url)
    typer.echo("database schema is up to date")


@admin_app.command("create-tenant")
def create_tenant(
    name: Annotated[str, typer.Argument(help="tenant name: lowercase letters, digits, - and _")],
    database_url: DatabaseUrl = None,
    data_dir: DataDir = None,
) -> None:
    """Create a tenant (a customer organisation)."""
    settings = _apply_overrides(database_url, data_dir=data_dir)
    try:
        with _session(settings) as session:
            tenant = tenants.create_tenant(session, name, cli_actor("create-tenant"))
            typer.echo(f"created tenant {tenant.name} ({tenant.id})")
    except ServiceError as error:
        _fail(error)


@admin_app.command("create-key")
def create_key(
    tenant: Annotated[str, typer.Option("--tenant", help="name of the tenant")],
    admin: Annotated[bool, typer.Option("--admin", help="may use /v1/admin routes")] = False,
    name: Annotated[str | None, typer.Option("--name", help="label shown in listings")] = None,
    expires_in_days: Annotated[
        int | None, typer.Option("--expires-in-days", min=1, help="key stops working after")
    ] = None,
    database_url: DatabaseUrl = None,
    data_dir: DataDir = None,
) -> None:
    """Create an API key and print it. It is shown this once: only its HMAC is stored."""
    settings = _apply_overrides(database_url, data_dir=data_dir)
    expires_at = (
        dt.datetime.now(dt.UTC) + dt.timedelta(days=expires_in_days) if expires_in_days else None
    )
    try:
        with _session(settings) as session:
            issued = tenants.create_api_key(
                session,
                tenants.get_tenant_by_name(session, tenant),
                secret=settings.api_key_secret.get_secret_value(),
                actor=cli_actor("create-key"),
                is_admin=admin,
                name=name,
                expires_at=expires_at,
            )
    except ServiceError as error:
        _fail(error)
    typer.echo(issued.plaintext)
    typer.secho(
        f"key {issued.api_key.id} for tenant {tenant}{' (admin)' if admin else ''}; "
        "store it now, it cannot be shown again",
        err=True,
    )


@admin_app.command("list-tenants")
def list_tenants(database_url: DatabaseUrl = None, data_dir: DataDir = None) -> None:
    """List tenants and their keys (prefixes only)."""
    settings = _apply_overrides(database_url, data_dir=data_dir)
    with _session(settings) as session:
        for tenant in tenants.list_tenants(session):
            typer.echo(f"{tenant.name}\t{tenant.id}")
            for key in tenants.list_api_keys(session, tenant.id):
                state = "revoked" if key.revoked_at else "admin" if key.is_admin else "active"
                typer.echo(f"  {key.id}\t{key.key_prefix}...\t{state}")


@admin_app.command("revoke-key")
def revoke_key(
    tenant: Annotated[str, typer.Option("--tenant", help="name of the tenant")],
    key_id: Annotated[str, typer.Argument(help="key id (key-...)")],
    database_url: DatabaseUrl = None,
    data_dir: DataDir = None,
) -> None:
    """Revoke an API key; it stops working at once."""
    settings = _apply_overrides(database_url, data_dir=data_dir)
    try:
        with _session(settings) as session:
            owner = tenants.get_tenant_by_name(session, tenant)
            tenants.revoke_api_key(session, owner.id, key_id, cli_actor("revoke-key"))
    except ServiceError as error:
        _fail(error)
    typer.echo(f"revoked {key_id}")


def worker_command(
    settings: Settings, kinds: list[QueueKind], *, concurrency: int, beat: bool
) -> list[str]:
    """The celery command line of a worker consuming the given queue kinds."""
    # Without a multi-GPU queue of its own, gpu-multi is the gpu queue: name it once.
    queues = ",".join(dict.fromkeys(queue_name(kind, settings) for kind in kinds))
    command = [
        sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker",
        "--queues", queues, "--concurrency", str(concurrency), "--loglevel", "INFO",
        "--hostname", f"{'-'.join(kinds)}@%h",
    ]  # fmt: skip
    if "gpu" in kinds or "gpu_multi" in kinds:
        # A fresh child per training job returns all of its (GPU) memory.
        command += ["--max-tasks-per-child", "1"]
    if beat:
        schedule = settings.data_dir.resolve() / "celerybeat-schedule"
        schedule.parent.mkdir(parents=True, exist_ok=True)
        command += ["--beat", "--schedule", str(schedule)]
    return command


def _parse_queue_kinds(queues: str) -> list[QueueKind]:
    known: dict[str, QueueKind] = {"cpu": "cpu", "gpu": "gpu", "gpu-multi": "gpu_multi"}
    kinds: list[QueueKind] = []
    for part in queues.split(","):
        kind = known.get(part.strip())
        if kind is None:
            raise typer.BadParameter(
                f"unknown queue {part.strip()!r}: use cpu, gpu, gpu-multi or a comma list"
            )
        kinds.append(kind)
    return kinds


@service_app.command()
def worker(
    queues: Annotated[
        str,
        typer.Option(
            "--queues",
            "-Q",
            help="cpu (validate, score), gpu (train), gpu-multi (train jobs with n_gpus > 1, "
            "on BDS_MULTI_GPU_QUEUE), or a comma list such as cpu,gpu",
        ),
    ] = "cpu,gpu",
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-c", min=1, help="processes (1 per GPU)")
    ] = 1,
    beat: Annotated[
        bool, typer.Option("--beat", help="also run the lease reaper schedule (one per site)")
    ] = False,
    database_url: DatabaseUrl = None,
    broker_url: BrokerUrl = None,
    data_dir: DataDir = None,
) -> None:
    """Run a Celery worker on the cpu and/or gpu queue."""
    settings = _apply_overrides(database_url, broker_url, data_dir)
    command = worker_command(
        settings, _parse_queue_kinds(queues), concurrency=concurrency, beat=beat
    )
    os.execv(sys.executable, command)


def _api_command(host: str, port: int) -> list[str]:
    return [
        sys.executable, "-m", "uvicorn", "api.app:app", "--host", host, "--port", str(port),
        "--no-access-log",
    ]  # fmt: skip


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + _SHUTDOWN_GRACE_S
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@service_app.command()
def serve(
    host: Annotated[str, typer.Option(help="interface the API listens on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="API port")] = 8000,
    database_url: DatabaseUrl = None,
    broker_url: BrokerUrl = None,
    data_dir: DataDir = None,
    workers: Annotated[
        bool, typer.Option("--workers/--no-workers", help="also start the cpu and gpu workers")
    ] = True,
) -> None:
    """Run the whole service on this machine: migrate, then the API and two workers.

    With no options everything is embedded (SQLite database and broker under the data dir,
    no server needed). The cpu worker (validation, scoring, the lease reaper) and the gpu
    worker (training, one job at a time) are separate processes so that uploads are
    validated while a job trains.
    """
    settings = _apply_overrides(database_url, broker_url, data_dir)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    typer.echo(f"database: {settings.resolved_database_url}")
    typer.echo(f"broker:   {settings.resolved_broker_url}")
    typer.echo(f"storage:  {settings.resolved_storage_dir}")
    upgrade_database(settings.resolved_database_url)

    commands = [_api_command(host, port)]
    if workers:
        commands.append(worker_command(settings, ["cpu"], concurrency=1, beat=True))
        commands.append(worker_command(settings, ["gpu"], concurrency=1, beat=False))
    names = ["api", "cpu worker", "gpu worker"][: len(commands)]
    processes = [subprocess.Popen(command) for command in commands]
    typer.echo(f"API on http://{host}:{port}/v1 (Ctrl-C stops everything)")

    def _terminate(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    exit_code = 0
    try:
        while True:
            exited = [
                (name, process)
                for name, process in zip(names, processes, strict=True)
                if process.poll() is not None
            ]
            if exited:
                name, process = exited[0]
                exit_code = process.returncode or 1
                typer.secho(
                    f"the {name} exited with code {process.returncode}; stopping the others",
                    err=True,
                    fg=typer.colors.RED,
                )
                break
            time.sleep(0.5)
    except KeyboardInterrupt:
        typer.echo("stopping")
    finally:
        _stop(processes)
    raise typer.Exit(code=exit_code)


def main() -> None:
    """Run the service commands on their own (``python -m bds_service.cli``)."""
    service_app()


if __name__ == "__main__":
    main()
