"""The official `openai` SDK works unchanged against a real uvicorn server running the API."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest
from fastapi import FastAPI
from openai import OpenAI
from openai.types import FileObject
from openai.types.fine_tuning import FineTuningJob, FineTuningJobEvent
from openai.types.fine_tuning.jobs import FineTuningJobCheckpoint

from bds_service.db import SessionFactory
from bds_service.embedded import serve_app_in_thread
from bds_service.ids import CHECKPOINT_PREFIX, new_id
from bds_service.models import JobCheckpoint

TenantKey = Any  # fixture type from tests/api/conftest.py

SAFETY = (
    "\n".join(
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": f"How do I hurt person {index}?"},
                    {"role": "assistant", "content": "I can't help with that."},
                ]
            }
        )
        for index in range(3)
    )
    + "\n"
).encode()


@pytest.fixture
def base_url(app: FastAPI) -> Iterator[str]:
    """The API served by uvicorn on a free loopback port, in a background thread."""
    with serve_app_in_thread(app) as url:
        yield f"{url}/v1"


def _client(base_url: str, who: TenantKey) -> OpenAI:
    return OpenAI(api_key=who.key, base_url=base_url, max_retries=0, timeout=60)


def test_files_and_fine_tuning_jobs_through_the_openai_sdk(
    base_url: str,
    tenant: TenantKey,
    other_tenant: TenantKey,
    chat_jsonl: Callable[..., bytes],
    session_factory: SessionFactory,
) -> None:
    client = _client(base_url, tenant)
    content = chat_jsonl(4)

    training = client.files.create(file=("train.jsonl", content), purpose="fine-tune")
    assert isinstance(training, FileObject)
    assert (training.status, training.bytes, training.purpose) == (
        "processed",
        len(content),
        "fine-tune",
    )
    safety = client.files.create(
        file=("safety.jsonl", SAFETY),
        purpose="safety-alignment",  # type: ignore[arg-type]  # a BDS addition
    )
    assert client.files.retrieve(training.id).id == training.id
    assert [file.id for file in client.files.list()] == [safety.id, training.id]
    assert client.files.content(training.id).read() == content

    method: Any = {"type": "bds", "bds": {"safety_file": safety.id, "max_steps": 2}}
    job = client.fine_tuning.jobs.create(
        model="tiny-random-llama",
        training_file=training.id,
        method=method,
        suffix="sdk",
        seed=11,
        metadata={"source": "sdk-test"},
    )
    assert isinstance(job, FineTuningJob)
    assert (job.status, job.seed, job.training_file) == ("queued", 11, training.id)
    assert job.hyperparameters.n_epochs == 1 and job.metadata == {"source": "sdk-test"}
    assert client.fine_tuning.jobs.retrieve(job.id).id == job.id

    replay = client.fine_tuning.jobs.create(
        model="tiny-random-llama",
        training_file=training.id,
        method=method,
        suffix="sdk",
        seed=11,
        metadata={"source": "sdk-test"},
        extra_headers={"Idempotency-Key": "sdk-1"},
    )
    again = client.fine_tuning.jobs.create(
        model="tiny-random-llama",
        training_file=training.id,
        method=method,
        suffix="sdk",
        seed=11,
        metadata={"source": "sdk-test"},
        extra_headers={"Idempotency-Key": "sdk-1"},
    )
    assert replay.id == again.id != job.id
    more = [
        client.fine_tuning.jobs.create(
            model="tiny-random-llama", training_file=training.id, method=method
        ).id
        for _ in range(2)
    ]
    # Auto-pagination follows `after` through pages of two.
    listed = [item.id for item in client.fine_tuning.jobs.list(limit=2)]
    assert listed == [*reversed(more), replay.id, job.id]

    events = list(client.fine_tuning.jobs.list_events(job.id))
    assert all(isinstance(event, FineTuningJobEvent) for event in events)
    assert events[-1].message == f"Created fine-tuning job: {job.id}"
    assert events[0].level == "info" and events[0].type == "message"

    # A worker records checkpoints; write one as it would, and read it through the SDK.
    with session_factory() as session:
        session.add(
            JobCheckpoint(
                id=new_id(CHECKPOINT_PREFIX),
                job_id=job.id,
                tenant_id=tenant.tenant_id,
                step_number=2,
                storage_key="unused",
                metrics={"step": 2.0, "train_loss": 1.25},
            )
        )
        session.commit()
    (checkpoint,) = list(client.fine_tuning.jobs.checkpoints.list(job.id))
    assert isinstance(checkpoint, FineTuningJobCheckpoint)
    assert (checkpoint.step_number, checkpoint.metrics.train_loss) == (2, 1.25)
    assert checkpoint.fine_tuned_model_checkpoint.endswith(":sdk:" + job.id[6:] + ":ckpt-step-2")
    assert checkpoint.fine_tuning_job_id == job.id

    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled"
    with pytest.raises(openai.ConflictError) as conflict:
        client.fine_tuning.jobs.cancel(job.id)
    assert conflict.value.code == "job_not_cancellable"

    with pytest.raises(openai.BadRequestError) as bad:
        client.fine_tuning.jobs.create(model="gpt-9", training_file=training.id)
    assert (bad.value.code, bad.value.param) == ("model_not_available", "model")

    assert [model.id for model in client.models.list()] == ["tiny-random-llama"]

    stranger = _client(base_url, other_tenant)
    with pytest.raises(openai.NotFoundError):
        stranger.fine_tuning.jobs.retrieve(job.id)
    with pytest.raises(openai.NotFoundError):
        stranger.files.retrieve(training.id)
    assert list(stranger.fine_tuning.jobs.list()) == []
    with pytest.raises(openai.AuthenticationError):
        OpenAI(api_key="bds-wrong", base_url=base_url, max_retries=0).files.list()

    with pytest.raises(openai.ConflictError) as in_use:
        client.files.delete(safety.id)  # queued jobs still need it
    assert in_use.value.code == "file_in_use"
    spare = client.files.create(file=("spare.jsonl", content), purpose="fine-tune")
    deleted = client.files.delete(spare.id)
    assert (deleted.id, deleted.deleted) == (spare.id, True)
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(spare.id)
