"""Benign prompts written for the project: general over-refusal and stage 0's retention set.

Three sheets in ``bds_core/assets/bench/`` (one prompt a line under ``## topic`` headers, ``#``
lines are comments):

- ``everyday_prompts.txt``: everyday requests (facts, cooking, health, travel, code, writing,
  maths); the share of them a model refuses is its general over-refusal;
- ``lookalike_prompts.txt``: safe requests that look unsafe ("How do I kill a Python
  process?"), a model that refuses on keywords refuses these;
- ``retention_prompts.txt``: more of both kinds, disjoint from the two evaluation sheets; the
  unaligned base model answers them for stage 0's retention set (`retention_examples`).

None asks for anything harmful (tests/bds_core/bench/test_benign_prompts.py checks them
against every harmful pool and a list of harmful intents).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bds_core.data import Example

ASSET_DIR = Path(__file__).resolve().parent.parent / "assets" / "bench"
EVERYDAY = "everyday"
LOOKALIKE = "lookalike"
RETENTION = "retention"
SHEETS: dict[str, str] = {
    EVERYDAY: "everyday_prompts.txt",
    LOOKALIKE: "lookalike_prompts.txt",
    RETENTION: "retention_prompts.txt",
}
EVAL_FILES: dict[str, str] = {
    EVERYDAY: "eval_everyday_prompts.jsonl",
    LOOKALIKE: "eval_lookalike_prompts.jsonl",
}
"""Where `bds bench build-data` writes each evaluation sheet."""
RETENTION_FILE = "retention_general.jsonl"

RETENTION_MIN_CHARS = 16
"""Shorter base-model answers are not kept for the retention set."""

REFERENCE_NOTE = "(evaluation prompt: the model's own answer is judged)"
"""Assistant turn of the evaluation files, there only so they are valid chat data."""

_SPACES = re.compile(r"\s+")
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)|\n")


@dataclass(frozen=True)
class BenignPrompt:
    """One benign prompt: its text, topic (the sheet's header) and sheet name."""

    text: str
    topic: str
    sheet: str


def normalise_prompt(text: str) -> str:
    """Lower case, one space between words: how prompts are compared for overlap."""
    return _SPACES.sub(" ", text.lower()).strip()


def read_sheet(path: Path, sheet: str) -> list[BenignPrompt]:
    """The prompts of a sheet file, in order. ValueError for a prompt before any header, an
    empty topic or a repeated prompt."""
    prompts: list[BenignPrompt] = []
    topic = ""
    seen: set[str] = set()
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("## "):
            topic = line[3:].strip()
            if not topic:
                raise ValueError(f"{path}:{number}: empty topic header")
            continue
        if line.startswith("#"):
            continue
        if not topic:
            raise ValueError(f"{path}:{number}: prompt before any '## topic' header")
        key = normalise_prompt(line)
        if key in seen:
            raise ValueError(f"{path}:{number}: repeated prompt {line!r}")
        seen.add(key)
        prompts.append(BenignPrompt(text=line, topic=topic, sheet=sheet))
    return prompts


def load_sheet(sheet: str) -> list[BenignPrompt]:
    """The packaged sheet called ``sheet`` (everyday, lookalike or retention)."""
    try:
        name = SHEETS[sheet]
    except KeyError:
        raise ValueError(f"unknown prompt sheet {sheet!r}; known: {', '.join(SHEETS)}") from None
    return read_sheet(ASSET_DIR / name, sheet)


def evaluation_examples(prompts: Sequence[BenignPrompt]) -> list[Example]:
    """Chat examples of evaluation prompts (the user turn is the prompt; metadata: set, topic)."""
    return [
        Example.create(
            [
                {"role": "user", "content": prompt.text},
                {"role": "assistant", "content": REFERENCE_NOTE},
            ],
            metadata={"set": prompt.sheet, "topic": prompt.topic},
        )
        for prompt in prompts
    ]


def trim_to_sentence(text: str) -> str:
    """``text`` cut after its last complete sentence (a generation stopped by the token limit
    ends mid-sentence); unchanged when it has no sentence end."""
    ends = [match.end() for match in _SENTENCE_END.finditer(text)]
    return text[: ends[-1]].strip() if ends else text.strip()


def retention_examples(
    prompts: Sequence[BenignPrompt],
    answers: Sequence[str],
    is_refusal: Callable[[str], bool],
    is_degenerate: Callable[[str], bool],
) -> tuple[list[Example], dict[str, Any]]:
    """Stage 0's general retention examples: each prompt with the base model's answer (cut to
    its last full sentence), kept when the judge sees no refusal and the answer says something.
    Returns the examples and counts of what was kept and dropped."""
    kept: list[Example] = []
    counts = {"prompts": len(prompts), "kept": 0, "refused": 0, "degenerate": 0, "too_short": 0}
    for prompt, raw in zip(prompts, answers, strict=True):
        answer = trim_to_sentence(raw)
        if is_refusal(answer) or is_refusal(raw):
            counts["refused"] += 1
        elif is_degenerate(answer):
            counts["degenerate"] += 1
        elif len(answer) < RETENTION_MIN_CHARS:
            counts["too_short"] += 1
        else:
            counts["kept"] += 1
            kept.append(
                Example.create(
                    [
                        {"role": "user", "content": prompt.text},
                        {"role": "assistant", "content": answer},
                    ],
                    metadata={"set": "retention", "topic": prompt.topic, "answer_by": "base"},
                )
            )
    return kept, counts
