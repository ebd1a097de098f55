"""Job creation under concurrency: one Idempotency-Key, one job, however many retries race."""

from __future__ import annotations

import threading

from sqlalchemy import func, select

from bds_service.audit import Actor
from bds_service.db import SessionFactory
from bds_service.jobs import service as jobs
from bds_service.models import File, FineTuningJob, IdempotencyKey
from bds_service.settings import Settings
from bds_service.tenants.service import create_tenant


def test_concurrent_retries_with_one_idempotency_key_create_one_job(
    session_factory: SessionFactory, service_settings: Settings
) -> None:
    with session_factory() as session:
        tenant = create_tenant(session, "acme", Actor("cli", "t"))
        session.add(
            File(id="file-a", tenant_id=tenant.id, filename="a.jsonl", purpose="fine-tune",
                 bytes=1, sha256="0" * 64, storage_key="x", status="processed")
        )  # fmt: skip
        session.commit()
        tenant_id = tenant.id
    spec = jobs.JobSpec(model="tiny-random-llama", training_file="file-a", method_type="supervised")
    barrier = threading.Barrier(4)
    results: list[tuple[str, bool]] = []
    errors: list[BaseException] = []

    def client() -> None:
        try:
            with session_factory() as session:
                barrier.wait()
                created = jobs.create_job(
                    session,
                    spec,
                    tenant_id=tenant_id,
                    actor=Actor("api_key", "k", tenant_id),
                    settings=service_settings,
                    idempotency_key="retry-me",
                )
                session.commit()
                results.append((created.job.id, created.created))
        except BaseException as error:  # surfaced below
            errors.append(error)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert len({job_id for job_id, _ in results}) == 1
    assert sorted(created for _, created in results) == [False, False, False, True]
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(FineTuningJob)) == 1
        assert session.scalar(select(func.count()).select_from(IdempotencyKey)) == 1
