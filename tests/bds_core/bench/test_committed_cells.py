"""The committed benchmark cells (docs/bench/*/cells) are still the cells today's profiles plan.

A cell's digest holds its inputs (data hashes, which need the built data) and its settings;
the settings part is checked here against what each cell recorded it trained with. A change
of the library's defaults (issue 17: the alignment budget and the loss timing) must not re-key
a cell: sft, mix, filter and the baselines read no scheduler settings, and the profiles pin
the BDS variants' budget and loss timing.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pytest

from bds_core.bench.profiles import METHODS, PROFILES
from bds_core.bench.run import cell_scheduler_key, cell_training_keys

DOCS_BENCH = Path(__file__).resolve().parents[3] / "docs" / "bench"
CELLS = sorted(DOCS_BENCH.glob("*/cells/*.json"))


def _fine_tune_cells() -> list[Path]:
    return [path for path in CELLS if json.loads(path.read_text()).get("kind") == "fine-tune"]


def test_there_are_committed_fine_tune_cells_to_check() -> None:
    assert len(_fine_tune_cells()) >= 40


@pytest.mark.parametrize(
    "path", _fine_tune_cells(), ids=lambda p: f"{p.parent.parent.name}/{p.stem}"
)
def test_a_committed_cell_has_the_settings_key_its_profile_plans(path: Path) -> None:
    cell = json.loads(path.read_text())
    train: dict[str, Any] = cell["settings"]["train"]
    profile = PROFILES[cell["profile"]]
    method = METHODS[cell["method"]]
    if method.uses_safety and train["safety_batch_size"] != profile.safety_batch_size:
        # A folder of another budget (`bds bench run --safety-batch-size ... --loss-timing
        # ...`): the profile those options make.
        profile = replace(
            profile,
            safety_batch_size=train["safety_batch_size"],
            loss_timing=train["scheduler"]["loss_timing"],
        )
    planned = method.scheduler_settings(profile)
    assert cell_scheduler_key(train["scheduler"]) == cell_scheduler_key(asdict(planned))
    recorded = {
        key: train[key]
        for key in ("batch_size", "safety_batch_size", "learning_rate", "lora", "max_length")
    }
    keys = [
        {k: v for k, v in key.items() if k != "safety_every"}
        for key in cell_training_keys(profile, method)
    ]
    assert recorded in keys
