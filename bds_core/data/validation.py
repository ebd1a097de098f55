"""Streaming validation of JSONL training files.

One JSON object per line, in one of three formats (one format per file):

- ``chat``: ``{"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}``;
  system messages only at the start, at least one user message, the last message from the
  assistant. Every assistant message is trained on; ``Example.answer`` is the last one.
- ``prompt_completion``: ``{"prompt": "...", "completion": "..."}`` (a user turn and the answer).
- ``alpaca``: ``{"instruction": "...", "input": "..." (optional), "output": "..."}``; the user
  turn is the instruction, followed by a blank line and the input when the input is not blank.

Each line may also carry a ``"metadata"`` object; ``metadata.label`` must be ``"harmful"`` or
``"benign"`` when present (ground truth for evaluation only), ``metadata.category`` a string.

Decisions the checks below implement:

- Bad input never raises: every problem becomes a ``ValidationIssue`` with the 1-based line, the
  field path (``"messages[2].role"``, ``"completion"``, ``"metadata.label"``; ``None`` where no
  single field is at fault) and a message a customer can act on.
- Blank (whitespace-only) lines are skipped anywhere in the file, so a trailing newline or an
  empty last line is fine; they still count in ``n_lines``. A UTF-8 byte order mark at the start
  of the file is ignored.
- Duplicates (the same conversation, i.e. the same ``Example.id``, seen on an earlier line) are
  kept, counted in ``n_duplicates`` and reported as ``severity="warning"`` issues with code
  ``duplicate_example``; warnings never make a report fail.
- ``max_issues`` caps errors and warnings separately (so a flood of duplicate warnings cannot
  hide an error); ``n_errors``/``n_warnings`` count all of them and ``issues_truncated`` says
  when some were left out of ``issues``.
- NaN, Infinity and numbers too large for a 64-bit float are rejected (Python's json accepts
  them, JSON does not); so are repeated keys in one object, whose meaning would be ambiguous.
- After ``max_examples`` valid examples the rest of the file is still checked, so the report is
  complete, but no more examples are kept.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from bds_core.data.examples import HARMFUL_LABELS, ROLES, Example, Message, example_id

FORMAT_CHAT = "chat"
FORMAT_PROMPT_COMPLETION = "prompt_completion"
FORMAT_ALPACA = "alpaca"
FORMATS: tuple[str, ...] = (FORMAT_CHAT, FORMAT_PROMPT_COMPLETION, FORMAT_ALPACA)

SEVERITY_ERROR = "error"
SEVERITY_WARNING = "warning"

_FORMAT_DESCRIPTIONS = {
    FORMAT_CHAT: 'chat format ({"messages": [...]})',
    FORMAT_PROMPT_COMPLETION: 'prompt/completion format ({"prompt", "completion"})',
    FORMAT_ALPACA: 'Alpaca format ({"instruction", "input", "output"})',
}
_ALLOWED_KEYS = {
    FORMAT_CHAT: ("messages", "metadata"),
    FORMAT_PROMPT_COMPLETION: ("prompt", "completion", "metadata"),
    FORMAT_ALPACA: ("instruction", "input", "output", "metadata"),
}
_MESSAGE_KEYS = ("role", "content")
_UTF8_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class DatasetLimits:
    """Size limits a training file must respect."""

    max_line_bytes: int = field(
        default=1_000_000,
        metadata={"help": "Longest accepted line in bytes, without its line terminator."},
    )
    max_examples: int = field(default=100_000, metadata={"help": "Most examples a file may hold."})
    min_examples: int = field(default=1, metadata={"help": "Fewest valid examples a file needs."})
    max_issues: int = field(
        default=100,
        metadata={"help": "Most issues listed per severity; the rest are only counted."},
    )
    max_message_chars: int = field(
        default=100_000, metadata={"help": "Longest accepted message content, in characters."}
    )

    def __post_init__(self) -> None:
        for name in ("max_line_bytes", "max_examples", "max_issues", "max_message_chars"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.min_examples, int) or self.min_examples < 0:
            raise ValueError(
                f"min_examples must be a non-negative integer, got {self.min_examples!r}"
            )
        if self.min_examples > self.max_examples:
            raise ValueError(
                f"min_examples ({self.min_examples}) must not exceed "
                f"max_examples ({self.max_examples})"
            )


@dataclass(frozen=True)
class ValidationIssue:
    """One problem found in a file: where (line, field), what (code) and how to fix it."""

    line: int | None
    field: str | None
    code: str
    message: str
    severity: str = SEVERITY_ERROR

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "line": self.line,
            "field": self.field,
            "code": self.code,
            "message": self.message,
            "severity": self.severity,
        }

    def __str__(self) -> str:
        where = []
        if self.line is not None:
            where.append(f"line {self.line}")
        if self.field is not None:
            where.append(f"field {self.field}")
        location = ", ".join(where) if where else "file"
        return f"{location}: {self.message} [{self.code}]"


@dataclass(frozen=True)
class ValidationReport:
    """Outcome of validating a file. ``ok`` is true when it has no error-level issue."""

    format: str | None
    n_lines: int
    n_examples: int
    n_duplicates: int
    issues: list[ValidationIssue]
    issues_truncated: bool
    n_errors: int = 0
    n_warnings: int = 0

    @property
    def ok(self) -> bool:
        """True when the file can be trained on (warnings allowed)."""
        return self.n_errors == 0 and not any(
            issue.severity == SEVERITY_ERROR for issue in self.issues
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, for storage and API responses."""
        return {
            "ok": self.ok,
            "format": self.format,
            "n_lines": self.n_lines,
            "n_examples": self.n_examples,
            "n_duplicates": self.n_duplicates,
            "n_errors": self.n_errors,
            "n_warnings": self.n_warnings,
            "issues": [issue.to_dict() for issue in self.issues],
            "issues_truncated": self.issues_truncated,
        }


class DatasetError(ValueError):
    """A file failed validation; ``report`` holds every issue found."""

    def __init__(self, report: ValidationReport, source: str | None = None) -> None:
        self.report = report
        self.source = source
        super().__init__(self._describe())

    def _describe(self) -> str:
        name = f"{self.source} " if self.source else "dataset "
        lines = [
            f"{name}is not a valid training file "
            f"({self.report.n_errors} error(s), {self.report.n_warnings} warning(s)):"
        ]
        lines.extend(f"  {issue}" for issue in self.report.issues)
        if self.report.issues_truncated:
            lines.append("  ... more issues were found but not listed")
        return "\n".join(lines)


class _LineProblem(Exception):
    """Raised inside the JSON parser hooks; carries the issue code and message."""

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field


MAX_NESTING_DEPTH = 64
"""Deepest nesting of objects and arrays accepted on a line."""


def _nesting_depth(value: Any) -> int:
    """How deeply objects and arrays nest in ``value`` (iterative: no recursion limit)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            stack.extend(
                (child, depth + 1) for child in (item.values() if isinstance(item, dict) else item)
            )
    return deepest


def _reject_constant(name: str) -> Any:
    raise _LineProblem(
        "non_finite_number",
        f"contains {name}, which JSON does not allow; use a finite number or a string",
    )


def _parse_finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise _LineProblem(
            "non_finite_number",
            f"the number {text[:40]} is too large to represent; use a smaller number or a string",
        )
    return value


def _object_without_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _LineProblem(
                "duplicate_key",
                f'the key "{key}" appears twice in the same object; keep only one',
                field=key,
            )
        result[key] = value
    return result


def _json_type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _has_lone_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _strings_in(value: Any) -> Iterator[str]:
    """Every string (keys included) inside a parsed JSON value, iteratively (no recursion)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _detect_format(record: dict[str, Any]) -> str | None:
    if "messages" in record:
        return FORMAT_CHAT
    if "prompt" in record or "completion" in record:
        return FORMAT_PROMPT_COMPLETION
    if "instruction" in record or "output" in record or "input" in record:
        return FORMAT_ALPACA
    return None


class _Validator:
    """Holds the running state of one streaming validation."""

    def __init__(self, limits: DatasetLimits) -> None:
        self.limits = limits
        self.examples: list[Example] = []
        self.issues: list[ValidationIssue] = []
        self.n_errors = 0
        self.n_warnings = 0
        self.n_errors_listed = 0
        self.n_warnings_listed = 0
        self.issues_truncated = False
        self.n_lines = 0
        self.n_content_lines = 0
        self.n_examples = 0
        self.n_duplicates = 0
        self.format: str | None = None
        self.format_line: int | None = None
        self.mixed_formats_reported = False
        self.too_many_reported = False
        self.first_line_of_id: dict[str, int] = {}

    # -- issue bookkeeping -------------------------------------------------------------

    def add_issue(
        self,
        line: int | None,
        field: str | None,
        code: str,
        message: str,
        severity: str = SEVERITY_ERROR,
    ) -> None:
        issue = ValidationIssue(
            line=line, field=field, code=code, message=message, severity=severity
        )
        if severity == SEVERITY_ERROR:
            self.n_errors += 1
            if self.n_errors_listed < self.limits.max_issues:
                self.n_errors_listed += 1
                self.issues.append(issue)
            else:
                self.issues_truncated = True
        else:
            self.n_warnings += 1
            if self.n_warnings_listed < self.limits.max_issues:
                self.n_warnings_listed += 1
                self.issues.append(issue)
            else:
                self.issues_truncated = True

    # -- per line ----------------------------------------------------------------------

    def feed(self, raw: bytes) -> None:
        self.n_lines += 1
        line = self.n_lines
        if raw.endswith(b"\n"):
            raw = raw[:-1]
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        if line == 1 and raw.startswith(_UTF8_BOM):
            raw = raw[len(_UTF8_BOM) :]
        if len(raw) > self.limits.max_line_bytes:
            self.n_content_lines += 1
            self.add_issue(
                line,
                None,
                "line_too_long",
                f"the line is longer than the limit of {self.limits.max_line_bytes} bytes; "
                "shorten the example or split it",
            )
            return
        if not raw.strip():
            return
        self.n_content_lines += 1
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            self.add_issue(
                line,
                None,
                "invalid_utf8",
                f"byte {error.start + 1} of the line is not valid UTF-8; save the file as UTF-8",
            )
            return
        try:
            record = json.loads(
                text,
                parse_constant=_reject_constant,
                parse_float=_parse_finite_float,
                object_pairs_hook=_object_without_repeated_keys,
            )
        except _LineProblem as problem:
            self.add_issue(line, problem.field, problem.code, problem.message)
            return
        except json.JSONDecodeError as error:
            self.add_issue(
                line,
                None,
                "invalid_json",
                f"the line is not valid JSON ({error.msg} at column {error.colno}); "
                "each line must be one complete JSON object",
            )
            return
        except RecursionError:
            self.add_issue(line, None, "invalid_json", "the JSON on this line is nested too deeply")
            return
        except ValueError:
            # int() refuses numbers with thousands of digits.
            self.add_issue(
                line,
                None,
                "invalid_json",
                "the line contains a number with too many digits; use a shorter number or a string",
            )
            return
        if not isinstance(record, dict):
            self.add_issue(
                line,
                None,
                "not_an_object",
                f'each line must be a JSON object such as {{"messages": [...]}}, '
                f"got {_json_type_name(record)}",
            )
            return
        if _nesting_depth(record) > MAX_NESTING_DEPTH:
            # Refused whatever the caller's stack depth: the API (shallow stack) and a worker
            # (deep stack) must give the same answer for the same line.
            self.add_issue(
                line,
                None,
                "invalid_json",
                f"the JSON on this line nests objects and arrays more than {MAX_NESTING_DEPTH} "
                "deep; flatten it",
            )
            return
        self._check_record(line, record)

    def _check_record(self, line: int, record: dict[str, Any]) -> None:
        line_format = _detect_format(record)
        if line_format is None:
            found = ", ".join(f'"{key}"' for key in list(record)[:10]) or "none"
            self.add_issue(
                line,
                None,
                "missing_field",
                'no training fields found: use "messages" (chat format), "prompt" and '
                '"completion", or "instruction" and "output" (Alpaca format); '
                f"keys found: {found}",
            )
            return
        same_format = True
        if self.format is None:
            self.format = line_format
            self.format_line = line
        elif line_format != self.format:
            same_format = False
            if not self.mixed_formats_reported:
                self.mixed_formats_reported = True
                self.add_issue(
                    line,
                    None,
                    "mixed_formats",
                    f"this line is in {_FORMAT_DESCRIPTIONS[line_format]} but the file started "
                    f"in {_FORMAT_DESCRIPTIONS[self.format]} on line {self.format_line}; "
                    "use one format for the whole file",
                )
        errors_before = self.n_errors
        for key in record:
            if key not in _ALLOWED_KEYS[line_format]:
                allowed = ", ".join(f'"{name}"' for name in _ALLOWED_KEYS[line_format])
                self.add_issue(
                    line,
                    key,
                    "unknown_field",
                    f'unknown field "{key}"; in {_FORMAT_DESCRIPTIONS[line_format]} a line may '
                    f"only have {allowed}",
                )
        if line_format == FORMAT_CHAT:
            messages = self._chat_messages(line, record)
        elif line_format == FORMAT_PROMPT_COMPLETION:
            messages = self._prompt_completion_messages(line, record)
        else:
            messages = self._alpaca_messages(line, record)
        metadata = self._metadata(line, record)
        if messages is None or metadata is None or self.n_errors != errors_before:
            return
        if not same_format:
            return
        self._accept(line, messages, metadata)

    def _accept(self, line: int, messages: tuple[Message, ...], metadata: dict[str, Any]) -> None:
        self.n_examples += 1
        identifier = example_id(messages)
        first_line = self.first_line_of_id.get(identifier)
        if first_line is not None:
            self.n_duplicates += 1
            self.add_issue(
                line,
                None,
                "duplicate_example",
                f"same conversation as line {first_line}; duplicates are kept and trained on "
                "more than once, remove this line if that is not intended",
                severity=SEVERITY_WARNING,
            )
        else:
            self.first_line_of_id[identifier] = line
        if self.n_examples > self.limits.max_examples:
            if not self.too_many_reported:
                self.too_many_reported = True
                self.add_issue(
                    line,
                    None,
                    "too_many_examples",
                    f"the file has more than {self.limits.max_examples} examples (the limit); "
                    "remove examples or split the file",
                )
            return
        self.examples.append(
            Example(id=identifier, messages=messages, line=line, metadata=metadata)
        )

    # -- field checks ------------------------------------------------------------------

    def _text_field(
        self, line: int, path: str, value: Any, *, required_nonblank: bool = True
    ) -> str | None:
        """Check a string field; returns it, or None after reporting why it is not usable."""
        if not isinstance(value, str):
            hint = ""
            if isinstance(value, list):
                hint = " (lists of content parts are not supported; use a plain string)"
            self.add_issue(
                line,
                path,
                "wrong_type",
                f"must be a string, got {_json_type_name(value)}{hint}",
            )
            return None
        if required_nonblank and not value.strip():
            self.add_issue(line, path, "empty_content", "must not be empty or only whitespace")
            return None
        if len(value) > self.limits.max_message_chars:
            self.add_issue(
                line,
                path,
                "message_too_long",
                f"is {len(value)} characters long; the limit is {self.limits.max_message_chars}",
            )
            return None
        if _has_lone_surrogate(value):
            self.add_issue(
                line,
                path,
                "invalid_unicode",
                "contains an unpaired surrogate escape (\\ud800-\\udfff), which is not valid text",
            )
            return None
        return value

    def _required(self, line: int, record: dict[str, Any], key: str, what: str) -> bool:
        if key in record:
            return True
        self.add_issue(line, key, "missing_field", f'the field "{key}" ({what}) is missing')
        return False

    def _chat_messages(self, line: int, record: dict[str, Any]) -> tuple[Message, ...] | None:
        raw_messages = record["messages"]
        if not isinstance(raw_messages, list):
            self.add_issue(
                line,
                "messages",
                "wrong_type",
                'must be a list of {"role": ..., "content": ...} objects, '
                f"got {_json_type_name(raw_messages)}",
            )
            return None
        if not raw_messages:
            self.add_issue(
                line,
                "messages",
                "empty_conversation",
                "the conversation has no messages; add at least a user and an assistant message",
            )
            return None
        messages: list[Message] = []
        all_usable = True
        seen_non_system = False
        for index, raw_message in enumerate(raw_messages):
            path = f"messages[{index}]"
            if not isinstance(raw_message, dict):
                self.add_issue(
                    line,
                    path,
                    "wrong_type",
                    'must be an object like {"role": "user", "content": "..."}, '
                    f"got {_json_type_name(raw_message)}",
                )
                all_usable = False
                continue
            for key in raw_message:
                if key not in _MESSAGE_KEYS:
                    self.add_issue(
                        line,
                        f"{path}.{key}",
                        "unknown_field",
                        f'unknown field "{key}"; a message may only have "role" and "content"',
                    )
                    all_usable = False
            role = self._role(line, path, raw_message)
            content: str | None = None
            if "content" not in raw_message:
                self.add_issue(
                    line, f"{path}.content", "missing_field", 'the field "content" is missing'
                )
            else:
                content = self._text_field(line, f"{path}.content", raw_message["content"])
            if role is None or content is None:
                all_usable = False
                continue
            if role == "system":
                if seen_non_system:
                    self.add_issue(
                        line,
                        f"{path}.role",
                        "system_not_first",
                        "system messages must come before all user and assistant messages",
                    )
                    all_usable = False
                    continue
            else:
                seen_non_system = True
            messages.append(Message(role=role, content=content))
        if not all_usable:
            return None
        if not any(message.role == "user" for message in messages):
            self.add_issue(
                line,
                "messages",
                "no_user_message",
                'the conversation needs at least one message with role "user"',
            )
            return None
        if messages[-1].role != "assistant":
            self.add_issue(
                line,
                f"messages[{len(messages) - 1}].role",
                "last_message_not_assistant",
                'the last message must have role "assistant" (the answer to train on), '
                f'got "{messages[-1].role}"',
            )
            return None
        return tuple(messages)

    def _role(self, line: int, path: str, raw_message: dict[str, Any]) -> str | None:
        if "role" not in raw_message:
            self.add_issue(line, f"{path}.role", "missing_field", 'the field "role" is missing')
            return None
        role = raw_message["role"]
        if not isinstance(role, str):
            self.add_issue(
                line, f"{path}.role", "wrong_type", f"must be a string, got {_json_type_name(role)}"
            )
            return None
        if role not in ROLES:
            shown = role if len(role) <= 40 else role[:40] + "..."
            self.add_issue(
                line,
                f"{path}.role",
                "invalid_role",
                f'must be one of "system", "user", "assistant", got "{shown}"',
            )
            return None
        return role

    def _prompt_completion_messages(
        self, line: int, record: dict[str, Any]
    ) -> tuple[Message, ...] | None:
        has_prompt = self._required(line, record, "prompt", "the user's request")
        has_completion = self._required(line, record, "completion", "the answer to train on")
        prompt = self._text_field(line, "prompt", record["prompt"]) if has_prompt else None
        completion = (
            self._text_field(line, "completion", record["completion"]) if has_completion else None
        )
        if prompt is None or completion is None:
            return None
        return (Message("user", prompt), Message("assistant", completion))

    def _alpaca_messages(self, line: int, record: dict[str, Any]) -> tuple[Message, ...] | None:
        has_instruction = self._required(line, record, "instruction", "the task")
        has_output = self._required(line, record, "output", "the answer to train on")
        instruction = (
            self._text_field(line, "instruction", record["instruction"])
            if has_instruction
            else None
        )
        output = self._text_field(line, "output", record["output"]) if has_output else None
        task_input = ""
        input_ok = True
        if "input" in record:
            checked = self._text_field(line, "input", record["input"], required_nonblank=False)
            input_ok = checked is not None
            task_input = checked or ""
        if instruction is None or output is None or not input_ok:
            return None
        user_content = f"{instruction}\n\n{task_input}" if task_input.strip() else instruction
        if len(user_content) > self.limits.max_message_chars:
            self.add_issue(
                line,
                "input",
                "message_too_long",
                f"instruction and input together are {len(user_content)} characters long; "
                f"the limit is {self.limits.max_message_chars}",
            )
            return None
        return (Message("user", user_content), Message("assistant", output))

    def _metadata(self, line: int, record: dict[str, Any]) -> dict[str, Any] | None:
        if "metadata" not in record:
            return {}
        metadata = record["metadata"]
        if not isinstance(metadata, dict):
            self.add_issue(
                line,
                "metadata",
                "wrong_type",
                f"must be an object, got {_json_type_name(metadata)}",
            )
            return None
        usable = True
        if "label" in metadata and metadata["label"] not in HARMFUL_LABELS:
            self.add_issue(
                line,
                "metadata.label",
                "invalid_value",
                f'must be "harmful" or "benign", got {json.dumps(metadata["label"])[:60]}',
            )
            usable = False
        if "category" in metadata and not isinstance(metadata["category"], str):
            self.add_issue(
                line,
                "metadata.category",
                "wrong_type",
                f"must be a string, got {_json_type_name(metadata['category'])}",
            )
            usable = False
        if any(_has_lone_surrogate(text) for text in _strings_in(metadata)):
            self.add_issue(
                line,
                "metadata",
                "invalid_unicode",
                "contains an unpaired surrogate escape (\\ud800-\\udfff), which is not valid text",
            )
            usable = False
        return metadata if usable else None

    # -- end of file -------------------------------------------------------------------

    def finish(self) -> tuple[list[Example], ValidationReport]:
        if self.n_content_lines == 0:
            self.add_issue(
                None,
                None,
                "empty_file",
                "the file has no examples; put one JSON object per line",
            )
        elif self.n_content_lines < self.limits.min_examples:
            self.add_issue(
                None,
                None,
                "too_few_examples",
                f"the file has {self.n_content_lines} example line(s); at least "
                f"{self.limits.min_examples} are required",
            )
        report = ValidationReport(
            format=self.format,
            n_lines=self.n_lines,
            n_examples=self.n_examples,
            n_duplicates=self.n_duplicates,
            issues=self.issues,
            issues_truncated=self.issues_truncated,
            n_errors=self.n_errors,
            n_warnings=self.n_warnings,
        )
        return self.examples, report


def validate_lines(
    lines: Iterable[bytes], limits: DatasetLimits = DatasetLimits()
) -> tuple[list[Example], ValidationReport]:
    """Validate JSONL lines (bytes, one item per line, terminator optional), never raising.

    Returns the valid examples (at most ``limits.max_examples``) and a report listing every
    problem. Train only when ``report.ok``; the examples of a failing file are partial.
    """
    validator = _Validator(limits)
    for raw in lines:
        validator.feed(bytes(raw))
    return validator.finish()


def iter_bounded_lines(handle: IO[bytes], max_line_bytes: int) -> Iterator[bytes]:
    """Yield the lines of a binary file without ever holding more than one bounded line.

    A line longer than ``max_line_bytes`` is yielded cut to just over the limit (so the validator
    reports it as too long) and the rest of it is skipped.
    """
    # Room for the limit plus a "\r\n" terminator plus one byte to tell "too long" apart.
    read_size = max_line_bytes + 3
    while True:
        part = handle.readline(read_size)
        if not part:
            return
        if part.endswith(b"\n") or len(part) < read_size:
            yield part
            continue
        while True:
            rest = handle.readline(1 << 16)
            if not rest or rest.endswith(b"\n"):
                break
        yield part


def validate_file(
    path: str | Path, limits: DatasetLimits = DatasetLimits()
) -> tuple[list[Example], ValidationReport]:
    """Validate a JSONL file on disk, streaming it line by line; never raises for bad content."""
    with Path(path).open("rb") as handle:
        return validate_lines(iter_bounded_lines(handle, limits.max_line_bytes), limits)


def load_examples(path: str | Path, limits: DatasetLimits = DatasetLimits()) -> list[Example]:
    """Load a training file; raises ``DatasetError`` (listing line and field of each problem)."""
    examples, report = validate_file(path, limits)
    if not report.ok:
        raise DatasetError(report, source=str(path))
    return examples
