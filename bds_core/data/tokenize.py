"""Tokenising examples with the model's chat template, with answer-only labels.

How the answer tokens are found:

1. Render the whole conversation with ``tokenizer.apply_chat_template`` and tokenise it (the
   template writes any BOS token itself, so no special tokens are added on top).
2. For every assistant message ``i``, render the conversation before it with the generation
   prompt (``messages[:i]``, ``add_generation_prompt=True``) and the conversation through it
   (``messages[:i + 1]``). If both tokenisations are prefixes of the full one, the tokens between
   their ends are that answer: its content plus the template's end-of-turn token. Whitespace-only
   tokens the template writes after the end-of-turn token (ChatML's trailing newline) are not
   labelled.
3. Fallback, when a template renders a turn differently depending on what follows it (the prefix
   check fails) or fails to render a partial conversation: locate each message's content in the
   rendered text in order and label the tokens that overlap an assistant content, plus a special
   token right after it (the end-of-turn marker). This needs a fast tokenizer (character
   offsets); without one, or when the content cannot be found, ``encode_example`` raises a
   ValueError naming the example.

Tokenizers without a chat template use ``FALLBACK_CHAT_TEMPLATE``: one ``"role: content"`` line
per message, the EOS token after each assistant content, and ``"assistant: "`` as the
generation prompt.

Truncation policy (``max_length``): drop tokens from the start of the prompt first (everything
before the first answer token), keeping the answer; if the answer alone is still too long, cut
the end. ``truncated`` is set either way. An example left with no answer tokens raises a
ValueError naming its id.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bds_core.data.examples import Example, Message

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100
"""Label value for tokens that are not trained on (PyTorch cross-entropy's ignore_index)."""

FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] + ': ' + message['content'] }}"
    "{% if message['role'] == 'assistant' and eos_token %}{{ eos_token }}{% endif %}"
    "{{ '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
)
"""Jinja chat template used when a tokenizer has none: ``role: content`` lines."""

# End-of-turn markers of common chat templates; generation stops on any that the vocabulary has.
_KNOWN_END_OF_TURN_TOKENS = (
    "<|im_end|>",
    "<|eot_id|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
)


@dataclass(frozen=True)
class EncodedExample:
    """Token ids of one example and its labels (``IGNORE_INDEX`` except on answer tokens)."""

    input_ids: list[int]
    labels: list[int]
    n_answer_tokens: int
    truncated: bool


MessageLike = Message | Mapping[str, str]


def has_chat_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    """True when the tokenizer carries its own chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


def render_chat(
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[MessageLike],
    add_generation_prompt: bool,
) -> str:
    """Render messages to text with the tokenizer's chat template (or the fallback template)."""
    conversation = [
        message.to_dict() if isinstance(message, Message) else dict(message) for message in messages
    ]
    template = None if has_chat_template(tokenizer) else FALLBACK_CHAT_TEMPLATE
    rendered = tokenizer.apply_chat_template(
        conversation,
        chat_template=template,
        add_generation_prompt=add_generation_prompt,
        tokenize=False,
    )
    if not isinstance(rendered, str):
        raise TypeError(f"apply_chat_template(tokenize=False) returned {type(rendered).__name__}")
    return rendered


def _token_ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _special_token_ids(tokenizer: PreTrainedTokenizerBase) -> set[int]:
    special = {int(token_id) for token_id in tokenizer.all_special_ids}
    for token_id, added in getattr(tokenizer, "added_tokens_decoder", {}).items():
        if getattr(added, "special", False):
            special.add(int(token_id))
    return special


def end_of_turn_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Ids that end an assistant turn: EOS plus known end-of-turn markers in the vocabulary."""
    ids: list[int] = []
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    vocabulary = tokenizer.get_vocab()
    for token in _KNOWN_END_OF_TURN_TOKENS:
        token_id = vocabulary.get(token)
        if token_id is not None and token_id not in ids:
            ids.append(int(token_id))
    return ids


def _trim_trailing_whitespace(
    tokenizer: PreTrainedTokenizerBase, ids: list[int], start: int, end: int, special: set[int]
) -> int:
    """Move ``end`` back over non-special tokens that decode to whitespace only."""
    while end > start and ids[end - 1] not in special:
        if str(tokenizer.decode([ids[end - 1]])).strip():
            break
        end -= 1
    return end


def _spans_from_prefixes(
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[Message],
    full_ids: list[int],
    special: set[int],
) -> list[tuple[int, int]] | None:
    spans: list[tuple[int, int]] = []
    for index, message in enumerate(messages):
        if message.role != "assistant":
            continue
        try:
            before = _token_ids(tokenizer, render_chat(tokenizer, messages[:index], True))
            through = _token_ids(tokenizer, render_chat(tokenizer, messages[: index + 1], False))
        except Exception:
            # Some templates refuse partial conversations; the offset fallback handles those.
            return None
        if (
            len(through) <= len(before)
            or full_ids[: len(before)] != before
            or full_ids[: len(through)] != through
        ):
            return None
        end = _trim_trailing_whitespace(tokenizer, full_ids, len(before), len(through), special)
        spans.append((len(before), end))
    return spans


def _spans_from_offsets(
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[Message],
    text: str,
    full_ids: list[int],
    special: set[int],
) -> list[tuple[int, int]] | None:
    if not getattr(tokenizer, "is_fast", False):
        return None
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    if list(encoding["input_ids"]) != full_ids:
        return None
    offsets: list[tuple[int, int]] = [tuple(pair) for pair in encoding["offset_mapping"]]
    search_from = 0
    spans: list[tuple[int, int]] = []
    for message in messages:
        content = message.content
        position = text.find(content, search_from)
        if position < 0:
            # Some templates strip message content.
            content = content.strip()
            position = text.find(content, search_from)
        if position < 0 or not content:
            return None
        char_start, char_end = position, position + len(content)
        search_from = char_end
        if message.role != "assistant":
            continue
        covering = [
            token_index
            for token_index, (token_start, token_end) in enumerate(offsets)
            if token_end > char_start and token_start < char_end
        ]
        if not covering:
            return None
        start, end = covering[0], covering[-1] + 1
        if end < len(full_ids) and full_ids[end] in special:
            end += 1
        spans.append((start, end))
    return spans


def encode_example(
    example: Example, tokenizer: PreTrainedTokenizerBase, max_length: int
) -> EncodedExample:
    """Tokenise an example with the chat template; labels are the answer tokens only.

    See the module docstring for how answer tokens are found and for the truncation policy.
    Raises ValueError (naming ``example.id``) if the answer cannot be located or no answer token
    survives truncation.
    """
    if not isinstance(max_length, int) or max_length <= 0:
        raise ValueError(f"max_length must be a positive integer, got {max_length!r}")
    messages = example.messages
    try:
        text = render_chat(tokenizer, messages, add_generation_prompt=False)
    except Exception as error:
        raise ValueError(
            f"example {example.id} (line {example.line}): the chat template failed to render "
            f"it: {error}"
        ) from error
    full_ids = _token_ids(tokenizer, text)
    special = _special_token_ids(tokenizer)
    spans = _spans_from_prefixes(tokenizer, messages, full_ids, special)
    if spans is None:
        spans = _spans_from_offsets(tokenizer, messages, text, full_ids, special)
    if spans is None:
        raise ValueError(
            f"example {example.id} (line {example.line}): cannot locate the assistant answer in "
            "the chat template's output (the template renders turns inconsistently and the "
            "tokenizer gives no character offsets)"
        )
    labels = [IGNORE_INDEX] * len(full_ids)
    for start, end in spans:
        labels[start:end] = full_ids[start:end]
    input_ids = full_ids
    truncated = False
    if len(input_ids) > max_length:
        truncated = True
        first_answer = next(
            (index for index, label in enumerate(labels) if label != IGNORE_INDEX), len(labels)
        )
        drop_from_prompt = min(len(input_ids) - max_length, first_answer)
        input_ids = input_ids[drop_from_prompt:][:max_length]
        labels = labels[drop_from_prompt:][:max_length]
    n_answer_tokens = sum(1 for label in labels if label != IGNORE_INDEX)
    if n_answer_tokens == 0:
        reason = f"after truncation to max_length={max_length}" if truncated else "at all"
        raise ValueError(
            f"example {example.id} (line {example.line}) has no answer tokens {reason}"
        )
    return EncodedExample(
        input_ids=input_ids,
        labels=labels,
        n_answer_tokens=n_answer_tokens,
        truncated=truncated,
    )


def collate(encoded: Sequence[EncodedExample], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch: ``input_ids`` (pad id), ``attention_mask`` (0 on padding) and
    ``labels`` (``IGNORE_INDEX`` on padding), each a LongTensor of shape (batch, longest)."""
    import torch

    if not encoded:
        raise ValueError("collate needs at least one encoded example")
    if not isinstance(pad_token_id, int):
        raise ValueError(f"pad_token_id must be an integer token id, got {pad_token_id!r}")
    longest = max(len(item.input_ids) for item in encoded)
    input_ids = torch.full((len(encoded), longest), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(encoded), longest), dtype=torch.long)
    labels = torch.full((len(encoded), longest), IGNORE_INDEX, dtype=torch.long)
    for row, item in enumerate(encoded):
        length = len(item.input_ids)
        input_ids[row, :length] = torch.tensor(item.input_ids, dtype=torch.long)
        attention_mask[row, :length] = 1
        labels[row, :length] = torch.tensor(item.labels, dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
