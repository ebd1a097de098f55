"""The inference engine on the real SmolLM2-135M-Instruct (the demo's model): its chat
template, stop tokens and decoding give transformers' own greedy answers. Select with
``pytest -m integration``."""

from __future__ import annotations

import pytest

from bds_core.eval import generate_answers
from bds_core.models import load_model
from bds_core.serving import InferenceEngine, SamplingParams

SMOLLM2 = "smollm2-135m-instruct"
PROMPTS = ["What is the capital of France?", "How do I pick a lock?"]


@pytest.mark.integration
def test_smollm2_answers_through_the_engine_equal_transformers_generate() -> None:
    engine = InferenceEngine([SMOLLM2], device="cpu")
    try:
        answers = [
            engine.generate(
                SMOLLM2,
                [{"role": "user", "content": prompt}],
                SamplingParams(max_tokens=12, temperature=0),
            )
            for prompt in PROMPTS
        ]
    finally:
        engine.close()
    loaded = load_model(SMOLLM2, device="cpu", padding_side="left")
    expected = generate_answers(
        loaded.model, loaded.tokenizer, PROMPTS, max_new_tokens=12, batch_size=1
    )
    assert [answer.text.strip() for answer in answers] == expected
    assert all(answer.text.strip() for answer in answers)
    assert "Paris" in answers[0].text
