"""Load benchmark: many concurrent clients create files and jobs against real PostgreSQL.

Starts the API (uvicorn, one process) on 127.0.0.1 against a fresh PostgreSQL database made
for the run, then runs ``--clients`` concurrent clients for ``--rounds`` rounds each. A round
is: upload a small JSONL file; create a job with an ``Idempotency-Key`` three times (the
request and a retry sent at the same moment, as a client that timed out would, then one more
retry after both answered); create a job without a key. Afterwards it checks the database
against the answers and reports:

- requests per second and p50/p99 latency, overall and per kind of request;
- failed requests: no answer, or an answer other than 200 (must be 0);
- lost requests: a 200 whose file or job is not in the database (must be 0);
- duplicates: more than one job for one Idempotency-Key, or retries of one key answered with
  different jobs (must be 0).

Everything is bounded: a fixed number of requests, a deadline for the whole run
(``--max-seconds``), loopback only. Nothing runs the jobs (no worker is started); task
messages go to queues made for the run on the local Redis (``--broker memory`` keeps them in
the API process instead), which are deleted at the end, as is the database.

    .venv/bin/python scripts/load_test.py --clients 32 --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bds_service.embedded import ServiceNotReadyError, ServiceProcess, start_api  # noqa: E402

DEFAULT_POSTGRES = os.environ.get(
    "BDS_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
DEFAULT_REDIS = os.environ.get("BDS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
SECRET = "load-test-secret-0123456789abcdef"
MAX_ATTEMPTS = 5


@dataclass
class Sample:
    """One request: its kind, how long it took and how it ended."""

    kind: str
    seconds: float
    status: int | None  # None: no answer (connection error, timeout)
    error: str | None = None  # the client's exception when there was no answer


@dataclass
class Outcome:
    """What the clients saw, to be checked against the database."""

    samples: list[Sample] = field(default_factory=list)
    final_statuses: list[int | None] = field(default_factory=list)
    file_ids: set[str] = field(default_factory=set)
    keyless_job_ids: set[str] = field(default_factory=set)
    jobs_by_key: dict[tuple[str, str], set[str]] = field(default_factory=lambda: defaultdict(set))
    created_answers_by_key: dict[tuple[str, str], int] = field(
        default_factory=lambda: defaultdict(int)
    )


def _chat_file(client: int, round_number: int) -> bytes:
    lines = [
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": f"Client {client}, round {round_number}: {i}+{i}?"},
                    {"role": "assistant", "content": str(2 * i)},
                ]
            }
        )
        for i in range(8)
    ]
    return ("\n".join(lines) + "\n").encode()


async def _timed(
    outcome: Outcome, kind: str, send: Any, *args: Any, **kwargs: Any
) -> httpx.Response | None:
    """Send one request as a well-behaved client: a 429 is retried after its Retry-After
    (at most ``MAX_ATTEMPTS`` times). Every attempt is a sample; the last answer is returned."""
    response: httpx.Response | None = None
    for _attempt in range(MAX_ATTEMPTS):
        started = time.perf_counter()
        try:
            response = await send(*args, **kwargs)
        except httpx.HTTPError as error:
            outcome.samples.append(
                Sample(kind, time.perf_counter() - started, None, type(error).__name__)
            )
            outcome.final_statuses.append(None)
            return None
        outcome.samples.append(Sample(kind, time.perf_counter() - started, response.status_code))
        if response.status_code != 429:
            break
        await asyncio.sleep(float(response.headers.get("Retry-After", "1")))
    outcome.final_statuses.append(None if response is None else response.status_code)
    return response


async def _client(
    number: int,
    key: str,
    tenant_id: str,
    rounds: int,
    base_url: str,
    outcome: Outcome,
) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    # Idle connections are dropped before the server's 5 s keep-alive timeout, so a request
    # never races the server closing the connection it was sent on.
    limits = httpx.Limits(keepalive_expiry=2.0)
    async with httpx.AsyncClient(
        base_url=base_url, headers=headers, timeout=60.0, limits=limits
    ) as http:
        for round_number in range(rounds):
            uploaded = await _timed(
                outcome,
                "upload file",
                http.post,
                "/v1/files",
                files={"file": ("train.jsonl", _chat_file(number, round_number))},
                data={"purpose": "fine-tune"},
            )
            if uploaded is None or uploaded.status_code != 200:
                continue
            file_id = uploaded.json()["id"]
            outcome.file_ids.add(file_id)
            body = {
                "model": "tiny-random-llama",
                "training_file": file_id,
                "method": {"type": "supervised"},
                "metadata": {"client": str(number), "round": str(round_number)},
            }
            idempotency_key = f"client-{number}-round-{round_number}-{uuid.uuid4().hex[:8]}"
            keyed = {"Idempotency-Key": idempotency_key}

            async def create(kind: str, extra: dict[str, str], request_body: Any = body) -> None:
                response = await _timed(
                    outcome,
                    kind,
                    http.post,
                    "/v1/fine_tuning/jobs",
                    json=request_body,
                    headers=extra,
                )
                if response is None or response.status_code != 200:
                    return
                job_id = response.json()["id"]
                if "Idempotency-Key" in extra:
                    outcome.jobs_by_key[(tenant_id, extra["Idempotency-Key"])].add(job_id)
                    if response.headers.get("Idempotent-Replayed") != "true":
                        outcome.created_answers_by_key[(tenant_id, extra["Idempotency-Key"])] += 1
                else:
                    outcome.keyless_job_ids.add(job_id)

            # The request and an impatient retry at the same moment, then a late retry.
            await asyncio.gather(
                create("create job (key)", keyed), create("create job (key, retry)", keyed)
            )
            await create("create job (key, retry)", keyed)
            await create("create job (no key)", {})


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def _latency_summary(samples: list[Sample]) -> dict[str, float]:
    seconds = [sample.seconds for sample in samples]
    return {
        "count": len(seconds),
        "p50_ms": round(1000 * statistics.median(seconds), 1),
        "p99_ms": round(1000 * _percentile(seconds, 0.99), 1),
        "max_ms": round(1000 * max(seconds), 1),
    }


def _create_database(server_url: str) -> str:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from bds_service.db import normalize_database_url, upgrade_database

    name = f"bds_load_{uuid.uuid4().hex[:8]}"
    server = create_engine(normalize_database_url(server_url), isolation_level="AUTOCOMMIT")
    with server.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    server.dispose()
    url = make_url(normalize_database_url(server_url)).set(database=name)
    rendered = url.render_as_string(hide_password=False)
    upgrade_database(rendered)
    return rendered


def _drop_database(server_url: str, url: str) -> None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from bds_service.db import normalize_database_url

    name = make_url(url).database
    server = create_engine(normalize_database_url(server_url), isolation_level="AUTOCOMMIT")
    with server.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    server.dispose()


def _issue_keys(database_url: str, tenants: int, clients: int) -> list[tuple[str, str]]:
    """One key per client, spread over ``tenants`` tenants: (tenant id, key) per client."""
    from bds_service.audit import Actor
    from bds_service.db import make_engine, make_session_factory
    from bds_service.tenants import service

    actor = Actor("cli", "load-test")
    engine = make_engine(database_url)
    issued: list[tuple[str, str]] = []
    with make_session_factory(engine)() as session:
        made = [service.create_tenant(session, f"load-{index}", actor) for index in range(tenants)]
        for client in range(clients):
            tenant = made[client % tenants]
            key = service.create_api_key(session, tenant, secret=SECRET, actor=actor)
            issued.append((tenant.id, key.plaintext))
        session.commit()
    engine.dispose()
    return issued


def _database_state(database_url: str) -> dict[str, Any]:
    """Ids of every file and job, and what each Idempotency-Key row points at."""
    from sqlalchemy import select

    from bds_service.db import make_engine, make_session_factory
    from bds_service.models import File, FineTuningJob, IdempotencyKey

    engine = make_engine(database_url)
    with make_session_factory(engine)() as session:
        file_ids = set(session.scalars(select(File.id)))
        job_ids = set(session.scalars(select(FineTuningJob.id)))
        keys = {
            (row.tenant_id, row.key): row.resource_id
            for row in session.scalars(select(IdempotencyKey))
        }
    engine.dispose()
    return {"file_ids": file_ids, "job_ids": job_ids, "keys": keys}


def _start_api(
    args: argparse.Namespace, database_url: str, folder: Path, suffix: str
) -> tuple[ServiceProcess, str]:
    settings = {
        "BDS_DATABASE_URL": database_url,
        "BDS_BROKER_URL": "memory://" if args.broker == "memory" else DEFAULT_REDIS,
        "BDS_CPU_QUEUE": f"load-cpu-{suffix}",
        "BDS_GPU_QUEUE": f"load-gpu-{suffix}",
        "BDS_DATA_DIR": str(folder / "data"),
        "BDS_STORAGE_DIR": str(folder / "storage"),
        "BDS_API_KEY_SECRET": SECRET,
        "BDS_BASE_MODELS": '["tiny-random-llama"]',
        "BDS_MAX_CONCURRENT_JOBS": "1000000",  # no worker runs the jobs: they stay queued
        "BDS_RATE_LIMIT_REQUESTS": "0",
    }
    environment = {
        **{name: value for name, value in os.environ.items() if not name.startswith("BDS_")},
        **({"BDS_CACHE_DIR": os.environ["BDS_CACHE_DIR"]} if "BDS_CACHE_DIR" in os.environ else {}),
        **settings,
    }
    try:
        return start_api(environment, folder / "api.log", cwd=REPO_ROOT, timeout_s=60)
    except ServiceNotReadyError as error:
        raise SystemExit(f"{error}:\n{(folder / 'api.log').read_text()[-3000:]}") from error


def _delete_queues(suffix: str) -> None:
    import redis

    client = redis.Redis.from_url(DEFAULT_REDIS)
    for queue in (f"load-cpu-{suffix}", f"load-gpu-{suffix}"):
        client.delete(queue, f"_kombu.binding.{queue}")
    client.close()


async def _run_clients(
    args: argparse.Namespace, keys: list[tuple[str, str]], base_url: str
) -> Outcome:
    outcome = Outcome()
    tasks = [
        _client(number, key, tenant_id, args.rounds, base_url, outcome)
        for number, (tenant_id, key) in enumerate(keys)
    ]
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=args.max_seconds)
    return outcome


def _report(
    args: argparse.Namespace, outcome: Outcome, elapsed: float, database: dict[str, Any]
) -> dict[str, Any]:
    answered = [sample for sample in outcome.samples if sample.status is not None]
    failed = [status for status in outcome.final_statuses if status != 200]
    throttled = [sample for sample in outcome.samples if sample.status == 429]
    returned_jobs = outcome.keyless_job_ids | {
        job for jobs in outcome.jobs_by_key.values() for job in jobs
    }
    lost = len(outcome.file_ids - database["file_ids"]) + len(returned_jobs - database["job_ids"])
    duplicate_answers = sum(len(jobs) - 1 for jobs in outcome.jobs_by_key.values() if jobs)
    duplicate_creations = sum(max(0, n - 1) for n in outcome.created_answers_by_key.values())
    # Each key's row in the database points at the one job its requests were answered with.
    mismatched_keys = sum(
        1
        for key, jobs in outcome.jobs_by_key.items()
        if database["keys"].get(key) not in jobs or len(jobs) != 1
    )
    # Every job in the database is accounted for: one per key, plus the keyless ones.
    unexpected_jobs = (
        len(database["job_ids"]) - len(outcome.jobs_by_key) - len(outcome.keyless_job_ids)
    )
    by_kind: dict[str, list[Sample]] = defaultdict(list)
    for sample in answered:
        by_kind[sample.kind].append(sample)
    return {
        "clients": args.clients,
        "rounds": args.rounds,
        "broker": args.broker,
        "requests": len(outcome.final_statuses),
        "attempts": len(outcome.samples),
        "elapsed_s": round(elapsed, 2),
        "requests_per_s": round(len(outcome.samples) / elapsed, 1),
        "latency": _latency_summary(answered) if answered else None,
        "latency_by_kind": {
            kind: _latency_summary(items) for kind, items in sorted(by_kind.items())
        },
        "failed_requests": len(failed),
        "failed_statuses": sorted({str(status) for status in failed}),
        "retried_after_429": len(throttled),
        "transport_errors": sorted(
            {str(sample.error) for sample in outcome.samples if sample.status is None}
        ),
        "lost_requests": lost,
        "duplicates": duplicate_answers
        + duplicate_creations
        + max(0, unexpected_jobs)
        + mismatched_keys,
        "files_in_database": len(database["file_ids"]),
        "jobs_in_database": len(database["job_ids"]),
        "idempotency_keys": len(outcome.jobs_by_key),
        "jobs_without_key": len(outcome.keyless_job_ids),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; exit status 1 if any request failed, was lost or duplicated."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients (1-256)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per client (1-100)")
    parser.add_argument("--tenants", type=int, default=4, help="tenants the clients belong to")
    parser.add_argument(
        "--max-seconds", type=float, default=300.0, help="deadline for the whole client run"
    )
    parser.add_argument(
        "--broker",
        choices=["redis", "memory"],
        default="redis",
        help="where task messages go: run-only queues on the local Redis, or the API's memory",
    )
    parser.add_argument(
        "--postgres", default=DEFAULT_POSTGRES, help="maintenance URL of the local PostgreSQL"
    )
    parser.add_argument("--json-out", type=Path, help="also write the report as JSON here")
    args = parser.parse_args(argv)
    if not 1 <= args.clients <= 256 or not 1 <= args.rounds <= 100:
        parser.error("--clients must be 1-256 and --rounds 1-100")
    if not 1 <= args.tenants <= args.clients:
        parser.error("--tenants must be between 1 and --clients")
    host = args.postgres.split("@")[-1].split("/")[0].split(":")[0]
    if host not in {"127.0.0.1", "localhost", "::1", ""}:
        parser.error("--postgres must be on this machine (loopback only)")

    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="bds-load-"))
    suffix = uuid.uuid4().hex[:8]
    database_url = _create_database(args.postgres)
    process = None
    try:
        keys = _issue_keys(database_url, args.tenants, args.clients)
        process, base_url = _start_api(args, database_url, folder, suffix)
        started = time.perf_counter()
        outcome = asyncio.run(_run_clients(args, keys, base_url))
        elapsed = time.perf_counter() - started
        report = _report(args, outcome, elapsed, _database_state(database_url))
    finally:
        if process is not None:
            process.stop(grace_s=30)
        _drop_database(args.postgres, database_url)
        if args.broker == "redis":
            _delete_queues(suffix)
    print(json.dumps(report, indent=2))
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=2) + "\n")
    ok = report["failed_requests"] == report["lost_requests"] == report["duplicates"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
