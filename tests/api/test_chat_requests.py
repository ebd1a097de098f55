"""Chat completion requests the API refuses before any engine is involved, and the answer when
the engine is down: clear errors in the usual shape, naming the parameter."""

from __future__ import annotations

import socket
from typing import Any

import pytest
from fastapi.testclient import TestClient

from bds_service.settings import Settings

TenantKey = Any  # fixture type from tests/api/conftest.py


@pytest.fixture
def db_url(pg_url: str) -> str:
    return pg_url


@pytest.fixture
def service_settings(service_settings: Settings) -> Settings:
    with socket.socket() as sock:  # a port nothing listens on: the engine is down
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return service_settings.model_copy(update={"inference_url": f"http://127.0.0.1:{port}"})


def _chat(client: TestClient, who: TenantKey, **body: Any) -> Any:
    payload = {"model": "tiny-random-llama", "messages": [{"role": "user", "content": "Hi"}]}
    return client.post("/v1/chat/completions", headers=who.headers, json={**payload, **body})


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"n": 3}, "n", "invalid_value"),
        ({"messages": []}, "messages", "invalid_value"),
        ({"messages": [{"role": "robot", "content": "Hi"}]}, "messages.0.role", "invalid_value"),
        ({"temperature": 2.5}, "temperature", "invalid_value"),
        ({"top_p": 0}, "top_p", "invalid_value"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "invalid_value"),
        ({"logit_bias": {"1": 5}}, "logit_bias", "unknown_parameter"),
        ({"max_tokens": 100_000}, "max_tokens", "invalid_value"),
        ({"max_completion_tokens": 0}, "max_completion_tokens", "invalid_value"),
    ],
)
def test_bad_chat_requests_name_the_parameter(
    client: TestClient, tenant: TenantKey, body: dict[str, Any], param: str, code: str
) -> None:
    answer = _chat(client, tenant, **body)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert (error["param"], error["code"]) == (param, code), error


def test_unknown_models_and_missing_keys_are_refused(client: TestClient, tenant: TenantKey) -> None:
    for model in ("gpt-9", "ft:tiny-random-llama:acme::AAAAAAAAAAAAAAAAAAAAAAAA", "ft:x"):
        answer = _chat(client, tenant, model=model)
        assert answer.status_code == 404, answer.text
        assert (answer.json()["error"]["code"], answer.json()["error"]["param"]) == (
            "model_not_found",
            "model",
        )
    assert client.post("/v1/chat/completions", json={}).status_code == 401


def test_a_down_engine_is_a_503_that_says_so(client: TestClient, tenant: TenantKey) -> None:
    for stream in (False, True):
        answer = _chat(client, tenant, stream=stream)
        assert answer.status_code == 503, answer.text
        error = answer.json()["error"]
        assert error["code"] == "inference_unavailable" and "not available" in error["message"]


def test_chat_completions_count_against_the_keys_rate_limit(
    service_settings: Settings, tenant: TenantKey, other_tenant: TenantKey, publisher: Any
) -> None:
    """The per-key rate limit of every route: a streamed request counts like any other."""
    from api.app import create_app

    service_settings.rate_limit_requests = 2
    service_settings.rate_limit_window_seconds = 60.0
    with TestClient(create_app(service_settings, publisher)) as client:
        assert _chat(client, tenant).status_code == 503  # counted, though the engine is down
        assert _chat(client, tenant, stream=True).status_code == 503
        limited = _chat(client, tenant)
        assert limited.status_code == 429, limited.text
        error = limited.json()["error"]
        assert (error["code"], error["type"]) == ("rate_limit_exceeded", "rate_limit_error")
        assert 1 <= int(limited.headers["Retry-After"]) <= 60
        assert _chat(client, other_tenant).status_code == 503  # another key, its own allowance
