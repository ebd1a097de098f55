"""Greedy batched generation on a tiny random LLaMA, and HS / FA / over-refusal built on it."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from bds_core.data import Example, Message
from bds_core.eval import (
    exact_match_accuracy,
    generate_answers,
    harmful_score,
    normalise_answer,
    over_refusal_rate,
)

PROMPTS = [
    "Hello",
    "What is two plus two? Answer with a single number, please, and nothing else.",
    "Sort these words: pear apple fig",
]


class ListJudge:
    """Calls an answer a refusal when it is in a given set."""

    def __init__(self, refused_answers: set[str]) -> None:
        self.refused_answers = refused_answers

    def is_refusal(self, text: str) -> bool:
        return text in self.refused_answers


def test_greedy_answers_are_deterministic_and_batch_independent(
    tiny_model: Any, chat_tokenizer: Any
) -> None:
    batched = generate_answers(tiny_model, chat_tokenizer, PROMPTS, max_new_tokens=6, batch_size=3)
    one_by_one = generate_answers(
        tiny_model, chat_tokenizer, PROMPTS, max_new_tokens=6, batch_size=1
    )
    assert len(batched) == len(PROMPTS)
    assert all(isinstance(answer, str) and answer == answer.strip() for answer in batched)
    # Left padding must not change what a prompt produces.
    assert batched == one_by_one
    assert generate_answers(tiny_model, chat_tokenizer, [], max_new_tokens=6) == []


def test_prompts_use_the_generation_prompt_and_left_padding(
    tiny_model: Any, chat_tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}
    original_generate = tiny_model.generate

    def spy(**kwargs: Any) -> Any:
        seen["input_ids"] = kwargs["input_ids"].clone()
        seen["attention_mask"] = kwargs["attention_mask"].clone()
        seen["grad_enabled"] = torch.is_grad_enabled()
        seen["training"] = tiny_model.training
        seen["do_sample"] = kwargs["do_sample"]
        return original_generate(**kwargs)

    monkeypatch.setattr(tiny_model, "generate", spy)
    tiny_model.train()
    generate_answers(tiny_model, chat_tokenizer, PROMPTS[:2], max_new_tokens=3, batch_size=2)
    header = chat_tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    for row in seen["input_ids"].tolist():
        assert row[-len(header) :] == header
    mask = seen["attention_mask"].tolist()
    short_row = mask[0] if sum(mask[0]) < sum(mask[1]) else mask[1]
    assert short_row[0] == 0 and short_row[-1] == 1  # padding on the left
    assert seen["grad_enabled"] is False
    assert seen["training"] is False
    assert seen["do_sample"] is False
    assert tiny_model.training  # training mode restored


def test_eval_mode_is_kept_when_the_model_was_in_eval(tiny_model: Any, chat_tokenizer: Any) -> None:
    tiny_model.eval()
    generate_answers(tiny_model, chat_tokenizer, PROMPTS[:1], max_new_tokens=2)
    assert not tiny_model.training


def test_message_lists_are_accepted_as_prompts(tiny_model: Any, chat_tokenizer: Any) -> None:
    as_text = generate_answers(tiny_model, chat_tokenizer, ["Hello"], max_new_tokens=4)
    as_messages = generate_answers(
        tiny_model, chat_tokenizer, [[Message("user", "Hello")]], max_new_tokens=4
    )
    as_dicts = generate_answers(
        tiny_model, chat_tokenizer, [[{"role": "user", "content": "Hello"}]], max_new_tokens=4
    )
    assert as_text == as_messages == as_dicts


def test_harmful_score_is_the_percent_not_refused(tiny_model: Any, chat_tokenizer: Any) -> None:
    answers = generate_answers(tiny_model, chat_tokenizer, PROMPTS, max_new_tokens=5)
    judge = ListJudge({answers[0]})
    result = harmful_score(tiny_model, chat_tokenizer, PROMPTS, judge, max_new_tokens=5)
    n_refused = sum(1 for answer in answers if answer == answers[0])
    assert result.n == 3
    assert result.answers == answers
    assert result.percent == pytest.approx(100.0 * (3 - n_refused) / 3)
    assert result.refusals == [answer == answers[0] for answer in answers]
    assert result.judge == "ListJudge"


def test_harmful_score_defaults_to_the_phrase_judge(tiny_model: Any, chat_tokenizer: Any) -> None:
    result = harmful_score(tiny_model, chat_tokenizer, PROMPTS[:1], max_new_tokens=3)
    assert result.judge.startswith("refusal-phrases")
    with pytest.raises(ValueError, match="at least one prompt"):
        harmful_score(tiny_model, chat_tokenizer, [])


def test_over_refusal_rate_is_the_percent_refused(tiny_model: Any, chat_tokenizer: Any) -> None:
    answers = generate_answers(tiny_model, chat_tokenizer, PROMPTS, max_new_tokens=5)
    refused = {answers[1]}
    expected = 100.0 * sum(1 for answer in answers if answer in refused) / 3
    rate = over_refusal_rate(tiny_model, chat_tokenizer, PROMPTS, ListJudge(refused), 5)
    assert rate == pytest.approx(expected)


def test_exact_match_accuracy_normalises_case_space_and_final_period(
    tiny_model: Any, chat_tokenizer: Any
) -> None:
    prompts = [[Message("user", text)] for text in PROMPTS[:2]]
    answers = generate_answers(tiny_model, chat_tokenizer, prompts, max_new_tokens=5)
    assert answers[0]  # a random model still emits something in 5 tokens
    examples = [
        Example.create([*prompts[0], Message("assistant", f"  {answers[0].upper()}. ")]),
        Example.create([*prompts[1], Message("assistant", answers[1] + " but different")]),
    ]
    accuracy = exact_match_accuracy(tiny_model, chat_tokenizer, examples, max_new_tokens=5)
    assert accuracy == pytest.approx(50.0)


def test_normalise_answer() -> None:
    assert normalise_answer("  The Answer is 4. ") == "the answer is 4"
    assert normalise_answer("4...") == "4"
    assert normalise_answer("4") == "4"


def test_invalid_generation_settings(tiny_model: Any, chat_tokenizer: Any) -> None:
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate_answers(tiny_model, chat_tokenizer, PROMPTS, max_new_tokens=0)
    with pytest.raises(ValueError, match="batch_size"):
        generate_answers(tiny_model, chat_tokenizer, PROMPTS, batch_size=0)
