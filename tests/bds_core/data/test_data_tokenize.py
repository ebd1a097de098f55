"""encode_example: chat-template rendering, answer-only labels, truncation, collate."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from bds_core.data import (
    IGNORE_INDEX,
    EncodedExample,
    Example,
    Message,
    collate,
    encode_example,
    render_chat,
)

QUESTION = "What is two plus two? Please answer with one sentence."
ANSWER = "The answer is 4."


def two_turn() -> Example:
    return Example.create(
        [
            Message("system", "You are a helpful assistant."),
            Message("user", QUESTION),
            Message("assistant", ANSWER),
        ],
        line=7,
    )


def labelled_runs(encoded: EncodedExample) -> list[list[int]]:
    """Maximal runs of consecutive labelled positions, as token ids."""
    runs: list[list[int]] = []
    previous_labelled = False
    for label in encoded.labels:
        labelled = label != IGNORE_INDEX
        if labelled and not previous_labelled:
            runs.append([])
        if labelled:
            runs[-1].append(label)
        previous_labelled = labelled
    return runs


def test_labels_are_the_answer_and_end_of_turn_only(chat_tokenizer: Any) -> None:
    example = two_turn()
    encoded = encode_example(example, chat_tokenizer, max_length=512)
    text = render_chat(chat_tokenizer, example.messages, add_generation_prompt=False)
    assert encoded.input_ids == chat_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert not encoded.truncated
    [answer_ids] = labelled_runs(encoded)
    assert chat_tokenizer.decode(answer_ids) == ANSWER + "<|im_end|>"
    assert encoded.n_answer_tokens == len(answer_ids)
    for token_id, label in zip(encoded.input_ids, encoded.labels, strict=True):
        assert label in (IGNORE_INDEX, token_id)
    # Everything before the answer is masked: it decodes to the prompt plus the turn header.
    first = encoded.labels.index(answer_ids[0])
    prompt_text = render_chat(chat_tokenizer, example.prompt_messages, add_generation_prompt=True)
    assert chat_tokenizer.decode(encoded.input_ids[:first]) == prompt_text
    # ChatML's newline after <|im_end|> is not an answer token.
    assert encoded.labels[-1] == IGNORE_INDEX
    assert chat_tokenizer.decode(encoded.input_ids[-1:]) == "\n"


def test_every_assistant_turn_is_labelled_and_user_turns_are_not(chat_tokenizer: Any) -> None:
    example = Example.create(
        [
            Message("user", "Say hello."),
            Message("assistant", "Hello there."),
            Message("user", "Now say it again."),
            Message("assistant", "Hello there, again."),
        ]
    )
    encoded = encode_example(example, chat_tokenizer, max_length=512)
    decoded = [chat_tokenizer.decode(run) for run in labelled_runs(encoded)]
    assert decoded == ["Hello there.<|im_end|>", "Hello there, again.<|im_end|>"]


def test_formats_with_the_same_conversation_encode_identically(chat_tokenizer: Any) -> None:
    from bds_core.data import validate_lines

    lines = [
        b'{"messages": [{"role": "user", "content": "Sort: pear fig"}, '
        b'{"role": "assistant", "content": "fig pear"}]}',
    ]
    [from_chat], _ = validate_lines(lines)
    [from_prompt], _ = validate_lines([b'{"prompt": "Sort: pear fig", "completion": "fig pear"}'])
    assert encode_example(from_chat, chat_tokenizer, 256) == encode_example(
        from_prompt, chat_tokenizer, 256
    )


def test_tokenizer_without_template_uses_role_colon_content(plain_tokenizer: Any) -> None:
    example = two_turn()
    text = render_chat(plain_tokenizer, example.messages, add_generation_prompt=False)
    assert text == (
        f"system: You are a helpful assistant.\nuser: {QUESTION}\nassistant: {ANSWER}<|im_end|>\n"
    )
    prompt = render_chat(plain_tokenizer, example.prompt_messages, add_generation_prompt=True)
    assert prompt.endswith(f"user: {QUESTION}\nassistant: ")
    encoded = encode_example(example, plain_tokenizer, max_length=512)
    [answer_ids] = labelled_runs(encoded)
    assert plain_tokenizer.decode(answer_ids).strip() == ANSWER + "<|im_end|>"


def test_truncation_drops_the_prompt_start_and_keeps_the_answer(chat_tokenizer: Any) -> None:
    example = two_turn()
    full = encode_example(example, chat_tokenizer, max_length=512)
    max_length = full.n_answer_tokens + 5
    encoded = encode_example(example, chat_tokenizer, max_length=max_length)
    assert encoded.truncated
    assert len(encoded.input_ids) == max_length
    assert encoded.input_ids == full.input_ids[-max_length:]
    assert encoded.labels == full.labels[-max_length:]
    assert encoded.n_answer_tokens == full.n_answer_tokens
    assert encoded.labels[:4] == [IGNORE_INDEX] * 4


def test_truncation_cuts_the_answer_end_when_the_answer_alone_is_too_long(
    chat_tokenizer: Any,
) -> None:
    example = two_turn()
    full = encode_example(example, chat_tokenizer, max_length=512)
    [answer_ids] = labelled_runs(full)
    encoded = encode_example(example, chat_tokenizer, max_length=3)
    assert encoded.truncated
    assert encoded.input_ids == answer_ids[:3]
    assert encoded.labels == answer_ids[:3]
    assert encoded.n_answer_tokens == 3


def test_exact_fit_is_not_truncated(chat_tokenizer: Any) -> None:
    full = encode_example(two_turn(), chat_tokenizer, max_length=512)
    again = encode_example(two_turn(), chat_tokenizer, max_length=len(full.input_ids))
    assert again == full


def test_no_answer_tokens_raises_naming_the_example(chat_tokenizer: Any) -> None:
    tokenizer = copy.deepcopy(chat_tokenizer)
    # A template with no end-of-turn marker: an empty answer then leaves nothing to train on.
    tokenizer.chat_template = (
        "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
    )
    example = Example(
        id="ex_emptyanswer", messages=(Message("user", "Q"), Message("assistant", "")), line=3
    )
    with pytest.raises(ValueError, match=r"ex_emptyanswer.*no answer tokens"):
        encode_example(example, tokenizer, max_length=64)


def test_template_that_drops_the_answer_is_a_clear_error(chat_tokenizer: Any) -> None:
    tokenizer = copy.deepcopy(chat_tokenizer)
    tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] != 'assistant' %}"
        "{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endif %}{% endfor %}"
    )
    example = two_turn()
    with pytest.raises(ValueError, match=rf"{example.id}.*cannot locate the assistant answer"):
        encode_example(example, tokenizer, max_length=64)


def test_offset_fallback_when_a_template_renders_prefixes_differently(
    chat_tokenizer: Any,
) -> None:
    tokenizer = copy.deepcopy(chat_tokenizer)
    # Marks the last non-assistant message, so the prompt rendered alone is not a prefix of
    # the full conversation and the prefix method must give way to character offsets.
    tokenizer.chat_template = (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] }}"
        "{% if loop.last and m['role'] != 'assistant' %}{{ ' (last)' }}{% endif %}"
        "{{ '<|im_end|>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    example = two_turn()
    with_prompt = render_chat(tokenizer, example.prompt_messages, add_generation_prompt=True)
    assert "(last)" in with_prompt
    encoded = encode_example(example, tokenizer, max_length=512)
    [answer_ids] = labelled_runs(encoded)
    assert tokenizer.decode(answer_ids) == ANSWER + "<|im_end|>"
    assert encode_example(example, chat_tokenizer, 512) == encoded


def test_max_length_must_be_positive(chat_tokenizer: Any) -> None:
    with pytest.raises(ValueError, match="max_length"):
        encode_example(two_turn(), chat_tokenizer, max_length=0)


def test_collate_right_pads_and_masks_padding() -> None:
    short = EncodedExample(input_ids=[5, 6], labels=[-100, 6], n_answer_tokens=1, truncated=False)
    long = EncodedExample(
        input_ids=[1, 2, 3, 4], labels=[-100, -100, 3, 4], n_answer_tokens=2, truncated=False
    )
    batch = collate([short, long], pad_token_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 0, 0], [1, 2, 3, 4]]
    assert batch["attention_mask"].tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    assert batch["labels"].tolist() == [[-100, 6, -100, -100], [-100, -100, 3, 4]]
    assert all(tensor.dtype == torch.long for tensor in batch.values())
    with pytest.raises(ValueError, match="at least one"):
        collate([], pad_token_id=0)
