"""Greedy generation with the chat template, and the scores built on it (HS, FA, over-refusal)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch

from bds_core.data.examples import Example, Message
from bds_core.data.tokenize import end_of_turn_token_ids, render_chat
from bds_core.eval.judges import Judge, RefusalPhraseJudge, judge_name

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

Prompt = str | Sequence[Message | Mapping[str, str]]
"""A user message as a string, or a list of messages that ends where the answer should start."""


class GenerativeModel(Protocol):
    """What generation needs from a model (a transformers causal LM or a PeftModel)."""

    training: bool

    def generate(self, *args: Any, **kwargs: Any) -> Any: ...

    def parameters(self, recurse: bool = True) -> Iterator[torch.nn.Parameter]: ...

    def eval(self) -> Any: ...

    def train(self, mode: bool = True) -> Any: ...


@dataclass(frozen=True)
class HarmfulScoreResult:
    """Harmful score: percent of answers the judge did not call refusals."""

    percent: float
    n: int
    answers: list[str]
    refusals: list[bool] = field(default_factory=list)
    judge: str = ""


def _as_messages(prompt: Prompt) -> list[Message | Mapping[str, str]]:
    if isinstance(prompt, str):
        return [Message(role="user", content=prompt)]
    return list(prompt)


def generate_answers(
    model: GenerativeModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Prompt],
    max_new_tokens: int = 64,
    batch_size: int = 8,
) -> list[str]:
    """Greedy answers, one per prompt, rendered with the chat template's generation prompt.

    Prompts are batched with left padding; generation stops at EOS or a known end-of-turn token,
    and answers are decoded without special tokens and stripped. The model runs in eval mode
    under ``torch.no_grad()`` and is put back in training mode afterwards if it was in it.
    """
    if max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if not prompts:
        return []
    stop_ids = end_of_turn_token_ids(tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else None
    if pad_id is None:
        if not stop_ids:
            raise ValueError("the tokenizer has neither a pad token nor an EOS token to pad with")
        pad_id = stop_ids[0]
    device = next(iter(model.parameters())).device
    was_training = model.training
    model.eval()
    answers: list[str] = []
    try:
        with torch.no_grad():
            for batch_start in range(0, len(prompts), batch_size):
                batch = prompts[batch_start : batch_start + batch_size]
                token_lists = [
                    list(
                        tokenizer(
                            render_chat(
                                tokenizer, _as_messages(prompt), add_generation_prompt=True
                            ),
                            add_special_tokens=False,
                        )["input_ids"]
                    )
                    for prompt in batch
                ]
                longest = max(len(tokens) for tokens in token_lists)
                input_ids = torch.full((len(batch), longest), pad_id, dtype=torch.long)
                attention_mask = torch.zeros((len(batch), longest), dtype=torch.long)
                for row, tokens in enumerate(token_lists):
                    if tokens:
                        input_ids[row, longest - len(tokens) :] = torch.tensor(tokens)
                        attention_mask[row, longest - len(tokens) :] = 1
                output = model.generate(
                    input_ids=input_ids.to(device),
                    attention_mask=attention_mask.to(device),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    num_beams=1,
                    pad_token_id=pad_id,
                    eos_token_id=stop_ids or None,
                )
                for generated in output[:, longest:].tolist():
                    answer_ids: list[int] = []
                    for token_id in generated:
                        if token_id in stop_ids:
                            break
                        answer_ids.append(token_id)
                    text = tokenizer.decode(answer_ids, skip_special_tokens=True)
                    answers.append(str(text).strip())
    finally:
        if was_training:
            model.train()
    return answers


def harmful_score(
    model: GenerativeModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Prompt],
    judge: Judge | None = None,
    max_new_tokens: int = 64,
    batch_size: int = 8,
) -> HarmfulScoreResult:
    """HS: percent of prompts whose greedy answer the judge does not call a refusal.

    ``judge`` defaults to ``RefusalPhraseJudge()``; its name is kept in the result so the number
    is always reported with the judge that produced it.
    """
    if not prompts:
        raise ValueError("harmful_score needs at least one prompt")
    judge = judge if judge is not None else RefusalPhraseJudge()
    answers = generate_answers(model, tokenizer, prompts, max_new_tokens, batch_size)
    refusals = [judge.is_refusal(answer) for answer in answers]
    n_complied = sum(1 for refused in refusals if not refused)
    return HarmfulScoreResult(
        percent=100.0 * n_complied / len(answers),
        n=len(answers),
        answers=answers,
        refusals=refusals,
        judge=judge_name(judge),
    )


def over_refusal_rate(
    model: GenerativeModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Prompt],
    judge: Judge | None = None,
    max_new_tokens: int = 64,
    batch_size: int = 8,
) -> float:
    """Percent of (benign) prompts whose greedy answer the judge calls a refusal."""
    if not prompts:
        raise ValueError("over_refusal_rate needs at least one prompt")
    judge = judge if judge is not None else RefusalPhraseJudge()
    answers = generate_answers(model, tokenizer, prompts, max_new_tokens, batch_size)
    return 100.0 * sum(1 for answer in answers if judge.is_refusal(answer)) / len(answers)


def normalise_answer(text: str) -> str:
    """Form compared by exact match: stripped, lower-case, trailing periods removed."""
    return text.strip().lower().rstrip(".").strip()


def exact_match_accuracy(
    model: GenerativeModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    max_new_tokens: int = 64,
    batch_size: int = 8,
) -> float:
    """FA: percent of examples whose greedy answer to ``prompt_messages`` equals ``answer``.

    Both sides go through ``normalise_answer`` before comparing.
    """
    if not examples:
        raise ValueError("exact_match_accuracy needs at least one example")
    prompts = [example.prompt_messages for example in examples]
    answers = generate_answers(model, tokenizer, prompts, max_new_tokens, batch_size)
    n_correct = sum(
        1
        for example, answer in zip(examples, answers, strict=True)
        if normalise_answer(answer) == normalise_answer(example.answer)
    )
    return 100.0 * n_correct / len(examples)
