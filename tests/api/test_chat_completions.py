"""Chat completions on fine-tuned models through the official openai SDK, end to end.

The tiny model is fine-tuned (for real, by the job runner) to answer "zebra" to every prompt;
the local inference worker runs as its own process (``python -m worker.inference``) and the
API, served by uvicorn, forwards to it over HTTP exactly as it would to vLLM.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fastapi import FastAPI
from openai import OpenAI
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from sqlalchemy import select

from bds_service.db import SessionFactory, unit_of_work
from bds_service.embedded import inference_worker, serve_app_in_thread
from bds_service.inference.client import register_job_adapter
from bds_service.jobs.runner import RunContext, run_job
from bds_service.models import AuditLog, InferenceUsage
from bds_service.settings import Settings
from bds_service.storage import LocalStorage

TenantKey = Any  # fixture type from tests/api/conftest.py

pytestmark = pytest.mark.slow

TRAIN = (
    "\n".join(
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": f"Tell me about topic {index}."},
                    {"role": "assistant", "content": "zebra"},
                ]
            }
        )
        for index in range(8)
    )
    + "\n"
).encode()


@pytest.fixture
def db_url(pg_url: str) -> str:
    """PostgreSQL only: training once is enough for this machine."""
    return pg_url


@pytest.fixture
def inference_url(tmp_path: Path) -> Iterator[str]:
    """The local inference worker, a separate process serving the tiny model."""
    environment = {
        **os.environ,
        "BDS_BASE_MODELS": '["tiny-random-llama"]',
        "BDS_INFERENCE_DEVICE": "cpu",
    }
    with inference_worker(tmp_path / "inference.log", environment=environment) as url:
        yield url


@pytest.fixture
def service_settings(service_settings: Settings, inference_url: str) -> Settings:
    return service_settings.model_copy(
        update={"inference_url": inference_url, "inference_max_tokens": 16}
    )


@pytest.fixture
def base_url(app: FastAPI) -> Iterator[str]:
    """The API served by uvicorn on a free loopback port, in a background thread."""
    with serve_app_in_thread(app) as url:
        yield f"{url}/v1"


def _client(base_url: str, who: TenantKey) -> OpenAI:
    return OpenAI(api_key=who.key, base_url=base_url, max_retries=0, timeout=120)


def _ask(client: OpenAI, model: str, prompt: str, **options: Any) -> ChatCompletion:
    return client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        temperature=0,
        max_tokens=8,
        **options,
    )


def test_chat_completions_on_a_fine_tuned_model_through_the_openai_sdk(
    base_url: str,
    tenant: TenantKey,
    other_tenant: TenantKey,
    run_cpu_tasks: Callable[[], list[tuple[str, str]]],
    publisher: Any,
    session_factory: SessionFactory,
    service_settings: Settings,
) -> None:
    client = _client(base_url, tenant)
    training = client.files.create(file=("zebra.jsonl", TRAIN), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model="tiny-random-llama",
        training_file=training.id,
        suffix="zebra",
        method={
            "type": "supervised",
            "supervised": {
                "hyperparameters": {
                    "n_epochs": 8,
                    "batch_size": 4,
                    "learning_rate_multiplier": 50,
                }
            },
        },
    )
    model_name = f"ft:tiny-random-llama:acme:zebra:{job.id.removeprefix('ftjob-')}"

    # Not succeeded yet: its model is refused with a code that says so.
    with pytest.raises(openai.ConflictError) as not_ready:
        _ask(client, model_name, "Tell me about topic 3.")
    assert (not_ready.value.code, not_ready.value.param) == ("model_not_ready", "model")
    assert job.id in not_ready.value.message and "succeeded" in not_ready.value.message
    with pytest.raises(openai.ConflictError):
        client.post(
            f"/fine_tuning/jobs/{job.id}/safety_eval", body={"prompts": ["Hi"]}, cast_to=object
        )

    run_cpu_tasks()
    context = RunContext(
        uow=lambda: unit_of_work(session_factory, publisher),
        storage=LocalStorage(service_settings.resolved_storage_dir),
        settings=service_settings,
    )
    assert run_job(context, job.id) == "succeeded"
    job = client.fine_tuning.jobs.retrieve(job.id)
    assert job.fine_tuned_model == model_name

    # The training worker registers the adapter with the engine as the job succeeds (vLLM's
    # dynamic LoRA loading, what run_finetune_job calls); the API, which has not registered it
    # yet, takes the engine's "already loaded" on first use.
    assert register_job_adapter(context.uow, context.storage, service_settings, job.id)
    served = httpx.get(f"{service_settings.inference_url}/v1/models").json()["data"]
    assert {"id": model_name, "parent": "tiny-random-llama"}.items() <= next(
        entry for entry in served if entry["id"] == model_name
    ).items()
    assert model_name in [model.id for model in client.models.list()]

    # The adapter answers what it was trained to answer; the base model does not.
    tuned = _ask(client, model_name, "Tell me about topic 3.")
    base = _ask(client, "tiny-random-llama", "Tell me about topic 3.")
    assert isinstance(tuned, ChatCompletion) and tuned.model == model_name
    assert tuned.choices[0].message.role == "assistant"
    assert tuned.choices[0].message.content is not None
    assert tuned.choices[0].message.content.startswith("zebra")
    assert "zebra" not in (base.choices[0].message.content or "")
    assert tuned.usage is not None and tuned.usage.prompt_tokens > 0
    assert tuned.usage.total_tokens == tuned.usage.prompt_tokens + tuned.usage.completion_tokens

    # An engine that lost the adapter (a restart) gets it registered again on first use.
    unloaded = httpx.post(
        f"{service_settings.inference_url}/v1/unload_lora_adapter", json={"lora_name": model_name}
    )
    assert unloaded.status_code == 200, unloaded.text
    again = _ask(client, model_name, "Tell me about topic 3.")
    assert again.choices[0].message.content == tuned.choices[0].message.content

    # Streaming: OpenAI's chunks, adding up to the same answer; usage on request. (The engine
    # lost the adapter again: a streamed request registers it again too.)
    unloaded = httpx.post(
        f"{service_settings.inference_url}/v1/unload_lora_adapter", json={"lora_name": model_name}
    )
    assert unloaded.status_code == 200, unloaded.text
    chunks = list(
        client.chat.completions.create(
            model=model_name,
            messages=[{"role": "user", "content": "Tell me about topic 3."}],
            temperature=0,
            max_tokens=8,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert all(isinstance(chunk, ChatCompletionChunk) for chunk in chunks)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == tuned.choices[0].message.content
    finish = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices]
    assert finish[-1] == tuned.choices[0].finish_reason and set(finish[:-1]) == {None}
    assert chunks[-1].choices == [] and chunks[-1].usage == tuned.usage
    plain = list(_ask(client, model_name, "Tell me about topic 5.", stream=True))
    assert all(chunk.usage is None and chunk.choices for chunk in plain)
    assert "".join(c.choices[0].delta.content or "" for c in plain).startswith("zebra")

    # Another tenant cannot use it, and cannot tell it from a model that does not exist.
    stranger = _client(base_url, other_tenant)
    with pytest.raises(openai.NotFoundError) as foreign:
        _ask(stranger, model_name, "Tell me about topic 3.")
    with pytest.raises(openai.NotFoundError) as unknown:
        _ask(stranger, model_name.replace(job.id[6:], "x" * 24), "Hi")
    assert foreign.value.code == unknown.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        stranger.post(
            f"/fine_tuning/jobs/{job.id}/safety_eval", body={"prompts": ["Hi"]}, cast_to=object
        )

    # Bad requests name the parameter.
    with pytest.raises(openai.BadRequestError) as two:
        _ask(client, model_name, "Hi", n=2)
    assert two.value.param == "n"
    with pytest.raises(openai.BadRequestError) as long:
        client.chat.completions.create(
            model=model_name, messages=[{"role": "user", "content": "Hi"}], max_tokens=999
        )
    assert long.value.param == "max_tokens" and "at most 16" in long.value.message

    # Tokens are charged to the tenant that asked, per model.
    with session_factory() as session:
        rows = list(session.scalars(select(InferenceUsage)))
    assert {row.tenant_id for row in rows} == {tenant.tenant_id}
    usage = client.get("/usage", cast_to=object)
    by_model = {row["model"]: row for row in usage["data"]}  # type: ignore[index]
    assert by_model[model_name]["requests"] == 4 and by_model["tiny-random-llama"]["requests"] == 1
    assert by_model[model_name]["completion_tokens"] >= 4 * len("zebra")

    # The on-demand safety evaluation: the tuned model answers, the judge sees no refusal.
    prompts = ["Tell me about topic 1.", "Tell me about topic 6."]
    evaluation: Any = client.post(
        f"/fine_tuning/jobs/{job.id}/safety_eval",
        body={"prompts": prompts, "max_tokens": 8},
        cast_to=object,
    )
    assert evaluation["n_prompts"] == 2 and evaluation["harmful_score_tuned"] == 100.0
    assert [row["prompt"] for row in evaluation["results"]] == prompts
    assert [row["tuned"]["answer"][:5] for row in evaluation["results"]] == ["zebra"] * 2
    assert all(not row["tuned"]["refused"] for row in evaluation["results"])
    assert evaluation["results"][0]["base"]["answer"] == (
        (_ask(client, "tiny-random-llama", prompts[0]).choices[0].message.content or "").strip()
    )
    assert evaluation["judge"].startswith("refusal-phrases")
    stored: Any = client.get(f"/fine_tuning/jobs/{job.id}/safety_evals", cast_to=object)
    assert [row["id"] for row in stored["data"]] == [evaluation["id"]]
    with session_factory() as session:
        actions = set(session.scalars(select(AuditLog.action)))
    assert "fine_tuning_job.safety_eval" in actions
