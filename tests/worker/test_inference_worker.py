"""The local inference worker speaks the part of vLLM's OpenAI-compatible server the API uses:
dynamic LoRA loading and unloading, chat completions with OpenAI's chunk format, and the same
status codes (a duplicate adapter is a 400, an unknown model or adapter a 404)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient

from bds_core.models import LoraSettings, apply_lora, load_model
from bds_core.serving import InferenceEngine
from worker.inference import create_inference_app

TINY = "tiny-random-llama"


@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("adapter")
    peft_model = apply_lora(load_model(TINY, device="cpu").model, LoraSettings(r=4, alpha=8))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator))
    peft_model.save_pretrained(str(folder))
    (folder / "bds_adapter.json").write_text(json.dumps({"base_model": TINY}))
    return folder


@pytest.fixture(scope="module")
def engine_client() -> Iterator[TestClient]:
    engine = InferenceEngine([TINY], device="cpu")
    with TestClient(create_inference_app(engine, default_max_tokens=6)) as client:
        yield client
    engine.close()


def _events(text: str) -> list[Any]:
    lines = [line for line in text.split("\n\n") if line]
    assert all(line.startswith("data: ") for line in lines), text
    payloads = [line[len("data: ") :] for line in lines]
    assert payloads[-1] == "[DONE]"
    return [json.loads(payload) for payload in payloads[:-1]]


def test_lora_adapters_load_and_unload_as_with_vllm(
    engine_client: TestClient, adapter: Path, tmp_path: Path
) -> None:
    assert engine_client.get("/health").status_code == 200
    body = {"lora_name": "ft:tiny:acme::job1", "lora_path": str(adapter)}
    loaded = engine_client.post("/v1/load_lora_adapter", json=body)
    assert loaded.status_code == 200 and loaded.text.startswith("Success")
    again = engine_client.post("/v1/load_lora_adapter", json=body)
    assert again.status_code == 400 and "already been loaded" in again.json()["error"]["message"]
    missing = engine_client.post(
        "/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": str(tmp_path / "none")}
    )
    assert missing.status_code == 400 and "does not exist" in missing.json()["error"]["message"]
    models = {
        model["id"]: model["parent"] for model in engine_client.get("/v1/models").json()["data"]
    }
    assert models == {TINY: None, "ft:tiny:acme::job1": TINY}

    chat = {"model": "ft:tiny:acme::job1", "messages": [{"role": "user", "content": "Hi"}]}
    tuned = engine_client.post("/v1/chat/completions", json={**chat, "temperature": 0}).json()
    base = engine_client.post(
        "/v1/chat/completions", json={**chat, "model": TINY, "temperature": 0}
    ).json()
    assert tuned["object"] == "chat.completion" and tuned["id"].startswith("chatcmpl-")
    assert tuned["model"] == "ft:tiny:acme::job1" and tuned["usage"]["completion_tokens"] <= 6
    assert tuned["choices"][0]["message"]["content"] != base["choices"][0]["message"]["content"]

    unloaded = engine_client.post(
        "/v1/unload_lora_adapter", json={"lora_name": "ft:tiny:acme::job1"}
    )
    assert unloaded.status_code == 200
    gone = engine_client.post("/v1/unload_lora_adapter", json={"lora_name": "ft:tiny:acme::job1"})
    assert gone.status_code == 404
    unknown = engine_client.post("/v1/chat/completions", json=chat)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"


def test_streaming_uses_openai_chunks_and_a_usage_chunk_on_request(
    engine_client: TestClient,
) -> None:
    chat = {"model": TINY, "messages": [{"role": "user", "content": "Hi"}], "temperature": 0}
    whole = engine_client.post("/v1/chat/completions", json=chat).json()
    with_usage = engine_client.post(
        "/v1/chat/completions",
        json={**chat, "stream": True, "stream_options": {"include_usage": True}},
    )
    assert with_usage.headers["content-type"].startswith("text/event-stream")
    chunks = _events(with_usage.text)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    text = "".join(chunk["choices"][0]["delta"].get("content", "") for chunk in chunks[:-1])
    assert text == whole["choices"][0]["message"]["content"]
    assert chunks[-2]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]
    plain = _events(engine_client.post("/v1/chat/completions", json={**chat, "stream": True}).text)
    assert all("usage" not in chunk for chunk in plain)

    bad = engine_client.post("/v1/chat/completions", json={**chat, "temperature": 5})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "temperature"
