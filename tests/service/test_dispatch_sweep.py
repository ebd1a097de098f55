"""Dispatch owned by the database: the sweep sends again what no worker claimed in time.

Rows are written as a lost message leaves them (waiting, sent some time ago); the sweep must
send exactly the overdue ones again, back off while the work stays unclaimed, and leave
claimed, finished and freshly sent work alone.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy.orm import Session

from bds_service.audit import Actor
from bds_service.dispatch import redispatch_gap, redispatch_unclaimed
from bds_service.models import File, FineTuningJob, utcnow
from bds_service.settings import Settings
from bds_service.tasks import (
    PREPARE_JOB,
    RUN_FINETUNE_JOB,
    SCORE_DATASET,
    VALIDATE_FILE,
    take_pending,
)
from bds_service.tenants.service import create_tenant

AFTER_S, MAX_S, SCORING_LEASE_S = 10.0, 40.0, 30.0


@pytest.fixture
def settings(service_settings: Settings) -> Settings:
    return service_settings.model_copy(
        update={
            "redispatch_after_seconds": AFTER_S,
            "redispatch_max_seconds": MAX_S,
            "scoring_lease_seconds": SCORING_LEASE_S,
        }
    )


def _ago(seconds: float) -> dt.datetime:
    return utcnow() - dt.timedelta(seconds=seconds)


@pytest.fixture
def rows(session: Session) -> tuple[Callable[..., str], Callable[..., str]]:
    tenant = create_tenant(session, "acme", Actor("cli", "tests"))
    session.commit()
    counter = iter(range(1000))

    def make_file(**values: Any) -> str:
        file = File(
            id=f"file-{next(counter)}",
            tenant_id=tenant.id,
            filename="train.jsonl",
            purpose="fine-tune",
            bytes=1,
            sha256="0" * 64,
            storage_key="x",
            **{"status": "processed", **values},
        )
        session.add(file)
        session.commit()
        return file.id

    training = make_file(dispatched_at=_ago(3600))

    def make_job(**values: Any) -> str:
        job = FineTuningJob(
            id=f"ftjob-{next(counter)}",
            tenant_id=tenant.id,
            model="tiny-random-llama",
            training_file_id=training,
            hyperparameters={},
            method={"type": "supervised"},
            seed=0,
            **values,
        )
        session.add(job)
        session.commit()
        return job.id

    return make_file, make_job


def _sweep(session: Session, settings: Settings, now: dt.datetime | None = None) -> set[Any]:
    redispatch_unclaimed(session, settings, now or utcnow())
    messages = take_pending(session)
    session.commit()
    return {(message.name, message.args[0]) for message in messages}


def test_the_sweep_sends_again_only_work_that_no_worker_claimed_in_time(
    session: Session, settings: Settings, rows: tuple[Callable[..., str], Callable[..., str]]
) -> None:
    make_file, make_job = rows
    lost_queued = make_job(status="queued", dispatched_at=_ago(AFTER_S + 1))
    lost_validating = make_job(status="validating_files", dispatched_at=_ago(AFTER_S + 1))
    fresh_queued = make_job(status="queued", dispatched_at=_ago(1))
    make_job(status="running", attempt=1, lease_owner="w", lease_expires_at=_ago(-300))
    make_job(status="succeeded", dispatched_at=_ago(3600))
    make_job(status="cancelled", dispatched_at=_ago(3600))
    lost_validation = make_file(status="uploaded", dispatched_at=_ago(AFTER_S + 1))
    lost_scoring = make_file(safety_status="pending", dispatched_at=_ago(AFTER_S + 1))
    dead_scorer = make_file(
        safety_status="running", scoring_claim="dead", dispatched_at=_ago(SCORING_LEASE_S + 1)
    )
    make_file(safety_status="running", scoring_claim="alive", dispatched_at=_ago(AFTER_S + 1))
    make_file(safety_status="succeeded", dispatched_at=_ago(3600))
    make_file(status="uploaded", dispatched_at=_ago(3600), deleted_at=_ago(1))

    assert _sweep(session, settings) == {
        (RUN_FINETUNE_JOB, lost_queued),
        (PREPARE_JOB, lost_validating),
        (VALIDATE_FILE, lost_validation),
        (SCORE_DATASET, lost_scoring),
        (SCORE_DATASET, dead_scorer),
    }
    # The dead worker's scoring claim is withdrawn: the next delivery claims it afresh.
    dead = session.get(File, dead_scorer)
    assert dead is not None
    session.refresh(dead)
    assert (dead.safety_status, dead.scoring_claim) == ("pending", None)

    # Sent again just now: nothing is due, and the job sent a moment ago is not either.
    assert _sweep(session, settings) == set()
    # Still unclaimed later: sent again, after a gap that doubles while nobody claims it.
    later = utcnow() + dt.timedelta(seconds=2 * AFTER_S + 1)
    again = _sweep(session, settings, later)
    assert {(RUN_FINETUNE_JOB, lost_queued), (RUN_FINETUNE_JOB, fresh_queued)} <= again
    job = session.get(FineTuningJob, lost_queued)
    assert job is not None
    session.refresh(job)
    assert job.dispatch_count == 2


def test_the_gap_between_sends_doubles_up_to_its_cap(settings: Settings) -> None:
    gaps = [redispatch_gap(count, settings).total_seconds() for count in range(5)]
    assert gaps == [AFTER_S, 2 * AFTER_S, 4 * AFTER_S, MAX_S, MAX_S]


def test_a_row_the_worker_changed_after_the_sweep_read_it_is_not_sent(
    session: Session,
    settings: Settings,
    rows: tuple[Callable[..., str], Callable[..., str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The sweep's read and its update are separate statements: a worker that claims the job
    in between wins, and no message is sent for it."""
    _make_file, make_job = rows
    job_id = make_job(status="queued", dispatched_at=_ago(AFTER_S + 1))
    import bds_service.dispatch as dispatch

    real_resend = dispatch._resend

    def claim_then_resend(inner: Session, model: Any, row: Any, *args: Any) -> bool:
        inner.execute(
            FineTuningJob.__table__.update()
            .where(FineTuningJob.id == job_id)
            .values(status="running", lease_owner="w", attempt=1)
        )
        return real_resend(inner, model, row, *args)

    monkeypatch.setattr(dispatch, "_resend", claim_then_resend)
    assert _sweep(session, settings) == set()
