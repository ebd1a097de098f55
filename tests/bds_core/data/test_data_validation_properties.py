"""Property tests: the validator never raises, and valid datasets always validate cleanly."""

from __future__ import annotations

import io
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bds_core.data import (
    DatasetLimits,
    Example,
    Message,
    ValidationReport,
    iter_bounded_lines,
    validate_lines,
)

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SMALL_LIMITS = DatasetLimits(max_line_bytes=2000, max_examples=20, max_issues=10)


def check_report_invariants(
    lines: list[bytes], examples: list[Example], report: ValidationReport
) -> None:
    assert report.n_lines == len(lines)
    assert report.ok == (report.n_errors == 0)
    assert len(examples) <= min(report.n_examples, SMALL_LIMITS.max_examples)
    assert report.n_errors + report.n_warnings >= len(report.issues)
    assert report.issues_truncated == (report.n_errors + report.n_warnings > len(report.issues))
    for issue in report.issues:
        assert issue.line is None or 1 <= issue.line <= len(lines)
        assert issue.code and issue.message
    json.dumps(report.to_dict())


@SETTINGS
@given(st.lists(st.binary(max_size=300), max_size=12))
def test_arbitrary_bytes_never_raise(lines: list[bytes]) -> None:
    examples, report = validate_lines(lines, SMALL_LIMITS)
    check_report_invariants(lines, examples, report)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)


@SETTINGS
@given(st.lists(json_values, max_size=8))
def test_arbitrary_json_never_raises(values: list[Any]) -> None:
    lines = [json.dumps(value).encode() for value in values]
    examples, report = validate_lines(lines, SMALL_LIMITS)
    check_report_invariants(lines, examples, report)


# Records shaped like the accepted formats, with every field allowed to be wrong.
field_values = st.one_of(json_values, st.sampled_from(["user", "assistant", "system", "", " "]))
message_like = st.one_of(
    field_values,
    st.dictionaries(st.sampled_from(["role", "content", "name"]), field_values, max_size=3),
)
record_like = st.dictionaries(
    st.sampled_from(
        ["messages", "prompt", "completion", "instruction", "input", "output", "metadata", "x"]
    ),
    st.one_of(
        field_values,
        st.lists(message_like, max_size=4),
        st.dictionaries(st.sampled_from(["label", "category"]), field_values, max_size=2),
    ),
    max_size=4,
)


@SETTINGS
@given(st.lists(record_like, max_size=8))
def test_records_near_the_schema_never_raise(records: list[dict[str, Any]]) -> None:
    lines = [json.dumps(record).encode() for record in records]
    examples, report = validate_lines(lines, SMALL_LIMITS)
    check_report_invariants(lines, examples, report)
    if report.ok:
        assert len(examples) == len(records)


# Non-blank text without lone surrogates (which JSON text cannot carry as UTF-8).
content_text = st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=40).filter(
    lambda text: text.strip() != ""
)


@st.composite
def valid_records(draw: st.DrawFn, kind: str) -> tuple[dict[str, Any], tuple[Message, ...]]:
    """A valid record in format ``kind`` and the conversation it must become."""
    if kind == "chat":
        system = draw(st.lists(content_text, max_size=1))
        turns = draw(st.lists(st.tuples(content_text, content_text), min_size=1, max_size=3))
        messages = [Message("system", text) for text in system]
        for question, answer in turns:
            messages += [Message("user", question), Message("assistant", answer)]
        record: dict[str, Any] = {"messages": [message.to_dict() for message in messages]}
        expected = tuple(messages)
    elif kind == "prompt_completion":
        prompt, completion = draw(content_text), draw(content_text)
        record = {"prompt": prompt, "completion": completion}
        expected = (Message("user", prompt), Message("assistant", completion))
    else:
        instruction, output = draw(content_text), draw(content_text)
        record = {"instruction": instruction, "output": output}
        expected = (Message("user", instruction), Message("assistant", output))
    if draw(st.booleans()):
        record["metadata"] = {"label": draw(st.sampled_from(["harmful", "benign"]))}
    return record, expected


@st.composite
def valid_datasets(draw: st.DrawFn) -> list[tuple[dict[str, Any], tuple[Message, ...]]]:
    """One to 15 valid records that share a format."""
    kind = draw(st.sampled_from(["chat", "prompt_completion", "alpaca"]))
    return draw(st.lists(valid_records(kind), min_size=1, max_size=15))


@SETTINGS
@given(valid_datasets(), st.booleans(), st.booleans())
def test_valid_datasets_validate_cleanly(
    records: list[tuple[dict[str, Any], tuple[Message, ...]]], ascii_only: bool, crlf: bool
) -> None:
    newline = b"\r\n" if crlf else b"\n"
    data = newline.join(
        json.dumps(record, ensure_ascii=ascii_only).encode("utf-8") for record, _ in records
    )
    lines = list(iter_bounded_lines(io.BytesIO(data + newline), 1_000_000))
    examples, report = validate_lines(lines)
    assert report.ok, report.issues
    assert report.n_examples == len(records) == len(examples)
    assert [example.messages for example in examples] == [expected for _, expected in records]
    assert [example.line for example in examples] == list(range(1, len(records) + 1))
    assert report.n_duplicates == len(records) - len({example.id for example in examples})
    for example, (record, _) in zip(examples, records, strict=True):
        assert example.metadata == record.get("metadata", {})
