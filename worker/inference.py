"""The local inference worker: an OpenAI-compatible HTTP server around bds_core's engine.

It speaks the part of vLLM's OpenAI-compatible server that the API uses, so the API talks to
either the same way:

- ``POST /v1/chat/completions``: OpenAI's chat completion, streaming (server-sent events in
  OpenAI's chunk format, ``stream_options.include_usage``) or not;
- ``POST /v1/load_lora_adapter`` ``{"lora_name", "lora_path"}`` and
  ``POST /v1/unload_lora_adapter`` ``{"lora_name"}``: vLLM's dynamic LoRA endpoints (200 with a
  plain-text success line; 400 for an adapter already loaded; 404 for unloading an unknown one);
- ``GET /v1/models`` and ``GET /health``.

Run it with ``python -m worker.inference --port 8001`` (``bds serve`` does). It serves the base
models of ``BDS_BASE_MODELS``; each loads on its first request. It is an internal service with no
tenants: only the API (and the training worker, registering adapters) should reach it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from bds_core.serving import (
    AdapterError,
    Completion,
    EngineRequestError,
    InferenceEngine,
    ModelNotServedError,
    SamplingParams,
)
from bds_service.settings import get_settings

logger = logging.getLogger(__name__)


class _ContentPart(BaseModel):
    type: Literal["text"]
    text: str


class _Message(BaseModel):
    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[_ContentPart]

    def as_dict(self) -> dict[str, str]:
        text = (
            self.content
            if isinstance(self.content, str)
            else "".join(part.text for part in self.content)
        )
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class _StreamOptions(BaseModel):
    include_usage: bool = False


class ChatRequest(BaseModel):
    """The chat completion fields this engine honours; others are ignored, as vLLM ignores
    the ones it does not know."""

    model_config = ConfigDict(extra="ignore")

    model: str
    messages: list[_Message] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, gt=0)
    max_completion_tokens: int | None = Field(default=None, gt=0)
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(default=1, ge=1, le=1)
    stream: bool = False
    stream_options: _StreamOptions | None = None


class LoadAdapterRequest(BaseModel):
    lora_name: str = Field(min_length=1, max_length=300)
    lora_path: str = Field(min_length=1)


class UnloadAdapterRequest(BaseModel):
    lora_name: str = Field(min_length=1, max_length=300)


def _error(status: int, message: str, code: str, param: str | None = None) -> JSONResponse:
    error_type = "NotFoundError" if status == 404 else "BadRequestError"
    return JSONResponse(
        {"error": {"message": message, "type": error_type, "param": param, "code": code}},
        status_code=status,
    )


def _usage(completion: Completion) -> dict[str, int]:
    return {
        "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": completion.completion_tokens,
        "total_tokens": completion.prompt_tokens + completion.completion_tokens,
    }


def create_inference_app(engine: InferenceEngine, default_max_tokens: int = 512) -> FastAPI:
    """The HTTP app around ``engine``."""
    app = FastAPI(title="BDS inference worker", docs_url=None, redoc_url=None)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, RequestValidationError)
        first = error.errors()[0]
        param = ".".join(str(part) for part in first["loc"][1:]) or None
        return _error(400, f"{param}: {first['msg']}", "invalid_value", param)

    @app.get("/health")
    def health() -> PlainTextResponse:
        return PlainTextResponse("")

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        bases = [
            {"id": name, "object": "model", "owned_by": "bds", "root": name, "parent": None}
            for name in engine.base_models or []
        ]
        adapters = [
            {"id": name, "object": "model", "owned_by": "bds", "root": name, "parent": base}
            for name, base in engine.adapters().items()
        ]
        return {"object": "list", "data": bases + adapters}

    @app.post("/v1/load_lora_adapter", response_model=None)
    def load_adapter(body: LoadAdapterRequest) -> PlainTextResponse | JSONResponse:
        try:
            added = engine.register_adapter(body.lora_name, body.lora_path)
        except AdapterError as error:
            return _error(400, str(error), "invalid_adapter", "lora_path")
        if not added:
            return _error(
                400,
                f"The lora adapter '{body.lora_name}' has already been loaded.",
                "adapter_already_loaded",
                "lora_name",
            )
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' added successfully.")

    @app.post("/v1/unload_lora_adapter", response_model=None)
    def unload_adapter(body: UnloadAdapterRequest) -> PlainTextResponse | JSONResponse:
        if not engine.unregister_adapter(body.lora_name):
            return _error(
                404,
                f"The lora adapter '{body.lora_name}' cannot be found.",
                "adapter_not_found",
                "lora_name",
            )
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(body: ChatRequest) -> JSONResponse | StreamingResponse:
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        try:
            params = SamplingParams(
                max_tokens=body.max_completion_tokens or body.max_tokens or default_max_tokens,
                temperature=body.temperature,
                top_p=body.top_p,
                stop=tuple(stop),
                seed=body.seed,
            )
        except EngineRequestError as error:
            return _error(400, str(error), error.code, error.param)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Any] = asyncio.Queue()

        def on_event(event: Any) -> None:
            loop.call_soon_threadsafe(events.put_nowait, event)

        try:
            handle = engine.submit(
                body.model, [message.as_dict() for message in body.messages], params, on_event
            )
        except ModelNotServedError:
            return _error(
                404, f"The model `{body.model}` does not exist.", "model_not_found", "model"
            )
        except EngineRequestError as error:
            return _error(400, str(error), error.code, error.param)

        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())

        if not body.stream:
            try:
                while True:
                    kind, value = await events.get()
                    if kind == "done":
                        break
                    if kind == "error":
                        return _engine_failure(value)
            except asyncio.CancelledError:
                handle.cancel()
                raise
            return JSONResponse(
                {
                    "id": completion_id,
                    "object": "chat.completion",
                    "created": created,
                    "model": body.model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": value.text},
                            "logprobs": None,
                            "finish_reason": value.finish_reason,
                        }
                    ],
                    "usage": _usage(value),
                }
            )

        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> str:
            payload: dict[str, Any] = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": body.model,
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
                ],
            }
            if include_usage:
                payload["usage"] = None
            return f"data: {json.dumps(payload)}\n\n"

        async def stream() -> AsyncIterator[str]:
            try:
                yield chunk({"role": "assistant", "content": ""})
                while True:
                    kind, value = await events.get()
                    if kind == "delta":
                        yield chunk({"content": value})
                    elif kind == "error":
                        _status, message, code = _describe_failure(value)
                        error = {"message": message, "type": "BadRequestError", "code": code}
                        yield f"data: {json.dumps({'error': error})}\n\n"
                        break
                    else:
                        yield chunk({}, value.finish_reason)
                        if include_usage:
                            usage = {
                                "id": completion_id,
                                "object": "chat.completion.chunk",
                                "created": created,
                                "model": body.model,
                                "choices": [],
                                "usage": _usage(value),
                            }
                            yield f"data: {json.dumps(usage)}\n\n"
                        break
                yield "data: [DONE]\n\n"
            finally:
                handle.cancel()  # a no-op once finished; stops decoding if the client left

        return StreamingResponse(stream(), media_type="text/event-stream")

    return app


def _describe_failure(error: Exception) -> tuple[int, str, str]:
    if isinstance(error, EngineRequestError):
        return 400, str(error), error.code
    if isinstance(error, ModelNotServedError):
        return 404, str(error), "model_not_found"
    return 500, f"generation failed: {type(error).__name__}: {error}", "inference_failed"


def _engine_failure(error: Exception) -> JSONResponse:
    status, message, code = _describe_failure(error)
    return _error(status, message, code)


def main(argv: list[str] | None = None) -> None:
    """``python -m worker.inference``: serve the settings' base models over HTTP."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    options = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = get_settings()
    if settings.inference_threads is not None:
        import torch

        torch.set_num_threads(settings.inference_threads)
    engine = InferenceEngine(
        settings.base_models,
        device=settings.inference_device,
        max_loaded_adapters=settings.inference_max_loaded_adapters,
        max_batch_size=settings.inference_max_batch_size,
    )
    app = create_inference_app(engine, settings.inference_max_tokens)
    uvicorn.run(app, host=options.host, port=options.port, log_level="warning")


if __name__ == "__main__":
    main()
