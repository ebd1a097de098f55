"""Text of chosen examples of a stored dataset, for reports that show what a row is about."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bds_core.data import DatasetLimits, validate_lines

PREVIEW_CHARS = 400


@dataclass(frozen=True)
class ExamplePreview:
    """The prompt (user turns) and the answer of one example, cut to a readable length."""

    line: int
    prompt: str
    answer: str


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def example_previews(
    path: Path, lines: set[int], *, limit: int = PREVIEW_CHARS, max_line_bytes: int = 1 << 20
) -> dict[int, ExamplePreview]:
    """Previews of the examples on the given 1-based lines of a JSONL file (lines that are
    missing or do not parse are left out)."""
    if not lines or not path.is_file():
        return {}
    wanted = set(lines)
    last = max(wanted)
    limits = DatasetLimits(max_line_bytes=max_line_bytes, min_examples=1)
    previews: dict[int, ExamplePreview] = {}
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if number > last:
                break
            if number not in wanted or len(raw) > max_line_bytes:
                continue
            examples, _report = validate_lines([raw], limits)
            if not examples:
                continue
            example = examples[0]
            prompt = "\n".join(
                message.content for message in example.prompt_messages if message.role == "user"
            )
            previews[number] = ExamplePreview(
                line=number, prompt=_cut(prompt, limit), answer=_cut(example.answer, limit)
            )
    return previews
