"""The bench's `filter` baseline reads the BDS-pretrained scheduler, whose digest its cells record."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import bds_core.scoring
from bds_core.bench.filter import drop_flagged
from bds_core.scoring import default_scheduler_path, default_scoring_scheduler_path
from bds_core.training.config import TrainConfig


def test_filter_reads_the_scheduler_whose_digest_the_cells_record(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Safety reports default to the static scheduler; the bench's filter must not follow."""
    assert default_scoring_scheduler_path() != default_scheduler_path()
    read: list[Any] = []

    def fake_filter(examples: list[Any], scheduler_path: Any = None) -> tuple[list[Any], list[Any]]:
        read.append(scheduler_path)
        return list(examples), []

    monkeypatch.setattr(bds_core.scoring, "filter_examples", fake_filter)
    config = TrainConfig(
        model="m", train_file=tmp_path / "d.jsonl", out_dir=tmp_path, method="filter"
    )
    assert drop_flagged(config)(["an example"]) == ["an example"]
    assert read == [default_scheduler_path()]
