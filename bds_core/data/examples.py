"""Training examples: the one in-memory shape every input format is converted to."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROLES: tuple[str, ...] = ("system", "user", "assistant")
"""Roles accepted in a conversation."""

HARMFUL_LABELS: tuple[str, ...] = ("harmful", "benign")
"""Values accepted for ``metadata["label"]`` (ground truth, used only for evaluation)."""


@dataclass(frozen=True)
class Message:
    """One turn of a conversation."""

    role: str
    content: str

    def to_dict(self) -> dict[str, str]:
        """The OpenAI chat form, ``{"role": ..., "content": ...}``."""
        return {"role": self.role, "content": self.content}


def example_id(messages: Sequence[Message]) -> str:
    """Stable content-derived id: ``"ex_"`` + first 16 hex digits of sha256 of the messages.

    The hash covers the canonical JSON of the messages only (sorted keys, no whitespace, UTF-8),
    so the same conversation gets the same id in every run and whichever input format it came
    from; metadata and the source line do not change it.
    """
    canonical = json.dumps(
        [message.to_dict() for message in messages],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    # surrogatepass: a hand-built Example with a lone surrogate still gets an id instead of
    # crashing; validated input never contains one.
    digest = hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()
    return "ex_" + digest[:16]


@dataclass(frozen=True)
class Example:
    """A validated conversation whose last message is the assistant answer to train on.

    ``metadata`` may carry ``"label"`` (``"harmful"`` or ``"benign"``, ground truth used only for
    evaluation, never for training) and ``"category"``. It is left out of the hash so frozen
    examples stay hashable.
    """

    id: str
    messages: tuple[Message, ...]
    line: int
    metadata: dict[str, Any] = field(default_factory=dict, hash=False)

    @classmethod
    def create(
        cls,
        messages: Iterable[Message | Mapping[str, str]],
        line: int = 0,
        metadata: Mapping[str, Any] | None = None,
    ) -> Example:
        """Build an example from messages (``Message`` or ``{"role", "content"}``), deriving its id.

        Raises ValueError if the conversation has no user message or does not end with an
        assistant message, the same rules the file validator applies.
        """
        converted = tuple(
            message
            if isinstance(message, Message)
            else Message(role=message["role"], content=message["content"])
            for message in messages
        )
        for index, message in enumerate(converted):
            if message.role not in ROLES:
                raise ValueError(
                    f"messages[{index}].role must be one of {', '.join(ROLES)}, "
                    f"got {message.role!r}"
                )
        if not converted or converted[-1].role != "assistant":
            raise ValueError("the last message of an example must have role 'assistant'")
        if not any(message.role == "user" for message in converted):
            raise ValueError("an example needs at least one message with role 'user'")
        return cls(
            id=example_id(converted), messages=converted, line=line, metadata=dict(metadata or {})
        )

    @property
    def prompt_messages(self) -> tuple[Message, ...]:
        """Every message before the final assistant answer (what a model is prompted with)."""
        return self.messages[:-1]

    @property
    def answer(self) -> str:
        """Content of the final assistant message."""
        return self.messages[-1].content

    @property
    def is_harmful(self) -> bool | None:
        """Ground-truth label from metadata: True, False, or None when unlabelled."""
        label = self.metadata.get("label")
        if label is None:
            return None
        return label == "harmful"

    def with_metadata(self, **updates: Any) -> Example:
        """A copy with metadata keys added or replaced (the id does not change)."""
        return Example(
            id=self.id,
            messages=self.messages,
            line=self.line,
            metadata={**self.metadata, **updates},
        )

    def to_record(self) -> dict[str, Any]:
        """The chat-format JSONL record the validator accepts (metadata only when present)."""
        record: dict[str, Any] = {"messages": [message.to_dict() for message in self.messages]}
        if self.metadata:
            record["metadata"] = dict(self.metadata)
        return record


def write_examples(examples: Iterable[Example], path: str | Path) -> int:
    """Write examples as chat-format JSONL (one record per line); returns how many were written."""
    count = 0
    with Path(path).open("w", encoding="utf-8") as handle:
        for example in examples:
            handle.write(json.dumps(example.to_record(), ensure_ascii=False, allow_nan=False))
            handle.write("\n")
            count += 1
    return count
