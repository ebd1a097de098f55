"""Workers that heal or die: a pulse from the consumer, and a watchdog that ends a stalled worker.

After a broker outage a Celery worker normally reconnects and consumes again. Sometimes it
does not: kombu's Redis transport can fail while restoring unacknowledged messages
(``Unrecoverable error: AttributeError(... 'hostname')``) and the process stays alive,
consuming nothing, so no restart policy ever helps. This module makes that state visible and
fatal:

- :class:`ConsumerPulse`, a consumer bootstep, beats every second from the consumer's own event
  loop while the consumer runs and its broker connection is up; with
  ``worker_liveness_file`` set, each beat refreshes that file's modification time
  (``bds worker-alive`` checks it: the docker-compose health check, ``bds serve``).
- :class:`Watchdog`, a thread of the worker's main process, started by the first beat: when no
  beat came for ``worker_stall_exit_seconds`` it logs why, kills the worker's pool children
  and exits with status 1, so that its supervisor (docker's restart policy, ``bds serve``)
  starts a fresh worker. Work is not lost: the database owns it (leases, the dispatch sweep).

A broker outage shorter than that is ridden out: the consumer reconnects and a running task
keeps running (``worker_cancel_long_running_tasks_on_connection_loss`` is off).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

from celery import bootsteps

from bds_service.settings import get_settings

logger = logging.getLogger(__name__)

PULSE_INTERVAL_S = 1.0


class Pulse:
    """When the consumer last showed it was running, and the file that says so."""

    def __init__(self, liveness_file: Path | None) -> None:
        self.liveness_file = liveness_file
        self.last = time.monotonic()
        self._lock = threading.Lock()

    def beat(self) -> None:
        """Record a beat (and touch the liveness file)."""
        with self._lock:
            self.last = time.monotonic()
        if self.liveness_file is not None:
            try:
                self.liveness_file.parent.mkdir(parents=True, exist_ok=True)
                self.liveness_file.touch()
            except OSError:
                logger.warning("could not touch the liveness file %s", self.liveness_file)

    def silent_for(self) -> float:
        """Seconds since the last beat."""
        with self._lock:
            return time.monotonic() - self.last


def _child_pids(parent: int) -> list[int]:
    """Pids of the direct children of ``parent`` (Linux /proc; empty elsewhere)."""
    children = []
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces and parentheses.
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 1 and fields[1] == str(parent):
            children.append(int(entry.name))
    return children


def _release_leases(pids: list[int]) -> None:
    """End the leases the given pool processes hold (best effort: the database may be away)."""
    from bds_service.db import make_engine, make_session_factory, unit_of_work
    from bds_service.jobs.repository import expire_leases_of_processes
    from bds_service.models import utcnow

    class _NoTasks:
        def send(self, message: object) -> None:
            pass

    try:
        engine = make_engine(get_settings().resolved_database_url)
        with unit_of_work(make_session_factory(engine), _NoTasks()) as session:
            released = expire_leases_of_processes(session, socket.gethostname(), pids, utcnow())
        engine.dispose()
        if released:
            logger.warning("ended the leases of jobs %s for the reaper", released)
    except Exception:
        logger.exception("could not end the leases of the pool processes %s", pids)


class Watchdog(threading.Thread):
    """Ends the worker process when its consumer stopped beating for ``stall_seconds``."""

    def __init__(self, pulse: Pulse, stall_seconds: float) -> None:
        super().__init__(name="bds-worker-watchdog", daemon=True)
        self.pulse = pulse
        self.stall_seconds = stall_seconds

    def run(self) -> None:
        while True:
            time.sleep(min(1.0, self.stall_seconds / 4))
            silent = self.pulse.silent_for()
            if silent > self.stall_seconds:
                self.exit_stalled(silent)

    def exit_stalled(self, silent: float) -> None:
        """Log, kill the pool children, exit 1 (never returns)."""
        logger.critical(
            "the worker has not consumed for %.0f s (broker unreachable or consumer dead); "
            "exiting with status 1 so that its supervisor starts a fresh one",
            silent,
        )
        children = _child_pids(os.getpid())
        for pid in children:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        # Killed first, so no heartbeat renews a lease after this: their jobs go back to the
        # queue at the reaper's next run, not after the full lease.
        releasing = threading.Thread(target=_release_leases, args=(children,), daemon=True)
        releasing.start()
        releasing.join(timeout=10)
        for handler in logging.getLogger().handlers:
            handler.flush()
        os._exit(1)


class ConsumerPulse(bootsteps.StartStopStep):
    """Beats from the consumer's event loop while it consumes; starts the watchdog."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        settings = get_settings()
        self.pulse = Pulse(settings.worker_liveness_file)
        self.watchdog = Watchdog(self.pulse, settings.worker_stall_exit_seconds)
        self.timer_entry: Any = None

    def _beat(self, consumer: Any) -> None:
        connection = getattr(consumer, "connection", None)
        running = consumer.blueprint is not None and consumer.blueprint.state == bootsteps.RUN
        if running and connection is not None and connection.connected:
            self.pulse.beat()

    def start(self, parent: Any) -> None:
        self.pulse.beat()
        if not self.watchdog.is_alive():
            self.watchdog.start()
        self.timer_entry = parent.timer.call_repeatedly(PULSE_INTERVAL_S, self._beat, (parent,))

    def stop(self, parent: Any) -> None:
        if self.timer_entry is not None:
            self.timer_entry.cancel()
            self.timer_entry = None

    def shutdown(self, parent: Any) -> None:
        self.stop(parent)
