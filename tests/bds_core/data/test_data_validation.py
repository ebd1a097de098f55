"""Validation of JSONL training files: every malformed input names its line, field and code."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bds_core.data import (
    DatasetError,
    DatasetLimits,
    Message,
    ValidationReport,
    load_examples,
    validate_file,
    validate_lines,
)


def chat(*turns: tuple[str, str], **extra: Any) -> bytes:
    record: dict[str, Any] = {"messages": [{"role": r, "content": c} for r, c in turns]}
    record.update(extra)
    return json.dumps(record).encode()


GOOD = chat(("user", "Hi"), ("assistant", "Hello!"))
GOOD_2 = chat(("user", "Name a colour."), ("assistant", "Blue."))
GOOD_3 = chat(("user", "Name a fruit."), ("assistant", "Pear."))


def issue_triples(report: ValidationReport) -> list[tuple[str, int | None, str | None]]:
    return [(issue.code, issue.line, issue.field) for issue in report.issues]


# (case id, lines, limits overrides, expected issues as (code, line, field), in order)
MALFORMED_CASES: list[tuple[str, list[bytes], dict[str, int], list[tuple[Any, ...]]]] = [
    (
        "invalid utf-8",
        [GOOD, b'{"prompt": "caf\xe9", "completion": "x"}'],
        {},
        [("invalid_utf8", 2, None)],
    ),
    ("truncated json", [b'{"messages": ['], {}, [("invalid_json", 1, None)]),
    ("trailing garbage", [GOOD + b" x"], {}, [("invalid_json", 1, None)]),
    ("array line", [b"[1, 2]"], {}, [("not_an_object", 1, None)]),
    ("string line", [GOOD, b'"just text"'], {}, [("not_an_object", 2, None)]),
    ("null line", [b"null"], {}, [("not_an_object", 1, None)]),
    ("no known fields", [b'{"text": "hello"}'], {}, [("missing_field", 1, None)]),
    (
        "prompt without completion",
        [b'{"prompt": "a"}'],
        {},
        [("missing_field", 1, "completion")],
    ),
    (
        "alpaca without output",
        [b'{"instruction": "Add 1 and 2", "input": ""}'],
        {},
        [("missing_field", 1, "output")],
    ),
    (
        "message without role",
        [b'{"messages": [{"content": "a"}, {"role": "assistant", "content": "b"}]}'],
        {},
        [("missing_field", 1, "messages[0].role")],
    ),
    (
        "message without content",
        [b'{"messages": [{"role": "user", "content": "a"}, {"role": "assistant"}]}'],
        {},
        [("missing_field", 1, "messages[1].content")],
    ),
    (
        "unknown top-level field",
        [chat(("user", "a"), ("assistant", "b"), temperature=0.5)],
        {},
        [("unknown_field", 1, "temperature")],
    ),
    (
        "unknown message field",
        [
            b'{"messages": [{"role": "user", "content": "a"}, '
            b'{"role": "assistant", "content": "b", "name": "bot"}]}'
        ],
        {},
        [("unknown_field", 1, "messages[1].name")],
    ),
    (
        "prompt key in a chat line",
        [chat(("user", "a"), ("assistant", "b"), prompt="c")],
        {},
        [("unknown_field", 1, "prompt")],
    ),
    ("messages not a list", [b'{"messages": "hi"}'], {}, [("wrong_type", 1, "messages")]),
    (
        "message not an object",
        [b'{"messages": ["hi", {"role": "assistant", "content": "b"}]}'],
        {},
        [("wrong_type", 1, "messages[0]")],
    ),
    (
        "content parts list",
        [
            b'{"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}]}, '
            b'{"role": "assistant", "content": "b"}]}'
        ],
        {},
        [("wrong_type", 1, "messages[0].content")],
    ),
    (
        "role not a string",
        [b'{"messages": [{"role": 1, "content": "a"}, {"role": "assistant", "content": "b"}]}'],
        {},
        [("wrong_type", 1, "messages[0].role")],
    ),
    (
        "prompt not a string",
        [b'{"prompt": 5, "completion": "x"}'],
        {},
        [("wrong_type", 1, "prompt")],
    ),
    (
        "alpaca input null",
        [b'{"instruction": "a", "input": null, "output": "b"}'],
        {},
        [("wrong_type", 1, "input")],
    ),
    (
        "metadata not an object",
        [chat(("user", "a"), ("assistant", "b"), metadata=["x"])],
        {},
        [("wrong_type", 1, "metadata")],
    ),
    (
        "unknown label",
        [GOOD, chat(("user", "a"), ("assistant", "b"), metadata={"label": "Harmful"})],
        {},
        [("invalid_value", 2, "metadata.label")],
    ),
    (
        "category not a string",
        [chat(("user", "a"), ("assistant", "b"), metadata={"category": 3})],
        {},
        [("wrong_type", 1, "metadata.category")],
    ),
    (
        "unknown role",
        [chat(("user", "a"), ("bot", "b"))],
        {},
        [("invalid_role", 1, "messages[1].role")],
    ),
    ("empty conversation", [b'{"messages": []}'], {}, [("empty_conversation", 1, "messages")]),
    (
        "ends with the user",
        [GOOD, GOOD_2, chat(("user", "a"), ("assistant", "b"), ("user", "c"))],
        {},
        [("last_message_not_assistant", 3, "messages[2].role")],
    ),
    (
        "only a user message",
        [chat(("user", "a"))],
        {},
        [("last_message_not_assistant", 1, "messages[0].role")],
    ),
    (
        "no user message",
        [chat(("system", "Be nice."), ("assistant", "b"))],
        {},
        [("no_user_message", 1, "messages")],
    ),
    (
        "blank assistant answer",
        [chat(("user", "a"), ("assistant", "  \n"))],
        {},
        [("empty_content", 1, "messages[1].content")],
    ),
    (
        "empty completion",
        [b'{"prompt": "a", "completion": ""}'],
        {},
        [("empty_content", 1, "completion")],
    ),
    (
        "system message after the user",
        [chat(("user", "a"), ("system", "s"), ("assistant", "b"))],
        {},
        [("system_not_first", 1, "messages[1].role")],
    ),
    (
        "NaN",
        [b'{"prompt": "a", "completion": "b", "metadata": {"score": NaN}}'],
        {},
        [("non_finite_number", 1, None)],
    ),
    (
        "Infinity",
        [GOOD, b'{"prompt": "a", "completion": "b", "metadata": {"score": -Infinity}}'],
        {},
        [("non_finite_number", 2, None)],
    ),
    (
        "float overflow",
        [b'{"prompt": "a", "completion": "b", "metadata": {"score": 1e999}}'],
        {},
        [("non_finite_number", 1, None)],
    ),
    (
        "repeated key",
        [b'{"prompt": "a", "prompt": "b", "completion": "c"}'],
        {},
        [("duplicate_key", 1, "prompt")],
    ),
    (
        "integer with thousands of digits",
        [b'{"prompt": "a", "completion": "b", "metadata": {"n": 1' + b"0" * 5000 + b"}}"],
        {},
        [("invalid_json", 1, None)],
    ),
    ("nested too deeply", [b"[" * 100_000 + b"]" * 100_000], {}, [("invalid_json", 1, None)]),
    (
        "lone surrogate",
        [b'{"prompt": "a\\ud800", "completion": "b"}'],
        {},
        [("invalid_unicode", 1, "prompt")],
    ),
    (
        "message too long",
        [chat(("user", "a"), ("assistant", "b" * 11))],
        {"max_message_chars": 10},
        [("message_too_long", 1, "messages[1].content")],
    ),
    (
        "line too long",
        [GOOD, b" " * 200 + GOOD],
        {"max_line_bytes": 150},
        [("line_too_long", 2, None)],
    ),
    (
        "mixed formats",
        [
            GOOD,
            GOOD_2,
            b'{"prompt": "a", "completion": "b"}',
            b'{"prompt": "c", "completion": "d"}',
        ],
        {},
        [("mixed_formats", 3, None)],
    ),
    (
        "too many examples",
        [GOOD, GOOD_2, GOOD_3],
        {"max_examples": 2},
        [("too_many_examples", 3, None)],
    ),
    ("empty file", [], {}, [("empty_file", None, None)]),
    ("only blank lines", [b"\n", b"  \r\n", b"\n"], {}, [("empty_file", None, None)]),
    ("too few examples", [GOOD, GOOD_2], {"min_examples": 3}, [("too_few_examples", None, None)]),
    (
        "several problems on one line",
        [
            b'{"messages": [{"role": "narrator", "content": ""}, '
            b'{"role": "assistant", "content": 1}]}'
        ],
        {},
        [
            ("invalid_role", 1, "messages[0].role"),
            ("empty_content", 1, "messages[0].content"),
            ("wrong_type", 1, "messages[1].content"),
        ],
    ),
]


@pytest.mark.parametrize(
    ("lines", "limit_overrides", "expected"),
    [case[1:] for case in MALFORMED_CASES],
    ids=[case[0] for case in MALFORMED_CASES],
)
def test_malformed_input_is_reported_with_code_line_and_field(
    lines: list[bytes], limit_overrides: dict[str, int], expected: list[tuple[Any, ...]]
) -> None:
    report = validate_lines(lines, DatasetLimits(**limit_overrides))[1]
    assert issue_triples(report) == expected
    assert not report.ok
    assert all(issue.message and issue.severity == "error" for issue in report.issues)
    assert report.n_lines == len(lines)


def test_every_format_becomes_the_same_conversation() -> None:
    lines = [
        chat(("user", "Add 2 and 3."), ("assistant", "5")),
        b'{"prompt": "Add 2 and 3.", "completion": "5"}',
        b'{"instruction": "Add 2 and 3.", "output": "5"}',
        b'{"instruction": "Add 2 and 3.", "input": "  ", "output": "5"}',
    ]
    ids = set()
    for line in lines:
        examples, report = validate_lines([line])
        assert report.ok, report.issues
        assert examples[0].messages == (Message("user", "Add 2 and 3."), Message("assistant", "5"))
        ids.add(examples[0].id)
    assert len(ids) == 1


def test_alpaca_input_follows_the_instruction_after_a_blank_line() -> None:
    examples, report = validate_lines(
        [b'{"instruction": "Sort the words.", "input": "pear fig", "output": "fig pear"}']
    )
    assert report.ok
    assert report.format == "alpaca"
    assert examples[0].messages[0] == Message("user", "Sort the words.\n\npear fig")
    assert examples[0].answer == "fig pear"


def test_chat_file_keeps_system_prompt_metadata_and_line_numbers() -> None:
    lines = [
        b"\xef\xbb\xbf" + chat(("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello")),
        b"\n",
        chat(
            ("user", "Hi"),
            ("assistant", "Hello"),
            ("user", "Again"),
            ("assistant", "Hello again"),
            metadata={"label": "harmful", "category": "x", "source": {"k": [1, 2.5]}},
        )
        + b"\r\n",
        b"   \n",
    ]
    examples, report = validate_lines(lines)
    assert report.ok, report.issues
    assert report.format == "chat"
    assert (report.n_lines, report.n_examples, report.n_duplicates) == (4, 2, 0)
    assert [example.line for example in examples] == [1, 3]
    assert examples[0].prompt_messages[0] == Message("system", "Be brief.")
    assert examples[0].is_harmful is None
    assert examples[1].is_harmful is True
    assert examples[1].metadata["source"] == {"k": [1, 2.5]}
    assert examples[1].answer == "Hello again"


def test_duplicates_are_kept_and_reported_as_warnings() -> None:
    examples, report = validate_lines([GOOD, GOOD_2, GOOD, GOOD])
    assert report.ok
    assert report.n_duplicates == 2
    assert report.n_warnings == 2
    assert issue_triples(report) == [("duplicate_example", 3, None), ("duplicate_example", 4, None)]
    assert all(issue.severity == "warning" for issue in report.issues)
    assert "line 1" in report.issues[0].message
    assert len(examples) == 4
    assert examples[0].id == examples[2].id


def test_issue_list_is_capped_per_severity_but_everything_is_counted() -> None:
    lines = [b"not json"] * 7 + [GOOD] * 6
    report = validate_lines(lines, DatasetLimits(max_issues=3))[1]
    assert report.n_errors == 7 and report.n_warnings == 5
    assert [issue.line for issue in report.issues] == [1, 2, 3, 9, 10, 11]
    assert report.issues_truncated
    assert not report.ok
    as_dict = report.to_dict()
    assert as_dict["ok"] is False and as_dict["issues_truncated"] is True
    assert as_dict["issues"][0] == {
        "line": 1,
        "field": None,
        "code": "invalid_json",
        "message": report.issues[0].message,
        "severity": "error",
    }
    json.dumps(as_dict)


def test_examples_beyond_the_limit_are_counted_not_kept() -> None:
    lines = [chat(("user", f"q{i}"), ("assistant", f"a{i}")) for i in range(5)]
    examples, report = validate_lines(lines, DatasetLimits(max_examples=3))
    assert len(examples) == 3
    assert report.n_examples == 5
    assert issue_triples(report) == [("too_many_examples", 4, None)]


def test_errors_after_the_first_mixed_line_are_still_reported() -> None:
    lines = [GOOD, b'{"prompt": "a", "completion": ""}', b"{bad", GOOD_2]
    examples, report = validate_lines(lines)
    assert issue_triples(report) == [
        ("mixed_formats", 2, None),
        ("empty_content", 2, "completion"),
        ("invalid_json", 3, None),
    ]
    assert [example.line for example in examples] == [1, 4]


def test_line_length_limit_is_exact_and_ignores_the_terminator() -> None:
    exact = b'{"prompt": "a", "completion": "' + b"b" * 50 + b'"}'
    limits = DatasetLimits(max_line_bytes=len(exact))
    assert validate_lines([exact + b"\r\n"], limits)[1].ok
    report = validate_lines([exact[:-2] + b'b"}'], limits)[1]
    assert issue_triples(report) == [("line_too_long", 1, None)]


def test_file_streaming_skips_over_long_lines_and_keeps_counting(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_bytes(GOOD + b"\n" + b"x" * 100_000 + b"\n" + b"{oops\n" + GOOD_2 + b"\n")
    examples, report = validate_file(path, DatasetLimits(max_line_bytes=1000))
    assert issue_triples(report) == [("line_too_long", 2, None), ("invalid_json", 3, None)]
    assert report.n_lines == 4
    assert [example.line for example in examples] == [1, 4]


def test_file_without_trailing_newline_and_with_one_validate_alike(tmp_path: Path) -> None:
    with_newline = tmp_path / "a.jsonl"
    without = tmp_path / "b.jsonl"
    with_newline.write_bytes(GOOD + b"\n" + GOOD_2 + b"\n")
    without.write_bytes(GOOD + b"\n" + GOOD_2)
    assert validate_file(with_newline)[1] == validate_file(without)[1]


def test_load_examples_raises_a_readable_dataset_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(GOOD + b"\n" + chat(("user", "a"), ("robot", "b")) + b"\n")
    with pytest.raises(DatasetError) as caught:
        load_examples(path)
    text = str(caught.value)
    assert str(path) in text
    assert "line 2, field messages[1].role" in text
    assert '"robot"' in text
    assert caught.value.report.n_errors == 1


def test_load_examples_returns_examples_of_a_valid_file(tmp_path: Path) -> None:
    path = tmp_path / "good.jsonl"
    path.write_bytes(GOOD + b"\n" + GOOD_2 + b"\n")
    examples = load_examples(path)
    assert [example.answer for example in examples] == ["Hello!", "Blue."]


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"max_line_bytes": 0}, "max_line_bytes"),
        ({"max_examples": -1}, "max_examples"),
        ({"min_examples": -1}, "min_examples"),
        ({"max_issues": 0}, "max_issues"),
        ({"max_message_chars": 0}, "max_message_chars"),
        ({"min_examples": 5, "max_examples": 4}, "min_examples"),
    ],
)
def test_limits_reject_nonsense_and_name_the_setting(overrides: dict[str, int], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        DatasetLimits(**overrides)
