"""The inference engine on the tiny random LLaMA: batched decoding gives exactly the answers
transformers' own generate gives, adapters switch per request (LRU included), and stop
sequences, token limits, seeds and bad requests behave as documented."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel

from bds_core.eval import generate_answers
from bds_core.models import LoraSettings, apply_lora, load_model
from bds_core.serving import (
    AdapterError,
    Completion,
    EngineRequestError,
    InferenceEngine,
    ModelNotServedError,
    SamplingParams,
)

TINY = "tiny-random-llama"
PROMPTS = ["Hi", "What is the capital of France?", "Count: one two three four five six"]
GREEDY = SamplingParams(max_tokens=12, temperature=0)


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def engine() -> Iterator[InferenceEngine]:
    served = InferenceEngine([TINY], device="cpu", max_loaded_adapters=1, max_batch_size=8)
    yield served
    served.close()


def _make_adapter(folder: Path, seed: int) -> Path:
    """A LoRA adapter of the tiny model with random (non-zero) weights, saved as the trainer
    saves one."""
    loaded = load_model(TINY, device="cpu")
    peft_model = apply_lora(loaded.model, LoraSettings(r=4, alpha=8))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator))
    peft_model.save_pretrained(str(folder))
    (folder / "bds_adapter.json").write_text(json.dumps({"base_model": TINY, "method": "sft"}))
    return folder


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {name: _make_adapter(root / name, seed) for seed, name in enumerate(("a", "b"))}


def _reference(prompts: list[str], adapter: Path | None = None) -> list[str]:
    loaded = load_model(TINY, device="cpu", padding_side="left")
    model: Any = loaded.model
    if adapter is not None:
        model = PeftModel.from_pretrained(loaded.model, str(adapter))
    return generate_answers(model, loaded.tokenizer, prompts, max_new_tokens=12, batch_size=1)


def _burst(engine: InferenceEngine, requests: list[tuple[str, str]]) -> list[Completion]:
    """Submit every request while the engine is paused, so they are batched together."""
    results: list[Any] = [None] * len(requests)
    finished = threading.Semaphore(0)

    def collect(index: int) -> Any:
        def on_event(event: Any) -> None:
            if event[0] != "delta":
                results[index] = event[1]
                finished.release()

        return on_event

    with engine.paused():
        for index, (model, prompt) in enumerate(requests):
            engine.submit(model, _user(prompt), GREEDY, collect(index))
    for _ in requests:
        finished.acquire()
    for result in results:
        if isinstance(result, Exception):
            raise result
    return results


def test_batched_greedy_answers_equal_transformers_generate(engine: InferenceEngine) -> None:
    before = engine.batches_run
    completions = _burst(engine, [(TINY, prompt) for prompt in PROMPTS])
    assert engine.batches_run == before + 1 and engine.largest_batch >= len(PROMPTS)
    assert [completion.text.strip() for completion in completions] == _reference(PROMPTS)
    for completion in completions:
        assert completion.prompt_tokens > 0 and 0 < completion.completion_tokens <= 12


def test_adapters_switch_per_request_through_a_one_slot_lru(
    engine: InferenceEngine, adapters: dict[str, Path]
) -> None:
    for name, folder in adapters.items():
        assert engine.register_adapter(f"ft:{name}", folder)
    assert not engine.register_adapter("ft:a", adapters["a"])  # taken
    expected = {
        TINY: _reference(PROMPTS[:2]),
        "ft:a": _reference(PROMPTS[:2], adapters["a"]),
        "ft:b": _reference(PROMPTS[:2], adapters["b"]),
    }
    assert expected["ft:a"] != expected[TINY] != expected["ft:b"] != expected["ft:a"]
    # Interleaved: each request loads (or evicts) what it needs; the base stays untouched.
    order = ["ft:a", TINY, "ft:b", "ft:a", TINY, "ft:b"]
    completions = _burst(engine, [(model, prompt) for model in order for prompt in PROMPTS[:2]])
    answers = [completion.text.strip() for completion in completions]
    for index, model in enumerate(order):
        assert answers[2 * index : 2 * index + 2] == expected[model], model
    assert engine.unregister_adapter("ft:b") and not engine.unregister_adapter("ft:b")
    with pytest.raises(ModelNotServedError):
        engine.generate("ft:b", _user("Hi"), GREEDY)


def test_streamed_pieces_add_up_and_stop_sequences_and_limits_end_answers(
    engine: InferenceEngine,
) -> None:
    full = engine.generate(TINY, _user(PROMPTS[1]), SamplingParams(max_tokens=12, temperature=0))
    assert full.finish_reason in ("stop", "length")
    pieces: list[str] = []
    done = threading.Event()

    def on_event(event: Any) -> None:
        if event[0] == "delta":
            pieces.append(event[1])
        else:
            done.set()

    engine.submit(TINY, _user(PROMPTS[1]), SamplingParams(max_tokens=12, temperature=0), on_event)
    done.wait()
    assert "".join(pieces) == full.text

    short = engine.generate(TINY, _user(PROMPTS[1]), SamplingParams(max_tokens=3, temperature=0))
    assert (short.finish_reason, short.completion_tokens) == ("length", 3)
    assert full.text.startswith(short.text)

    stop = full.text[4:6]
    assert stop.strip(), full.text
    stopped = engine.generate(
        TINY, _user(PROMPTS[1]), SamplingParams(max_tokens=12, temperature=0, stop=(stop,))
    )
    assert stopped.finish_reason == "stop"
    assert stopped.text == full.text[: full.text.find(stop)]


def test_sampling_is_reproducible_with_a_seed(engine: InferenceEngine) -> None:
    params = SamplingParams(max_tokens=10, temperature=1.0, top_p=0.9, seed=7)
    first = engine.generate(TINY, _user("Hi"), params)
    assert engine.generate(TINY, _user("Hi"), params) == first
    others = {
        engine.generate(TINY, _user("Hi"), SamplingParams(max_tokens=10, seed=seed)).text
        for seed in range(4)
    }
    assert len(others) > 1


def test_bad_requests_and_adapters_are_refused_clearly(
    engine: InferenceEngine, tmp_path: Path
) -> None:
    with pytest.raises(ModelNotServedError, match="gpt-9"):
        engine.generate("gpt-9", _user("Hi"), GREEDY)
    with pytest.raises(EngineRequestError, match="temperature"):
        SamplingParams(temperature=3)
    with pytest.raises(EngineRequestError, match="context is 4096 tokens") as too_long:
        engine.generate(TINY, _user("x" * 5000), GREEDY)
    assert too_long.value.code == "context_length_exceeded"
    with pytest.raises(AdapterError, match="does not exist"):
        engine.register_adapter("ft:none", tmp_path / "missing")
    with pytest.raises(AdapterError, match="not a PEFT adapter folder"):
        engine.register_adapter("ft:empty", tmp_path)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "adapter_config.json").write_text(
        json.dumps({"base_model_name_or_path": "llama-70b"})
    )
    with pytest.raises(
        AdapterError, match="trained on 'llama-70b', which this engine does not serve"
    ):
        engine.register_adapter("ft:foreign", foreign)


def test_a_caller_whose_callback_fails_does_not_stop_the_batch_or_the_engine(
    engine: InferenceEngine,
) -> None:
    def broken(_event: Any) -> None:
        raise RuntimeError("the client's event loop is closed")

    results: list[Any] = []
    finished = threading.Event()

    def healthy(event: Any) -> None:
        if event[0] != "delta":
            results.append(event[1])
            finished.set()

    with engine.paused():
        broken_handle = engine.submit(TINY, _user(PROMPTS[0]), GREEDY, broken)
        engine.submit(TINY, _user(PROMPTS[1]), GREEDY, healthy)
    finished.wait()
    assert broken_handle.cancelled
    (completion,) = results
    assert (
        isinstance(completion, Completion)
        and completion.text.strip() == _reference(PROMPTS[1:2])[0]
    )
    assert engine.generate(TINY, _user("Hi"), GREEDY).completion_tokens > 0
