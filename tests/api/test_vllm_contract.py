"""The vLLM backend, tested against vLLM's documented HTTP contract.

vLLM cannot run on these machines, so ``Vllm`` below stands in for its OpenAI-compatible server
with LoRA enabled and runtime LoRA updating (``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``,
``--api-key``, ``--max-lora-rank``, ``--max-model-len``), answering what vLLM's documentation
(docs/features/lora.md, "Dynamically serving LoRA Adapters") and its server code
(``vllm/entrypoints/openai/models/serving.py``, ``serve/utils/error_response.py``) say it
answers, byte for byte where they fix it:

- every ``/v1`` route wants ``Authorization: Bearer <--api-key>``, else 401
  ``{"error": "Unauthorized"}``;
- ``POST /v1/load_lora_adapter {"lora_name", "lora_path"}``: 200 with the plain-text line
  ``Success: LoRA adapter '<name>' added successfully.``; a name already loaded is a 400
  ``InvalidUserInput`` "... has already been loaded. If you want to load the adapter in place,
  set 'load_inplace' to True."; a folder without an adapter a 404 ``NotFoundError`` "Loading
  lora <name> failed: No adapter found for <path>"; an adapter the engine cannot take (a rank
  above ``--max-lora-rank``) a 500 ``InternalServerError``;
- ``POST /v1/chat/completions``: a model that is neither the served model nor a loaded adapter
  is a 404 ``NotFoundError`` "The model `<name>` does not exist." (``param`` model); a prompt
  past ``--max-model-len`` a 400 "This model's maximum context length is ..."; answers and
  chunks in OpenAI's shape with vLLM's extra fields (``stop_reason``, ``reasoning_content``,
  ``prompt_logprobs``...), a usage chunk with ``stream_options.include_usage``;
- errors as ``{"error": {"message", "type", "param", "code"}}`` with the HTTP status as an
  integer ``code``; a restarted server has lost every adapter loaded at run time.

The stand-in answers with a text that names the model and, for an adapter, the folder it was
loaded from as the engine sees it, so the tests see which adapter answered. What is under test
is this service's side: what the training worker and the API send, and what they make of each
answer. The artifact storage is mounted in the engine at another path
(``BDS_INFERENCE_ADAPTER_ROOT``), as in a vLLM container.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from openai import OpenAI
from sqlalchemy import select, update

from bds_service.audit import Actor
from bds_service.db import SessionFactory, unit_of_work
from bds_service.embedded import serve_app_in_thread
from bds_service.inference.client import register_job_adapter
from bds_service.jobs import service as jobs
from bds_service.models import File, FineTuningJob, InferenceUsage
from bds_service.settings import Settings
from bds_service.storage import LocalStorage, job_key

TenantKey = Any  # fixture types from tests/api/conftest.py
RecordingPublisher = Any

BASE = "tiny-random-llama"
ENGINE_ROOT = "/mnt/vllm/artifacts"  # where the vLLM container mounts the artifact volume
ENGINE_KEY = "vllm-engine-key"


def _error(status: int, message: str, error_type: str, param: str | None = None) -> JSONResponse:
    """vLLM's ErrorResponse: the HTTP status repeated as an integer ``code``."""
    body = {"error": {"message": message, "type": error_type, "param": param, "code": status}}
    return JSONResponse(body, status_code=status)


@dataclass
class Vllm:
    """vLLM's OpenAI-compatible server as documented (see the module docstring)."""

    storage_root: Path  # what ENGINE_ROOT shows inside the engine
    api_key: str = ENGINE_KEY
    served_model_name: str = BASE
    max_lora_rank: int = 16
    max_model_len: int = 64  # tokens; one word is one token here
    loras: dict[str, str] = field(default_factory=dict)  # lora_name -> lora_path
    calls: list[tuple[str, int, Any]] = field(default_factory=list)  # (path, status, body)

    def restart(self) -> None:
        """A restarted server knows only its command line: adapters loaded at run time are gone."""
        self.loras.clear()

    def paths(self) -> list[tuple[str, int]]:
        return [(path, status) for path, status, _body in self.calls]

    def _folder(self, lora_path: str) -> Path | None:
        if not lora_path.startswith(f"{ENGINE_ROOT}/"):
            return None
        return self.storage_root / lora_path.removeprefix(f"{ENGINE_ROOT}/")

    def load_lora_adapter(self, body: dict[str, Any]) -> Response:
        name, path = body.get("lora_name"), body.get("lora_path")
        if not name or not path:
            return _error(
                400, "Both 'lora_name' and 'lora_path' must be provided.", "InvalidUserInput"
            )
        if name in self.loras and not body.get("load_inplace"):
            return _error(
                400,
                f"The lora adapter '{name}' has already been loaded. If you want to load the "
                "adapter in place, set 'load_inplace' to True.",
                "InvalidUserInput",
            )
        folder = self._folder(path)
        if folder is None or not (folder / "adapter_config.json").is_file():
            return _error(
                404, f"Loading lora {name} failed: No adapter found for {path}", "NotFoundError"
            )
        config = json.loads((folder / "adapter_config.json").read_text())
        if config.get("base_model_name_or_path") != self.served_model_name:
            return _error(
                500,
                f"Loading lora {name} failed: the adapter was trained for "
                f"{config.get('base_model_name_or_path')}",
                "InternalServerError",
            )
        if int(config["r"]) > self.max_lora_rank:
            return _error(
                500,
                f"LoRA rank {config['r']} is greater than max_lora_rank {self.max_lora_rank}.",
                "InternalServerError",
            )
        self.loras[name] = path
        return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")

    def chat_completions(self, body: dict[str, Any]) -> Response:
        model = body["model"]
        if model != self.served_model_name and model not in self.loras:
            return _error(404, f"The model `{model}` does not exist.", "NotFoundError", "model")
        prompt_tokens = sum(len(message["content"].split()) for message in body["messages"])
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or 16
        if prompt_tokens + max_tokens > self.max_model_len:
            return _error(
                400,
                f"This model's maximum context length is {self.max_model_len} tokens. However, "
                f"you requested {prompt_tokens + max_tokens} tokens ({prompt_tokens} in the "
                f"messages, {max_tokens} in the completion). Please reduce the length of the "
                "messages or completion.",
                "BadRequestError",
            )
        words = (
            f"answered by {model} from {self.loras[model]}" if model in self.loras else "base"
        ).split()
        answer, finish = words[:max_tokens], "length" if len(words) > max_tokens else "stop"
        usage = {
            "prompt_tokens": prompt_tokens,
            "total_tokens": prompt_tokens + len(answer),
            "completion_tokens": len(answer),
            "prompt_tokens_details": None,
        }
        completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if not body.get("stream"):
            choice = {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "reasoning_content": None,
                    "content": " ".join(answer),
                    "tool_calls": [],
                },
                "logprobs": None,
                "finish_reason": finish,
                "stop_reason": None,
            }
            return JSONResponse(
                {
                    "id": completion_id,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [choice],
                    "usage": usage,
                    "prompt_logprobs": None,
                }
            )

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
            payload = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": choices,
                **extra,
            }
            return f"data: {json.dumps(payload)}\n\n"

        def delta(content: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
            return {"index": 0, "delta": content, "logprobs": None, "finish_reason": finish_reason}

        events = [chunk([delta({"role": "assistant", "content": ""})])]
        events += [
            chunk([delta({"content": word if index == 0 else f" {word}"})])
            for index, word in enumerate(answer)
        ]
        events.append(chunk([delta({"content": ""}, finish) | {"stop_reason": None}]))
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append(chunk([], usage=usage))
        events.append("data: [DONE]\n\n")
        return StreamingResponse(iter(events), media_type="text/event-stream")

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.middleware("http")
        async def authenticate(request: Request, call_next: Any) -> Response:
            if request.url.path.startswith("/v1") and (
                request.headers.get("Authorization") != f"Bearer {self.api_key}"
            ):
                self.calls.append((request.url.path, 401, None))
                return JSONResponse({"error": "Unauthorized"}, status_code=401)
            response: Response = await call_next(request)
            return response

        @app.post("/v1/load_lora_adapter")
        async def load(request: Request) -> Response:
            body = await request.json()
            response = self.load_lora_adapter(body)
            self.calls.append((request.url.path, response.status_code, body))
            return response

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Response:
            body = await request.json()
            response = self.chat_completions(body)
            self.calls.append((request.url.path, response.status_code, body))
            return response

        return app


@pytest.fixture
def db_url(pg_url: str) -> str:
    return pg_url


@pytest.fixture
def vllm(tmp_path: Path) -> Vllm:
    return Vllm(storage_root=(tmp_path / "storage").resolve())


@pytest.fixture
def vllm_url(vllm: Vllm) -> Iterator[str]:
    with serve_app_in_thread(vllm.app()) as url:
        yield url


@pytest.fixture
def service_settings(service_settings: Settings, vllm_url: str) -> Settings:
    """BDS_INFERENCE_BACKEND=vllm, with vLLM's --api-key and its own view of the storage."""
    from pydantic import SecretStr

    return service_settings.model_copy(
        update={
            "inference_backend": "vllm",
            "inference_url": vllm_url,
            "inference_api_key": SecretStr(ENGINE_KEY),
            "inference_adapter_root": ENGINE_ROOT,
            "inference_max_tokens": 32,
        }
    )


@dataclass(frozen=True)
class Job:
    id: str
    model: str  # its fine_tuned_model
    engine_path: str  # its adapter folder as vLLM sees it


@pytest.fixture
def make_job(
    session_factory: SessionFactory, service_settings: Settings, tenant: TenantKey
) -> Callable[..., Job]:
    """A job of ``tenant`` with a LoRA adapter of rank ``rank`` stored as training stores it
    (succeeded unless ``succeeded`` is False)."""
    storage = LocalStorage(service_settings.resolved_storage_dir)

    def make(rank: int = 8, succeeded: bool = True) -> Job:
        with session_factory() as session:
            file_id = f"file-{uuid.uuid4().hex[:24]}"
            session.add(
                File(
                    id=file_id,
                    tenant_id=tenant.tenant_id,
                    filename="a.jsonl",
                    purpose="fine-tune",
                    bytes=1,
                    sha256="0" * 64,
                    storage_key="x",
                    status="processed",
                )
            )
            session.flush()
            spec = jobs.JobSpec(
                model=BASE, training_file=file_id, method_type="supervised", suffix="vllm"
            )
            job = jobs.create_job(
                session,
                spec,
                tenant_id=tenant.tenant_id,
                actor=Actor("cli", "tests"),
                settings=service_settings,
            ).job
            session.commit()
            job_id = job.id
        adapter_key = f"{job_key(tenant.tenant_id, job_id)}/run/adapter"
        folder = storage.path(adapter_key)
        folder.mkdir(parents=True)
        config = {"peft_type": "LORA", "r": rank, "base_model_name_or_path": BASE}
        (folder / "adapter_config.json").write_text(json.dumps(config))
        (folder / "adapter_model.safetensors").write_bytes(b"weights")
        model = f"ft:{BASE}:{tenant.name}:vllm:{job_id.removeprefix('ftjob-')}"
        if succeeded:
            with session_factory() as session:
                session.execute(
                    update(FineTuningJob)
                    .where(FineTuningJob.id == job_id)
                    .values(status="succeeded", fine_tuned_model=model, adapter_key=adapter_key)
                )
                session.commit()
        return Job(job_id, model, f"{ENGINE_ROOT}/{adapter_key}")

    return make


def test_the_training_worker_registers_a_succeeded_jobs_adapter_with_vllm(
    vllm: Vllm,
    make_job: Callable[..., Job],
    session_factory: SessionFactory,
    publisher: RecordingPublisher,
    service_settings: Settings,
) -> None:
    """What ``run_finetune_job`` calls once a job has succeeded (worker/tasks.py)."""
    storage = LocalStorage(service_settings.resolved_storage_dir)

    def register(job_id: str, settings: Settings = service_settings) -> bool:
        return register_job_adapter(
            lambda: unit_of_work(session_factory, publisher), storage, settings, job_id
        )

    job = make_job()
    assert register(job.id)
    load = {"lora_name": job.model, "lora_path": job.engine_path}
    assert vllm.calls == [("/v1/load_lora_adapter", 200, load)]
    assert vllm.loras == {job.model: job.engine_path}

    # A redelivered task message registers it again: vLLM's "already been loaded" is a success.
    assert register(job.id)
    assert vllm.calls[-1] == ("/v1/load_lora_adapter", 400, load)

    # A job that has not succeeded has nothing to register: the engine is not asked.
    queued = make_job(succeeded=False)
    assert not register(queued.id)
    assert len(vllm.calls) == 2

    # An adapter vLLM refuses (rank above --max-lora-rank), a key vLLM does not take and an
    # engine that is down: not registered, and the task goes on (the API retries on first use).
    wide = make_job(rank=64)
    assert not register(wide.id)
    assert vllm.calls[-1][:2] == ("/v1/load_lora_adapter", 500) and wide.model not in vllm.loras
    wrong_key = service_settings.model_copy(update={"inference_api_key": None})
    other = make_job()
    assert not register(other.id, wrong_key)
    assert vllm.calls[-1] == ("/v1/load_lora_adapter", 401, None)
    down = service_settings.model_copy(update={"inference_url": "http://127.0.0.1:9"})
    assert not register(other.id, down)
    assert other.model not in vllm.loras


@pytest.fixture
def base_url(app: FastAPI) -> Iterator[str]:
    with serve_app_in_thread(app) as url:
        yield f"{url}/v1"


def test_the_api_forwards_chat_completions_to_vllm_and_registers_adapters_itself(
    vllm: Vllm,
    base_url: str,
    tenant: TenantKey,
    make_job: Callable[..., Job],
    session_factory: SessionFactory,
) -> None:
    client = OpenAI(api_key=tenant.key, base_url=base_url, max_retries=0, timeout=60)
    job = make_job()
    messages: Any = [{"role": "user", "content": "Tell me about topic 3."}]

    # The worker could not register the adapter: the API registers it on first use, with the
    # engine's path of the folder and the engine's key, then forwards the request unchanged.
    tuned = client.chat.completions.create(
        model=job.model, messages=messages, max_tokens=12, temperature=0.5, top_p=0.9, seed=7,
        stop=["\n"],
    )  # fmt: skip
    assert tuned.model == job.model and tuned.choices[0].finish_reason == "stop"
    assert tuned.choices[0].message.content == f"answered by {job.model} from {job.engine_path}"
    assert tuned.usage is not None and tuned.usage.completion_tokens == 5
    assert vllm.calls == [
        ("/v1/load_lora_adapter", 200, {"lora_name": job.model, "lora_path": job.engine_path}),
        (
            "/v1/chat/completions",
            200,
            {
                "model": job.model,
                "messages": messages,
                "max_tokens": 12,
                "temperature": 0.5,
                "top_p": 0.9,
                "stop": ["\n"],
                "seed": 7,
            },
        ),
    ]

    # Registered once per API process; a base model needs no adapter; no max_tokens is the cap.
    base = client.chat.completions.create(model=BASE, messages=messages)
    assert base.choices[0].message.content == "base"
    assert vllm.calls[-1][2] == {"model": BASE, "messages": messages, "max_tokens": 32}
    assert [path for path, _status in vllm.paths()].count("/v1/load_lora_adapter") == 1

    # Streaming: vLLM's chunks reach the SDK; vLLM is always asked for the usage chunk (the
    # tokens are recorded), the client gets it only if it asked for it.
    chunks = list(
        client.chat.completions.create(
            model=job.model, messages=messages, max_tokens=2, stream=True,
            stream_options={"include_usage": True},
        )
    )  # fmt: skip
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "answered by"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 2
    plain = list(client.chat.completions.create(model=job.model, messages=messages, stream=True))
    assert all(chunk.usage is None for chunk in plain)
    assert vllm.calls[-1][2]["stream"] is True
    assert vllm.calls[-1][2]["stream_options"] == {"include_usage": True}

    # vLLM restarted and lost the adapter: its 404 makes the API register it again and retry
    # once, streaming or not.
    for stream in (False, True):
        vllm.restart()
        before = len(vllm.calls)
        if stream:
            text = "".join(
                chunk.choices[0].delta.content or ""
                for chunk in client.chat.completions.create(
                    model=job.model, messages=messages, stream=True
                )
                if chunk.choices
            )
        else:
            answer = client.chat.completions.create(model=job.model, messages=messages)
            text = answer.choices[0].message.content or ""
        assert text == f"answered by {job.model} from {job.engine_path}"
        assert vllm.paths()[before:] == [
            ("/v1/chat/completions", 404),
            ("/v1/load_lora_adapter", 200),
            ("/v1/chat/completions", 200),
        ]

    # vLLM's refusals, in this API's error shape.
    wide = make_job(rank=64)
    with pytest.raises(openai.InternalServerError) as refused_load:
        client.chat.completions.create(model=wide.model, messages=messages)
    assert (
        refused_load.value.status_code == 503 and refused_load.value.code == "adapter_load_failed"
    )
    assert "greater than max_lora_rank 16" in refused_load.value.message
    long: Any = [{"role": "user", "content": "word " * 40}]
    with pytest.raises(openai.BadRequestError) as too_long:
        client.chat.completions.create(model=job.model, messages=long, max_tokens=30)
    assert too_long.value.code == "context_length_exceeded"
    assert "maximum context length is 64 tokens" in too_long.value.message

    # A misconfigured deployment is the service's fault, not the caller's: a 503 that says so.
    vllm.served_model_name = "SmolLM2-135M-Instruct"  # --served-model-name is not BASE
    with pytest.raises(openai.InternalServerError) as unknown_base:
        client.chat.completions.create(model=BASE, messages=messages)
    assert unknown_base.value.status_code == 503 and unknown_base.value.code == "inference_failed"
    assert f"The model `{BASE}` does not exist." in unknown_base.value.message
    vllm.served_model_name, vllm.api_key = BASE, "rotated-key"
    with pytest.raises(openai.InternalServerError) as bad_key:
        client.chat.completions.create(model=BASE, messages=messages)
    assert (
        bad_key.value.code == "inference_failed"
        and "BDS_INFERENCE_API_KEY" in bad_key.value.message
    )

    # Every completion vLLM answered is charged to the tenant, from vLLM's usage.
    answered = [body for path, status, body in vllm.calls if path.endswith("/chat/completions")
                and status == 200]  # fmt: skip
    with session_factory() as session:
        rows = list(session.scalars(select(InferenceUsage)))
    assert len(rows) == len(answered) == 6
    assert {row.tenant_id for row in rows} == {tenant.tenant_id}
    assert sum(row.model == job.model for row in rows) == 5
