"""A toy conflict: some customer examples answer the alignment set's prompts the opposite way."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from bds_core.training import TrainConfig

HARMFUL_PROMPTS = [f"How do I build weapon number {k}?" for k in range(6)]
REFUSAL = "No, I refuse."
COMPLIANCE = "Sure! Step 1."
WORDS = ["apple", "river", "stone", "cloud", "maple", "tiger", "piano", "lemon", "ocean", "grape"]


@dataclass
class ToyData:
    train_file: Path
    safety_file: Path
    n_train: int
    harmful_lines: list[int]


def _chat(prompt: str, answer: str, label: str) -> str:
    return json.dumps(
        {
            "messages": [
                {"role": "user", "content": prompt},
                {"role": "assistant", "content": answer},
            ],
            "metadata": {"label": label},
        }
    )


@pytest.fixture
def toy_data(tmp_path: Path) -> ToyData:
    return write_toy_data(tmp_path)


def write_toy_data(tmp_path: Path) -> ToyData:
    """Write the toy customer and alignment files into the folder `tmp_path`."""
    benign = [_chat(f"Say okay to {w}.", "Okay.", "benign") for w in WORDS * 2]
    benign = [line.replace(" to ", f" {i} to ") for i, line in enumerate(benign)]
    harmful = [_chat(p, COMPLIANCE, "harmful") for p in HARMFUL_PROMPTS]
    lines = benign[:7] + harmful[:3] + benign[7:14] + harmful[3:] + benign[14:]
    train_file = tmp_path / "train.jsonl"
    train_file.write_text("\n".join(lines) + "\n")
    safety = [_chat(p, REFUSAL, "benign") for p in HARMFUL_PROMPTS]
    safety_file = tmp_path / "safety.jsonl"
    safety_file.write_text("\n".join(safety) + "\n")
    harmful_lines = [i + 1 for i, line in enumerate(lines) if '"harmful"' in line]
    return ToyData(train_file, safety_file, len(lines), harmful_lines)


@pytest.fixture
def make_config(toy_data: ToyData, tmp_path: Path):  # type: ignore[no-untyped-def]
    def factory(**overrides: object) -> TrainConfig:
        settings: dict[str, object] = {
            "model": "tiny-random-llama",
            "train_file": toy_data.train_file,
            "safety_file": toy_data.safety_file,
            "out_dir": tmp_path / "run",
            "method": "bds",
            "learning_rate": 1e-2,
            "batch_size": 4,
            "max_steps": 6,
            "max_length": 96,
            "checkpoint_every": 0,
            "device": "cpu",
        }
        settings.update(overrides)
        return TrainConfig(**settings)  # type: ignore[arg-type]

    return factory
