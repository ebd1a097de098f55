"""Throughput of the API: requests per second and p50/p99 latency under a well-kept load tool.

Makes a PostgreSQL database for the run, one tenant, key and processed training file per
simulated client, starts the API (uvicorn with ``--workers``) on 127.0.0.1, then runs Locust
headless for each scenario (authenticated list of files, job create, file upload) at each
client count for ``--seconds``, and prints one table row per run from Locust's own CSV
statistics. Rate limits are off and the cap on unfinished jobs is huge (no worker runs the
jobs); task messages go to the in-process memory broker. With ``--rate-limit-redis URL`` the
limits count in that Redis as in production (limits no run reaches: every request is counted,
none refused). The database is dropped at the end.

    .venv/bin/python scripts/throughput.py --workers 4 --clients 1,10,50 --seconds 20

Wall-clock requests per second mean something only on an otherwise idle machine (the load
tool, the API and PostgreSQL share its cores). So each run also reports the CPU seconds per
request spent by the API processes (uvicorn's master and workers), by this database's
PostgreSQL backends and by Locust, sampled with psutil during the run, and the ceilings they
imply: ``cores / (API + PostgreSQL + Locust)`` requests per second on ``--cores`` idle cores
with everything on them, and ``cores / API`` with the API alone on them. CPU time is what a
request costs whatever else the machine does, so these figures hold on a busy machine too
(less the cache and scheduler effects of sharing it).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import psutil

SCRIPTS = Path(__file__).resolve().parent
REPO_ROOT = SCRIPTS.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(SCRIPTS))

import load_test  # noqa: E402  (the database and key helpers of the correctness load test)

from bds_service.embedded import ServiceNotReadyError, ServiceProcess, start_api  # noqa: E402

SCENARIOS = ("list", "create", "upload")
SAMPLE_EVERY_S = 0.5


def _cpu_seconds(process: psutil.Process) -> float | None:
    try:
        times = process.cpu_times()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None
    return float(times.user + times.system)


def _tree(pid: int) -> list[psutil.Process]:
    """The process ``pid`` and its descendants (uvicorn's master and workers, Locust)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _backends(database: str) -> list[psutil.Process]:
    """PostgreSQL's backends connected to ``database`` ("postgres: [cluster:] user db ...")."""
    found = []
    for process in psutil.process_iter(["name", "cmdline"]):
        cmdline = process.info["cmdline"] or []
        if process.info["name"] == "postgres" and cmdline and database in cmdline[0].split():
            found.append(process)
    return found


class CpuMeter:
    """CPU seconds spent by a changing set of processes since the meter started.

    ``processes()`` is called every ``sample()``; a process seen for the first time counts
    from zero if it started after the meter (a new pooled connection's backend, a Locust
    process) and from its time at the start otherwise. A process that exits between samples
    keeps what it had at its last sample, so a short-lived one is slightly undercounted.
    """

    def __init__(self, processes: Callable[[], Iterable[psutil.Process]]) -> None:
        self.processes = processes
        self.started = time.time()
        self.first: dict[tuple[int, float], float] = {}
        self.last: dict[tuple[int, float], float] = {}
        self.sample()

    def sample(self) -> None:
        for process in self.processes():
            try:
                identity = (process.pid, process.create_time())
            except psutil.NoSuchProcess:
                continue
            seconds = _cpu_seconds(process)
            if seconds is None:
                continue
            if identity not in self.first:
                self.first[identity] = seconds if identity[1] < self.started else 0.0
            self.last[identity] = seconds

    def seconds(self) -> float:
        self.sample()
        return sum(self.last[identity] - self.first[identity] for identity in self.last)


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


def _start_api(
    database_url: str, folder: Path, workers: int, rate_limit_redis: str | None
) -> tuple[ServiceProcess, str]:
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
    if rate_limit_redis:
        settings.update(
            BDS_RATE_LIMIT_REDIS_URL=rate_limit_redis,
            BDS_RATE_LIMIT_REQUESTS=str(10**9),
            BDS_AUTH_FAILURE_LIMIT=str(10**9),
        )
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith("BDS_")},
        **settings,
    }
    log_path = folder / "api.log"
    try:
        return start_api(environment, log_path, cwd=REPO_ROOT, workers=workers, timeout_s=300)
    except ServiceNotReadyError as error:
        raise SystemExit(f"{error}:\n{log_path.read_text()[-3000:]}") from error


def _locust(
    base_url: str,
    scenario: str,
    clients: int,
    seconds: int,
    accounts: list[dict[str, str]],
    folder: Path,
    meters: Callable[[int], dict[str, CpuMeter]],
) -> tuple[dict[str, str], dict[str, float]]:
    """Locust's aggregated statistics row, and the CPU seconds per request of each meter."""
    prefix = folder / f"{scenario}-{clients}"
    environment = {
        **os.environ,
        "BDS_LOAD_SCENARIO": scenario,
        "BDS_LOAD_ACCOUNTS": json.dumps(accounts[:clients]),
    }
    command = [
        sys.executable, "-m", "locust", "-f", str(SCRIPTS / "locustfile.py"), "--headless",
        "--users", str(clients), "--spawn-rate", str(clients), "--run-time", f"{seconds}s",
        "--host", base_url, "--csv", str(prefix), "--csv-full-history", "--only-summary",
        "--loglevel", "WARNING",
    ]  # fmt: skip
    locust = subprocess.Popen(
        command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    running = meters(locust.pid)
    history = Path(f"{prefix}_stats_history.csv")
    # The CPU is counted over the steady part of the run: from the second time Locust's
    # cumulative request count moves (its start-up and the first requests are left out) to
    # the last time it moves. Each (count, CPU) pair is read at the same moment.
    marks: list[tuple[int, dict[str, float]]] = []
    deadline = time.monotonic() + seconds + 120
    while locust.poll() is None:
        if time.monotonic() > deadline:
            locust.kill()
            break
        count = _latest_count(history)
        cpu_now = {name: meter.seconds() for name, meter in running.items()}
        if count and (not marks or count != marks[-1][0]):
            marks.append((count, cpu_now))
        time.sleep(SAMPLE_EVERY_S)
    with open(f"{prefix}_stats.csv", newline="") as handle:
        (row,) = [r for r in csv.DictReader(handle) if r["Name"] == "Aggregated"]
    if len(marks) >= 3:
        (first_count, first_cpu), (last_count, last_cpu) = marks[1], marks[-1]
        steady = last_count - first_count
        cpu = {name: last_cpu[name] - first_cpu[name] for name in last_cpu}
    else:  # too short a run for a steady window: everything, start-up included
        steady = int(row["Request Count"])
        cpu = {name: meter.seconds() for name, meter in running.items()}
    return row, {name: seconds / max(1, steady) for name, seconds in cpu.items()}


def _latest_count(history: Path) -> int | None:
    """The cumulative request count of the newest complete row of Locust's history CSV."""
    try:
        lines = history.read_text().splitlines()
    except OSError:
        return None
    for line in reversed(lines[1:]):
        fields = line.split(",")
        if len(fields) >= 24 and fields[3] == "Aggregated" and fields[17].isdigit():
            return int(fields[17])
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4, help="uvicorn worker processes")
    parser.add_argument("--clients", default="1,10,50", help="comma list of client counts")
    parser.add_argument("--seconds", type=int, default=20, help="length of each run")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="list,create,upload")
    parser.add_argument("--postgres", default=load_test.DEFAULT_POSTGRES)
    parser.add_argument(
        "--rate-limit-redis",
        metavar="URL",
        help="count the rate limits in this Redis, as production does (default: limits off)",
    )
    parser.add_argument(
        "--cpu-per-request",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="report the CPU seconds per request of the API processes (uvicorn's master and "
        "workers), the run database's PostgreSQL backends and Locust, and the ceilings they "
        "imply (the default; --no-cpu-per-request leaves out the sampling and the columns)",
    )
    parser.add_argument(
        "--cores", type=float, default=2, help="idle cores the CPU-implied ceilings assume"
    )
    args = parser.parse_args(argv)
    client_counts = [int(part) for part in args.clients.split(",")]
    folder = Path(tempfile.mkdtemp(prefix="bds-throughput-"))
    database_url = load_test._create_database(args.postgres)
    process = None
    try:
        accounts = _accounts(database_url, max(client_counts), folder)
        process, base_url = _start_api(database_url, folder, args.workers, args.rate_limit_redis)
        print(f"API: {args.workers} uvicorn worker(s); {os.cpu_count()} CPU(s); "
              f"load average before: {os.getloadavg()[0]:.1f}")  # fmt: skip
        database = database_url.rsplit("/", 1)[-1]
        assert process.process is not None
        api_pid = process.process.pid

        def meters(locust_pid: int) -> dict[str, CpuMeter]:
            if not args.cpu_per_request:
                return {}
            return {
                "api": CpuMeter(lambda: _tree(api_pid)),
                "postgres": CpuMeter(lambda: _backends(database)),
                "locust": CpuMeter(lambda: _tree(locust_pid)),
            }

        cores = f"{args.cores:g}"
        cpu_header = (
            "| API CPU ms/req | PostgreSQL CPU ms/req | Locust CPU ms/req "
            f"| ceiling req/s on {cores} cores | API-only ceiling req/s "
            if args.cpu_per_request
            else ""
        )
        print(
            "| scenario | clients | requests | failures | requests/s | p50 ms | p99 ms "
            f"{cpu_header}|"
        )
        print("|---" * (12 if args.cpu_per_request else 7) + "|")
        for scenario in args.scenarios.split(","):
            for clients in client_counts:
                row, per_request = _locust(
                    base_url, scenario, clients, args.seconds, accounts, folder, meters
                )
                cells = (
                    f"| {scenario} | {clients} | {row['Request Count']} | "
                    f"{row['Failure Count']} | {float(row['Requests/s']):.1f} | {row['50%']} | "
                    f"{row['99%']} "
                )
                if per_request:
                    total = sum(per_request.values())
                    ceiling = args.cores / total if total else float("inf")
                    api_ceiling = args.cores / per_request["api"] if per_request["api"] else 0.0
                    cells += (
                        f"| {1000 * per_request['api']:.2f} | "
                        f"{1000 * per_request['postgres']:.2f} | "
                        f"{1000 * per_request['locust']:.2f} | {ceiling:.0f} | {api_ceiling:.0f} "
                    )
                print(cells + "|", flush=True)
        print(f"load average after: {os.getloadavg()[0]:.1f}; files in {folder}")
    finally:
        if process is not None:
            process.stop()
        load_test._drop_database(args.postgres, database_url)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
