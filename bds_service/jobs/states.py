"""The job state machine, defined once.

    validating_files -> queued -> running -> succeeded | failed | cancelled
                                   running -> cancelling -> cancelled
    validating_files | queued -> cancelled | failed
    running -> queued            (the reaper returns a job whose lease expired)

Every change of ``status`` goes through a compare-and-set UPDATE in
:mod:`bds_service.jobs.repository`, whose WHERE clause names the states it may leave; the
transitions below are checked there, so an illegal edge fails loudly instead of being written.
"""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    """Status strings exactly as the API shows them."""

    VALIDATING_FILES = "validating_files"
    QUEUED = "queued"
    RUNNING = "running"
    CANCELLING = "cancelling"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_STATUSES: frozenset[JobStatus] = frozenset(
    {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}
)
ACTIVE_STATUSES: frozenset[JobStatus] = frozenset(JobStatus) - TERMINAL_STATUSES

ALLOWED_TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.VALIDATING_FILES: frozenset(
        {JobStatus.QUEUED, JobStatus.FAILED, JobStatus.CANCELLED}
    ),
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.FAILED, JobStatus.CANCELLED}),
    JobStatus.RUNNING: frozenset(
        {
            JobStatus.RUNNING,  # a new worker re-claims a job whose lease expired
            JobStatus.QUEUED,
            JobStatus.CANCELLING,
            JobStatus.SUCCEEDED,
            JobStatus.FAILED,
        }
    ),
    JobStatus.CANCELLING: frozenset({JobStatus.CANCELLED, JobStatus.FAILED}),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}


class IllegalTransitionError(RuntimeError):
    """A code path asked for a transition the state machine does not have."""


def check_transition(sources: frozenset[JobStatus] | set[JobStatus], target: JobStatus) -> None:
    """Raise IllegalTransitionError unless every state in ``sources`` may move to ``target``."""
    illegal = sorted(source for source in sources if target not in ALLOWED_TRANSITIONS[source])
    if illegal:
        raise IllegalTransitionError(f"no transition from {', '.join(illegal)} to {target}")
