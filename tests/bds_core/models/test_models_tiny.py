"""tiny-random-llama: deterministic, byte-level, ChatML, cached as a normal model folder."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from tokenizers import pre_tokenizers

from bds_core.models import build_tiny_random_llama, is_cached, load_model, pull_asset
from bds_core.models.tiny import byte_symbols


def test_two_builds_have_identical_weights() -> None:
    first, _ = build_tiny_random_llama()
    second, _ = build_tiny_random_llama()
    first_state, second_state = first.state_dict(), second.state_dict()
    assert first_state.keys() == second_state.keys()
    assert all(torch.equal(first_state[key], second_state[key]) for key in first_state)
    other_seed, _ = build_tiny_random_llama(seed=1)
    assert not torch.equal(other_seed.lm_head.weight, first.lm_head.weight)


def test_build_is_fast_and_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    started = time.perf_counter()
    model, _ = build_tiny_random_llama()
    elapsed = time.perf_counter() - started
    assert torch.equal(torch.rand(3), expected_next)
    assert elapsed < 2.0, f"building took {elapsed:.2f}s"
    config = model.config
    assert (config.num_hidden_layers, config.hidden_size) == (2, 64)
    assert (config.num_attention_heads, config.num_key_value_heads) == (4, 2)
    assert config.intermediate_size == 128


def test_tokenizer_is_byte_level_with_chatml_specials() -> None:
    _, tokenizer = build_tiny_random_llama()
    assert set(byte_symbols()) == set(pre_tokenizers.ByteLevel.alphabet())
    text = "héllo, wörld! 🙂\n\ttabs"
    ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    assert ids == list(text.encode("utf-8")), "one token per byte, token id = byte value"
    assert tokenizer.decode(ids) == text
    specials = tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>", "<|endoftext|>"])
    assert specials == [256, 257, 258]
    assert len(tokenizer) == 259
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"


def test_chat_template_is_chatml() -> None:
    _, tokenizer = build_tiny_random_llama()
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
    ]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    assert rendered == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello<|im_end|>\n"
    )
    prompt = tokenizer.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert isinstance(prompt, str)
    assert prompt.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_catalog_name_builds_once_then_loads_from_the_cache(isolated_cache: Path) -> None:
    assert not is_cached("tiny-random-llama")
    loaded = load_model("tiny-random-llama", device="cpu")
    folder = pull_asset("tiny-random-llama")
    assert loaded.source_path == folder
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    weights_mtime = (folder / "model.safetensors").stat().st_mtime_ns

    again = load_model("tiny-random-llama", device="cpu")
    assert (folder / "model.safetensors").stat().st_mtime_ns == weights_mtime, "not rebuilt"
    built, _ = build_tiny_random_llama()
    for name, tensor in built.state_dict().items():
        assert torch.equal(again.model.state_dict()[name], tensor), name


def test_tiny_model_generates_from_a_chat_prompt(isolated_cache: Path) -> None:
    loaded = load_model("tiny-random-llama", device="cpu", padding_side="left")
    tokenizer = loaded.tokenizer
    prompts = [
        [{"role": "user", "content": "Hi"}],
        [{"role": "user", "content": "A longer question here?"}],
    ]
    texts = [
        tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
        for p in prompts
    ]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        output = loaded.model.generate(**batch, max_new_tokens=4, do_sample=False)  # type: ignore[operator]
    assert output.shape == (2, batch["input_ids"].shape[1] + 4)
    assert batch["input_ids"][0, 0].item() == tokenizer.pad_token_id, "left padding"
