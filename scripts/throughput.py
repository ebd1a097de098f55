"""Throughput of the API: requests per second and p50/p99 latency under a well-kept load tool.

Makes a PostgreSQL database for the run, one tenant, key and processed training file per
simulated client, starts the API (uvicorn with ``--workers``) on 127.0.0.1, then runs Locust
headless for each scenario (authenticated list of files, job create, file upload) at each
client count for ``--seconds``, and prints one table row per run from Locust's own CSV
statistics. Rate limits are off and the cap on unfinished jobs is huge (no worker runs the
jobs); task messages go to the in-process memory broker. The database is dropped at the end.

    .venv/bin/python scripts/throughput.py --workers 4 --clients 1,10,50 --seconds 20

Run it on an otherwise idle machine: the load tool, the API and PostgreSQL share its cores.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
REPO_ROOT = SCRIPTS.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(SCRIPTS))

import load_test  # noqa: E402  (the database and key helpers of the correctness load test)

from bds_service.embedded import ServiceNotReadyError, ServiceProcess, start_api  # noqa: E402

SCENARIOS = ("list", "create", "upload")


def _accounts(database_url: str, count: int, folder: Path) -> list[dict[str, str]]:
    """One tenant, key and processed training file per client."""
    from bds_service.audit import Actor
    from bds_service.db import make_engine, make_session_factory
    from bds_service.files import service as files
    from bds_service.settings import Settings
    from bds_service.storage import LocalStorage, file_key

    settings = Settings(
        database_url=database_url, storage_dir=folder / "storage", api_key_secret=load_test.SECRET
    )
    storage = LocalStorage(settings.resolved_storage_dir)
    keys = load_test._issue_keys(database_url, count, count)
    engine = make_engine(database_url)
    accounts = []
    content = load_test._chat_file(0, 0)
    with make_session_factory(engine)() as session:
        for tenant_id, key in keys:
            file_id = files.new_file_id()
            sink = storage.open_upload(file_key(tenant_id, file_id), 1 << 20)
            sink.write(content)
            stored = sink.commit()
            report = files.validate_content(storage.path(stored.key), settings)
            files.register_upload(
                session,
                actor=Actor("cli", "throughput"),
                tenant_id=tenant_id,
                file_id=file_id,
                filename="train.jsonl",
                purpose="fine-tune",
                stored=stored,
                report=report,
            )
            accounts.append({"key": key, "file": file_id})
        session.commit()
    engine.dispose()
    return accounts


def _start_api(database_url: str, folder: Path, workers: int) -> tuple[ServiceProcess, str]:
    settings = {
        "BDS_DATABASE_URL": database_url,
        "BDS_BROKER_URL": "memory://",
        "BDS_DATA_DIR": str(folder / "data"),
        "BDS_STORAGE_DIR": str(folder / "storage"),
        "BDS_API_KEY_SECRET": load_test.SECRET,
        "BDS_BASE_MODELS": '["tiny-random-llama"]',
        "BDS_MAX_CONCURRENT_JOBS": "1000000000",
        "BDS_RATE_LIMIT_REQUESTS": "0",
        "BDS_AUTH_FAILURE_LIMIT": "0",
    }
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith("BDS_")},
        **settings,
    }
    log_path = folder / "api.log"
    try:
        return start_api(environment, log_path, cwd=REPO_ROOT, workers=workers, timeout_s=90)
    except ServiceNotReadyError as error:
        raise SystemExit(f"{error}:\n{log_path.read_text()[-3000:]}") from error


def _locust(
    base_url: str,
    scenario: str,
    clients: int,
    seconds: int,
    accounts: list[dict[str, str]],
    folder: Path,
) -> dict[str, str]:
    prefix = folder / f"{scenario}-{clients}"
    environment = {
        **os.environ,
        "BDS_LOAD_SCENARIO": scenario,
        "BDS_LOAD_ACCOUNTS": json.dumps(accounts[:clients]),
    }
    command = [
        sys.executable, "-m", "locust", "-f", str(SCRIPTS / "locustfile.py"), "--headless",
        "--users", str(clients), "--spawn-rate", str(clients), "--run-time", f"{seconds}s",
        "--host", base_url, "--csv", str(prefix), "--only-summary", "--loglevel", "WARNING",
    ]  # fmt: skip
    subprocess.run(
        command, env=environment, check=False, capture_output=True, timeout=seconds + 120
    )
    with open(f"{prefix}_stats.csv", newline="") as handle:
        (row,) = [r for r in csv.DictReader(handle) if r["Name"] == "Aggregated"]
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4, help="uvicorn worker processes")
    parser.add_argument("--clients", default="1,10,50", help="comma list of client counts")
    parser.add_argument("--seconds", type=int, default=20, help="length of each run")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="list,create,upload")
    parser.add_argument("--postgres", default=load_test.DEFAULT_POSTGRES)
    args = parser.parse_args(argv)
    client_counts = [int(part) for part in args.clients.split(",")]
    folder = Path(tempfile.mkdtemp(prefix="bds-throughput-"))
    database_url = load_test._create_database(args.postgres)
    process = None
    try:
        accounts = _accounts(database_url, max(client_counts), folder)
        process, base_url = _start_api(database_url, folder, args.workers)
        print(f"API: {args.workers} uvicorn worker(s); {os.cpu_count()} CPU(s); "
              f"load average before: {os.getloadavg()[0]:.1f}")  # fmt: skip
        print("| scenario | clients | requests | failures | requests/s | p50 ms | p99 ms |")
        print("|---|---|---|---|---|---|---|")
        for scenario in args.scenarios.split(","):
            for clients in client_counts:
                row = _locust(base_url, scenario, clients, args.seconds, accounts, folder)
                print(
                    f"| {scenario} | {clients} | {row['Request Count']} | "
                    f"{row['Failure Count']} | {float(row['Requests/s']):.1f} | {row['50%']} | "
                    f"{row['99%']} |",
                    flush=True,
                )
        print(f"load average after: {os.getloadavg()[0]:.1f}; files in {folder}")
    finally:
        if process is not None:
            process.stop()
        load_test._drop_database(args.postgres, database_url)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
