"""The supervisor of the broker-outage tests: docker's restart policy, or `bds serve`, played by
the test. Workers that exit are started again (their exit codes recorded); nothing else is done
by hand."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import select

from bds_service.models import AuditLog, File

LiveService = Any  # fixture types from tests/reliability/conftest.py
FINISHED = {"succeeded", "failed", "cancelled"}


class Supervisor:
    """Starts each named worker, and starts it again whenever it exits.

    ``workers`` maps a name to ``start_worker``'s keyword arguments (beat, queues); by default
    one worker on both queues with the beat, as the embedded and single-host setups run it.
    """

    def __init__(self, live: LiveService, workers: dict[str, dict[str, Any]] | None = None) -> None:
        self.live = live
        self.specs = workers or {"w": {"beat": True}}
        self.exit_codes: list[int] = []
        self.starts = 0
        self.running = {name: self._start(name) for name in self.specs}
        for process in self.running.values():
            process.wait_ready()

    @property
    def worker(self) -> Any:
        """The one worker (when there is one)."""
        (only,) = self.running.values()
        return only

    def _start(self, name: str) -> Any:
        self.starts += 1
        return self.live.start_worker(f"{name}{self.starts}", **self.specs[name])

    def tend(self) -> None:
        """Restart every worker that exited."""
        for name, process in list(self.running.items()):
            code = process.process.poll()
            if code is not None:
                self.exit_codes.append(code)
                process.stop()
                self.running[name] = self._start(name)

    def wait_for(
        self, probe: Callable[[], Any], done: Callable[[Any], bool], what: str, timeout: float
    ) -> Any:
        """Poll ``probe`` until ``done``, tending the workers meanwhile."""
        deadline = time.monotonic() + timeout
        while not done(value := probe()):
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {w.name}\n{w.log()[-3000:]}" for w in self.live.workers)
                raise AssertionError(f"{what} not reached in {timeout} s; last {value!r}\n{logs}")
            self.tend()
            time.sleep(0.1)
        return value

    def sleep(self, seconds: float) -> None:
        """Wait, tending the workers meanwhile."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.tend()
            time.sleep(0.1)


def job_body(training: str, safety: str, steps: int, seed: int = 5) -> dict[str, Any]:
    """A BDS job on the tiny model."""
    return {
        "model": "tiny-random-llama",
        "training_file": training,
        "method": {
            "type": "bds",
            "bds": {"safety_file": safety, "max_steps": steps, "reference": "none"},
        },
        "seed": seed,
    }


def stored_file(live: LiveService, file_id: str) -> File:
    with live.session_factory() as session:
        file = session.get(File, file_id)
        assert file is not None
        return file


def audit_actions(live: LiveService, target_id: str) -> list[str]:
    with live.session_factory() as session:
        statement = select(AuditLog.action).where(AuditLog.target_id == target_id)
        return list(session.scalars(statement.order_by(AuditLog.id)))


def chat_line(i: int) -> str:
    import json

    return json.dumps(
        {
            "messages": [
                {"role": "user", "content": f"Spell {i} in words."},
                {"role": "assistant", "content": f"number {i}"},
            ]
        }
    )


def wait_scored(live: LiveService, supervisor: Supervisor, file_id: str, timeout: float) -> None:
    """The file's safety report succeeds, written once."""
    status = supervisor.wait_for(
        lambda: stored_file(live, file_id).safety_status,
        lambda status: status in {"succeeded", "failed"},
        f"safety report of {file_id}",
        timeout=timeout,
    )
    assert status == "succeeded", stored_file(live, file_id).safety_error
    assert audit_actions(live, file_id).count("file.safety_report") == 1


def wait_succeeded_once(
    live: LiveService, supervisor: Supervisor, job_id: str, timeout: float
) -> Any:
    """The job succeeds, with one success event."""
    status = supervisor.wait_for(
        lambda: live.job(job_id).status, lambda s: s in FINISHED, f"job {job_id}", timeout=timeout
    )
    job = live.job(job_id)
    assert status == "succeeded", job.error
    messages = [event.message for event in live.events(job_id)]
    assert messages.count("The job has successfully completed") == 1
    return job
