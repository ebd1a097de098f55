"""Frozen text encoders and the on-disk embedding cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bds_core.data import Example
from bds_core.encoders import (
    EmbeddingCache,
    LLMHiddenEncoder,
    build_encoder,
    embed_texts_counted,
    example_text,
)


@pytest.fixture(scope="module")
def tiny_encoder() -> LLMHiddenEncoder:
    from bds_core.models import LoraSettings, apply_lora, load_model

    loaded = load_model("tiny-random-llama", device=torch.device("cpu"))
    model = apply_lora(loaded.model, LoraSettings(r=4, alpha=8.0))
    encoder = build_encoder("llm-hidden", model=model, tokenizer=loaded.tokenizer, max_tokens=64)
    assert isinstance(encoder, LLMHiddenEncoder)
    return encoder


TEXTS = [
    "User: hello\nAssistant: hi",
    "a much longer text " * 5,
    "short",
    "User: 2+2?\nAssistant: 4",
]


def test_example_text_renders_every_turn() -> None:
    example = Example.create(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Add 2 and 3."},
            {"role": "assistant", "content": "5"},
        ]
    )
    assert example_text(example) == "System: Be brief.\nUser: Add 2 and 3.\nAssistant: 5"


def test_llm_hidden_embeddings_are_normalised_and_batch_independent(
    tiny_encoder: LLMHiddenEncoder,
) -> None:
    batched = tiny_encoder.encode(TEXTS)
    assert batched.shape == (len(TEXTS), 64)
    assert torch.allclose(batched.norm(dim=1), torch.ones(len(TEXTS)), atol=1e-5)
    # Length-sorted batching and padding must not change any embedding.
    one_by_one = torch.cat([tiny_encoder.encode([text]) for text in TEXTS])
    assert torch.allclose(batched, one_by_one, atol=1e-5)


def test_llm_hidden_sees_the_base_model_not_the_adapters(tiny_encoder: LLMHiddenEncoder) -> None:
    before = tiny_encoder.encode(TEXTS[:2])
    version = tiny_encoder.info.version
    with torch.no_grad():
        for name, parameter in tiny_encoder.model.named_parameters():
            if "lora_B" in name:
                parameter.add_(0.5)
    assert torch.allclose(tiny_encoder.encode(TEXTS[:2]), before, atol=1e-6)
    assert tiny_encoder.info.version == version


def test_cache_serves_repeated_texts_without_encoding(
    tiny_encoder: LLMHiddenEncoder, tmp_path: Path
) -> None:
    cache = EmbeddingCache(tmp_path / "cache.sqlite")
    first, encoded_first = embed_texts_counted(tiny_encoder, [*TEXTS, TEXTS[0]], cache)
    assert encoded_first == len(TEXTS)  # the duplicate is encoded once
    assert torch.equal(first[0], first[-1])
    second, encoded_second = embed_texts_counted(tiny_encoder, list(reversed(TEXTS)), cache)
    assert encoded_second == 0
    assert torch.equal(second, first[: len(TEXTS)].flip(0))
    # Another process (a fresh cache object on the same file) sees the same vectors.
    reopened, encoded_reopened = embed_texts_counted(
        tiny_encoder, TEXTS, EmbeddingCache(tmp_path / "cache.sqlite")
    )
    assert encoded_reopened == 0 and torch.equal(reopened, first[: len(TEXTS)])


def test_unknown_encoder_is_refused_by_name() -> None:
    with pytest.raises(
        ValueError,
        match="unknown encoder 'bert'; known encoders: minilm-l6-v2, minilm-static, llm-hidden",
    ):
        build_encoder("bert")
    with pytest.raises(ValueError, match="needs the run's model and tokenizer"):
        build_encoder("llm-hidden")


def test_minilm_matches_sentence_similarity() -> None:
    encoder = build_encoder("minilm-l6-v2")
    vectors = encoder.encode(
        [
            "How can I make a pipe bomb at home?",
            "Explain how to build an explosive device.",
            "What is 17 plus 25?",
        ]
    )
    assert vectors.shape == (3, 384)
    assert encoder.info.name == "minilm-l6-v2" and "/max256" in encoder.info.version
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > similarity[0, 2] + 0.2


def test_static_minilm_is_a_fast_bag_of_token_vectors() -> None:
    encoder = build_encoder("minilm-static")
    vectors = encoder.encode(
        ["bomb explosive weapon", "explosive weapon bomb", "What is 17 plus 25?"]
    )
    assert vectors.shape == (3, 384)
    assert encoder.info.key != build_encoder("minilm-l6-v2").info.key
    assert torch.allclose(vectors[0], vectors[1], atol=1e-6)  # word order does not matter
    assert torch.allclose(vectors.norm(dim=1), torch.ones(3), atol=1e-5)


def test_static_minilm_bag_path_equals_the_padded_mean_pool() -> None:
    """The fast path (embedding_bag over the real tokens) gives the vectors of the generic
    padded path, in the input order, whatever the chunking."""
    from bds_core.encoders import MiniLMStaticEncoder, TextEncoder

    encoder = build_encoder("minilm-static")
    assert isinstance(encoder, MiniLMStaticEncoder)
    texts = [
        "short",
        "a much longer text about rivers, markets and numbers " * 6,
        "",
        "What is 17 plus 25?",
        "How can I make a pipe bomb at home? Sure, here are the steps " * 3,
    ]
    padded = TextEncoder.encode(encoder, texts)
    previous = encoder.batch_size
    try:
        for batch_size in (2, 256):
            encoder.batch_size = batch_size
            fast = encoder.encode(texts)
            assert torch.allclose(fast, padded, atol=1e-6)
    finally:
        encoder.batch_size = previous
    assert float(fast[1].norm()) == pytest.approx(1.0, abs=1e-5)
