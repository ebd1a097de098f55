"""Example ids are content-derived and stable; examples round-trip through JSONL."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from bds_core.data import Example, Message, example_id, load_examples, write_examples

MESSAGES = (Message("user", "Café?"), Message("assistant", "Oui."))


def test_id_is_sha256_of_canonical_messages_json() -> None:
    canonical = '[{"content":"Café?","role":"user"},{"content":"Oui.","role":"assistant"}]'
    expected = "ex_" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]
    assert example_id(MESSAGES) == expected
    # Pinned literal: changing the canonical form would silently re-key every stored weight.
    assert example_id(MESSAGES) == "ex_b0585e9bab912e86"


def test_id_ignores_metadata_and_line_but_not_content() -> None:
    first = Example.create(MESSAGES, line=1, metadata={"label": "benign"})
    second = Example.create(MESSAGES, line=9, metadata={"label": "harmful", "category": "x"})
    changed = Example.create([MESSAGES[0], Message("assistant", "Non.")])
    assert first.id == second.id
    assert first.id != changed.id
    assert first.id != Example.create([Message("user", "Café? "), MESSAGES[1]]).id


def test_properties() -> None:
    example = Example.create(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Q"},
            {"role": "assistant", "content": "A"},
        ],
        metadata={"label": "harmful"},
    )
    assert example.prompt_messages == (Message("system", "Be brief."), Message("user", "Q"))
    assert example.answer == "A"
    assert example.is_harmful is True
    assert example.with_metadata(label="benign").is_harmful is False
    assert example.with_metadata(label="benign").id == example.id
    assert Example.create(MESSAGES).is_harmful is None
    assert hash(example) == hash(example.with_metadata(category="c"))


@pytest.mark.parametrize(
    ("messages", "message"),
    [
        ([Message("user", "Q")], "last message"),
        ([Message("system", "S"), Message("assistant", "A")], "user"),
        ([Message("user", "Q"), Message("bot", "A")], "messages\\[1\\].role"),
    ],
)
def test_create_rejects_conversations_the_validator_would(
    messages: list[Message], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Example.create(messages)


def test_written_examples_load_back_identically(tmp_path: Path) -> None:
    examples = [
        Example.create(MESSAGES, line=1, metadata={"label": "benign", "category": "fr"}),
        Example.create([Message("user", "2+2?"), Message("assistant", "4")], line=2),
    ]
    path = tmp_path / "out.jsonl"
    assert write_examples(examples, path) == 2
    assert load_examples(path) == examples
    assert "metadata" not in json.loads(path.read_text().splitlines()[1])
