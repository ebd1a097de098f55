"""Running the service on this machine and waiting until it answers: for the demo, the
benchmark scripts and the tests.

- :class:`ServiceProcess`: a server command (``bds serve``, ``uvicorn api.app:app``, the
  inference worker) in its own process group with its output in a log file; ``wait_for`` polls
  a health URL, ``stop`` leaves no process of the group behind.
- :class:`EmbeddedService`: ``bds serve`` (the API, the workers and the inference worker on
  SQLite) as a :class:`ServiceProcess`, ready once ``/readyz`` answers.
- :func:`serve_app_in_thread`: an ASGI app served by uvicorn in a background thread of this
  process, for tests that drive a real HTTP server.

Nothing here imports the API or the worker: they are started as commands, or handed in as an
app object.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

LOOPBACK = "127.0.0.1"


class ServiceNotReadyError(RuntimeError):
    """A started service exited, or did not answer its health check in time."""


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def service_command() -> list[str]:
    """`bds`'s service commands (serve, admin) without the ML commands.

    ``python -m bds_service.cli X`` is the same Typer app as ``bds X`` for these commands, but
    it skips importing the ML stack that the top-level ``bds`` loads for its other commands:
    seconds per call on a busy laptop.
    """
    return [sys.executable, "-m", "bds_service.cli"]


class ServiceProcess:
    """A server command in its own process group, writing to ``log_path``."""

    def __init__(
        self,
        command: Sequence[str],
        *,
        environment: Mapping[str, str] | None = None,
        log_path: Path,
        cwd: Path | None = None,
        name: str | None = None,
    ) -> None:
        self.command = list(command)
        self.environment = dict(os.environ if environment is None else environment)
        self.log_path = log_path
        self.cwd = cwd
        self.name = name or f"`{' '.join(self.command[:3])}`"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the command (returns at once; see :meth:`wait_for`)."""
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.command,
                env=self.environment,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_for(
        self, url: str, timeout_s: float, *, interval_s: float = 0.2, request_timeout_s: float = 5
    ) -> httpx.Response:
        """Poll ``url`` until it answers 200 and return that answer; ServiceNotReadyError if
        the process exits first or time runs out."""
        assert self.process is not None, "start() first"
        deadline = time.monotonic() + timeout_s
        last = "no answer yet"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServiceNotReadyError(
                    f"{self.name} exited with code {self.process.returncode}"
                )
            try:
                answer = httpx.get(url, timeout=request_timeout_s)
                if answer.status_code == 200:
                    return answer
                last = answer.text
            except httpx.HTTPError as error:
                last = type(error).__name__
            time.sleep(interval_s)
        raise ServiceNotReadyError(
            f"{self.name} was not ready after {timeout_s:.0f} s (last: {last})"
        )

    def stop(self, grace_s: float = 60.0) -> int | None:
        """SIGTERM the command, then clear its process group; returns its exit code.

        Anything of the group still alive afterwards (a worker's pool process, or everything
        if the command had to be killed) gets SIGTERM, then SIGKILL.
        """
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                process.wait()
        for signum, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
            if self.group_is_gone():
                break
            self._signal_group(signum)
            deadline = time.monotonic() + wait_s
            while not self.group_is_gone() and time.monotonic() < deadline:
                time.sleep(0.2)
        return process.returncode

    def group_is_gone(self) -> bool:
        """True once no process of the command's group is left."""
        assert self.process is not None
        try:
            os.killpg(self.process.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def _signal_group(self, signum: int) -> None:
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signum)

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the log."""
        if not self.log_path.is_file():
            return ""
        return "\n".join(
            self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
        )

    def __enter__(self) -> ServiceProcess:
        self.start()
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        self.stop()


class EmbeddedService(ServiceProcess):
    """``bds serve`` on ``port``: the API and the workers, SQLite database and broker.

    With ``data_dir`` the service keeps its data there (and runs in it); without, where its
    settings say (``BDS_DATA_DIR``).
    """

    def __init__(
        self,
        data_dir: Path | None,
        port: int,
        environment: Mapping[str, str],
        log_path: Path,
    ) -> None:
        command = [*service_command(), "serve", "--port", str(port)]
        if data_dir is not None:
            command += ["--data-dir", str(data_dir)]
        super().__init__(
            command, environment=environment, log_path=log_path, cwd=data_dir, name="`bds serve`"
        )
        self.data_dir = data_dir
        self.port = port
        self.base_url = f"http://{LOOPBACK}:{port}"

    def wait_ready(self, timeout_s: float) -> dict[str, Any]:
        """Poll ``/readyz`` until it answers 200; its body (what is ready)."""
        ready: dict[str, Any] = self.wait_for(
            f"{self.base_url}/readyz", timeout_s, interval_s=1.0
        ).json()
        return ready


@contextlib.contextmanager
def serve_app_in_thread(app: Any, *, start_timeout_s: float = 30.0) -> Iterator[str]:
    """Serve an ASGI app with uvicorn on a free loopback port in a daemon thread; yields its
    base URL (``http://127.0.0.1:PORT``) and stops the server on exit."""
    import uvicorn

    server = uvicorn.Server(
        uvicorn.Config(app, host=LOOPBACK, port=free_port(), log_level="warning")
    )
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise ServiceNotReadyError(f"uvicorn did not start in {start_timeout_s:.0f} s")
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{LOOPBACK}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@contextlib.contextmanager
def inference_worker(
    log_path: Path, *, environment: Mapping[str, str] | None = None, timeout_s: float = 120.0
) -> Iterator[str]:
    """``python -m worker.inference`` (the local inference worker `bds serve` also starts) on a
    free loopback port; yields its URL once ``/health`` answers, stops it on exit."""
    port = free_port()
    worker = ServiceProcess(
        [sys.executable, "-m", "worker.inference", "--host", LOOPBACK, "--port", str(port)],
        environment=environment,
        log_path=log_path,
        name="the inference worker",
    )
    url = f"http://{LOOPBACK}:{port}"
    with worker:
        worker.wait_for(f"{url}/health", timeout_s)
        yield url


def start_api(
    environment: Mapping[str, str],
    log_path: Path,
    *,
    cwd: Path | None = None,
    workers: int = 1,
    timeout_s: float = 60.0,
) -> tuple[ServiceProcess, str]:
    """``uvicorn api.app:app`` alone (no Celery worker) on a free loopback port; returns the
    process and its base URL once ``/healthz`` answers. If it does not start, it is stopped
    and ServiceNotReadyError says why (its log is at ``log_path``)."""
    port = free_port()
    command = [
        sys.executable, "-m", "uvicorn", "api.app:app", "--host", LOOPBACK, "--port", str(port),
        "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip
    if workers > 1:
        command += ["--workers", str(workers)]
    api = ServiceProcess(
        command, environment=environment, log_path=log_path, cwd=cwd, name="the API"
    )
    base_url = f"http://{LOOPBACK}:{port}"
    api.start()
    try:
        api.wait_for(f"{base_url}/healthz", timeout_s, request_timeout_s=2)
    except ServiceNotReadyError:
        api.stop()
        raise
    return api, base_url
