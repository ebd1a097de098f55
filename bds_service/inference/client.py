"""The client of the OpenAI-compatible inference engine (vLLM, or the local inference worker).

Both engines speak the same HTTP contract: ``/v1/chat/completions`` and vLLM's dynamic LoRA
endpoints ``/v1/load_lora_adapter`` / ``/v1/unload_lora_adapter``. An adapter is registered
under the job's ``fine_tuned_model`` name, with its folder as the engine sees it
(``BDS_INFERENCE_ADAPTER_ROOT`` when the engine mounts the artifact storage elsewhere).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy.orm import Session

from bds_service.errors import ServiceError
from bds_service.jobs.repository import load_job_for_task
from bds_service.jobs.states import JobStatus
from bds_service.settings import Settings
from bds_service.storage import LocalStorage

logger = logging.getLogger(__name__)


class InferenceUnavailableError(ServiceError):
    """The engine cannot be reached or failed (503); retrying later may succeed."""

    status_code = 503
    error_type = "server_error"


class EngineError(ServiceError):
    """The engine refused a request; carries its status and message."""


def engine_adapter_path(adapter_dir: Path, settings: Settings) -> str:
    """The adapter folder as the engine sees it."""
    if settings.inference_adapter_root is None:
        return str(adapter_dir)
    relative = adapter_dir.resolve().relative_to(settings.resolved_storage_dir)
    return f"{settings.inference_adapter_root.rstrip('/')}/{relative.as_posix()}"


def _headers(settings: Settings) -> dict[str, str]:
    key = settings.inference_api_key
    return {"Authorization": f"Bearer {key.get_secret_value()}"} if key else {}


def _engine_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(body.get("message"), str):
            return str(body["message"])
    return response.text[:500]


def _already_loaded(response: httpx.Response) -> bool:
    return response.status_code == 400 and "already been loaded" in _engine_message(response)


def register_adapter_sync(name: str, adapter_dir: Path, settings: Settings) -> bool:
    """Register a job's adapter with the engine (a worker calls this when a job succeeds).

    True when the engine has it afterwards (added now or before); False when the engine could
    not be reached or refused (logged): the API registers it again on first use.
    """
    try:
        response = httpx.post(
            f"{settings.inference_url.rstrip('/')}/v1/load_lora_adapter",
            json={"lora_name": name, "lora_path": engine_adapter_path(adapter_dir, settings)},
            headers=_headers(settings),
            timeout=30,
        )
    except httpx.HTTPError as error:
        logger.warning("could not register adapter %s with the engine: %s", name, error)
        return False
    if response.is_success or _already_loaded(response):
        return True
    logger.warning(
        "the engine refused adapter %s: %s %s",
        name,
        response.status_code,
        _engine_message(response),
    )
    return False


def register_job_adapter(
    uow: Callable[[], AbstractContextManager[Session]],
    storage: LocalStorage,
    settings: Settings,
    job_id: str,
) -> bool:
    """Register the adapter of a job that has just succeeded under its ``fine_tuned_model``
    name (what the training worker does as the job succeeds). False, without asking the
    engine, for a job that has not succeeded; otherwise as :func:`register_adapter_sync`."""
    with uow() as session:
        job = load_job_for_task(session, job_id)
        if (
            job is None
            or job.status != JobStatus.SUCCEEDED
            or job.adapter_key is None
            or not job.fine_tuned_model
        ):
            return False
        name, adapter_dir = job.fine_tuned_model, storage.path(job.adapter_key)
    return register_adapter_sync(name, adapter_dir, settings)


@dataclass
class InferenceClient:
    """Async client of the engine, shared by the API's requests.

    Remembers the adapters it registered, so each is registered once per API process; if the
    engine restarted and lost them, a 404 for the model registers it again and retries once.
    """

    settings: Settings
    _client: httpx.AsyncClient | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _registered: set[str] = field(default_factory=set)

    @property
    def client(self) -> httpx.AsyncClient:
        """The connection pool of the running event loop (a new loop gets a new pool)."""
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            self._loop = loop
            self._client = httpx.AsyncClient(
                base_url=self.settings.inference_url.rstrip("/"),
                headers=_headers(self.settings),
                timeout=httpx.Timeout(self.settings.inference_timeout_seconds, connect=5.0),
            )
        return self._client

    async def aclose(self) -> None:
        """Close the pool if it belongs to the running loop."""
        if self._client is not None and self._loop is asyncio.get_running_loop():
            await self._client.aclose()
        self._client = None

    async def ensure_adapter(self, name: str, adapter_dir: Path, *, force: bool = False) -> None:
        """Register the adapter unless this process already did (``force``: again)."""
        if name in self._registered and not force:
            return
        body = {"lora_name": name, "lora_path": engine_adapter_path(adapter_dir, self.settings)}
        response = await self._send("POST", "/v1/load_lora_adapter", json=body)
        if not (response.is_success or _already_loaded(response)):
            raise InferenceUnavailableError(
                f"the inference engine could not load the adapter of {name}: "
                f"{_engine_message(response)}",
                code="adapter_load_failed",
            )
        self._registered.add(name)

    async def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return await self.client.request(method, path, **kwargs)
        except httpx.HTTPError as error:
            raise self._unreachable(error) from error

    def _unreachable(self, error: Exception) -> InferenceUnavailableError:
        return InferenceUnavailableError(
            f"the inference engine at {self.settings.inference_url} is not available "
            f"({type(error).__name__}); retry later",
            code="inference_unavailable",
        )

    def _refused(self, response: httpx.Response) -> ServiceError:
        message = _engine_message(response)
        status = response.status_code
        if status >= 500:
            return InferenceUnavailableError(
                f"the inference engine failed: {message}", code="inference_failed"
            )
        # The caller's request was checked before it was forwarded: an engine that refuses the
        # service's key or does not know a model the API resolved is misconfigured, which is
        # the deployment's fault, not the caller's.
        if status in (401, 403):
            logger.error("the inference engine refused the API's key: %s %s", status, message)
            return InferenceUnavailableError(
                f"the inference engine refused this service's key ({status}): "
                "BDS_INFERENCE_API_KEY does not match the engine's",
                code="inference_failed",
            )
        if status == 404:
            logger.error("the inference engine does not serve a resolved model: %s", message)
            return InferenceUnavailableError(
                f"the inference engine does not serve this model: {message}",
                code="inference_failed",
            )
        code = "context_length_exceeded" if "context" in message else "invalid_request"
        return EngineError(f"the inference engine refused the request: {message}", code=code)

    async def complete(
        self, body: dict[str, Any], adapter: tuple[str, Path] | None
    ) -> dict[str, Any]:
        """A non-streaming chat completion (the engine's JSON body)."""
        for attempt in range(2):
            if adapter is not None:
                await self.ensure_adapter(*adapter, force=attempt > 0)
            response = await self._send("POST", "/v1/chat/completions", json=body)
            if response.status_code == 404 and adapter is not None and attempt == 0:
                continue  # the engine lost the adapter (restarted): register again
            if not response.is_success:
                raise self._refused(response)
            result: dict[str, Any] = response.json()
            return result
        raise self._refused(response)

    async def open_stream(
        self, body: dict[str, Any], adapter: tuple[str, Path] | None
    ) -> httpx.Response:
        """Start a streaming completion; errors before the first byte raise, as above."""
        for attempt in range(2):
            if adapter is not None:
                await self.ensure_adapter(*adapter, force=attempt > 0)
            request = self.client.build_request("POST", "/v1/chat/completions", json=body)
            try:
                response = await self.client.send(request, stream=True)
            except httpx.HTTPError as error:
                raise self._unreachable(error) from error
            if response.is_success:
                return response
            await response.aread()
            await response.aclose()
            if response.status_code == 404 and adapter is not None and attempt == 0:
                continue
            raise self._refused(response)
        raise AssertionError("unreachable")


async def iter_events(response: httpx.Response) -> AsyncIterator[dict[str, Any] | None]:
    """The JSON payloads of a server-sent event stream; None for ``[DONE]``."""
    async for line in response.aiter_lines():
        if not line.startswith("data:"):
            continue
        data = line[len("data:") :].strip()
        if data == "[DONE]":
            yield None
            return
        try:
            payload = json.loads(data)
        except ValueError:
            continue
        if isinstance(payload, dict):
            yield payload
