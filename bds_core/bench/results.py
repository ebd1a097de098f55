"""The benchmark's result documents: one JSON file per finished cell, and the report's JSON.

A cell is one measured model: the aligned base model M0 of a task, a method fine-tuned at one
harmful share, or the shipped pretrained scheduler's detection check. Each is written
atomically to ``RESULTS/cells/<cell_id>.json`` when it finishes, so an interrupted run loses at
most the cell in progress and a rerun skips the finished ones. The shapes are pydantic models;
any change to them bumps `RESULTS_SCHEMA_VERSION`.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

RESULTS_SCHEMA_VERSION: Literal["2"] = "2"
"""2 added general over-refusal and degenerate answers; version-1 cells still read."""
READABLE_CELL_VERSIONS: tuple[str, ...] = ("1", "2")
CELLS_DIR = "cells"

CellKind = Literal["base", "fine-tune", "detection"]
CellStatus = Literal["finished", "failed"]
TargetStatus = Literal["met", "missed", "n/a"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CellMetrics(_Strict):
    """What was measured on one cell; None where it does not apply."""

    harmful_score: float | None = Field(
        default=None, description="HS, percent of harmful prompts answered (not refused)"
    )
    fine_tune_accuracy: float | None = Field(
        default=None, description="FA, percent exact match on held-out task items"
    )
    over_refusal: float | None = Field(
        default=None, description="percent of benign task prompts refused"
    )
    everyday_refusal: float | None = Field(
        default=None, description="percent of the everyday benign prompts refused"
    )
    lookalike_refusal: float | None = Field(
        default=None, description="percent of the safe prompts that look unsafe refused"
    )
    degenerate_harmful: float | None = Field(
        default=None,
        description="percent of answers to harmful prompts that are degenerate (counted in HS)",
    )
    degenerate_everyday: float | None = Field(
        default=None, description="percent of answers to everyday prompts that are degenerate"
    )
    weight_auroc: float | None = Field(
        default=None, description="AUROC of -weight against the hidden harmful labels"
    )
    weight_recall_at_5_fpr: float | None = Field(
        default=None, description="share of harmful examples caught at 5% false positives"
    )
    benign_ess_ratio: float | None = Field(
        default=None, description="effective sample size of the benign weights over their count"
    )
    ess_ratio: float | None = Field(
        default=None, description="effective sample size of all weights over their count"
    )
    mean_weight_harmful: float | None = None
    mean_weight_benign: float | None = None
    interval_coverage: float | None = Field(
        default=None,
        description="sampling only: mean of the two shares below (coverage of the labels by "
        "'90% weight interval entirely below 1')",
    )
    harmful_interval_below_one: float | None = Field(
        default=None,
        description="sampling only: share of harmful examples whose 90% interval lies below 1",
    )
    benign_interval_not_below_one: float | None = Field(
        default=None,
        description="sampling only: share of benign examples whose 90% interval does not",
    )
    seconds_per_step: float | None = Field(
        default=None, description="wall seconds per training step"
    )
    steps: int = Field(default=0, ge=0, description="training steps")
    passes: float | None = Field(
        default=None, description="passes over the (kept) D_ft examples: steps * batch / n"
    )
    train_seconds: float = Field(default=0.0, ge=0, description="model load and training")
    eval_seconds: float = Field(default=0.0, ge=0, description="evaluation")
    total_seconds: float = Field(default=0.0, ge=0, description="the whole cell")
    peak_rss_mb: float | None = Field(default=None, description="peak resident memory, MiB")
    peak_rss_scope: Literal["cell", "process"] = Field(
        default="cell",
        description="'cell': peak since the cell started; 'process': since the run started",
    )
    n_train_examples: int | None = Field(default=None, description="examples trained on")
    n_harmful_examples: int | None = Field(default=None, description="harmful ones among D_ft")
    n_dropped_examples: int | None = Field(default=None, description="dropped by the filter")
    n_eval_prompts: int | None = None
    n_task_items: int | None = None
    n_everyday_prompts: int | None = None
    n_lookalike_prompts: int | None = None


class PretrainedDetection(_Strict):
    """The shipped scheduler scoring data it never saw (harmful holdout and task items)."""

    scheduler: str
    files: list[str]
    n_examples: int = Field(ge=0)
    n_harmful: int = Field(ge=0)
    auroc: float | None
    recall_at_5_fpr: float | None
    flagged_precision: float | None
    flagged_recall: float | None
    harmful_share_estimate: float
    examples_per_second: float


class CellResult(_Strict):
    """One finished cell."""

    schema_version: Literal["1", "2"] = RESULTS_SCHEMA_VERSION
    cell_id: str
    kind: CellKind
    status: CellStatus = Field(
        default="finished", description="'failed': the error is kept and a rerun retries it"
    )
    error: str | None = Field(default=None, description="why a failed cell failed")
    task: str
    method: str = Field(description="sft, mix, bds, ... ; 'm0' for the aligned base model")
    share: float | None = Field(description="harmful share p of D_ft (None: no fine-tuning)")
    digest: str = Field(description="hash of every input and setting; a rerun reuses equal ones")
    model: str = Field(description="base model before stage 0")
    aligned_model_key: str
    judge: str
    seed: int
    profile: str
    metrics: CellMetrics
    detection: PretrainedDetection | None = None
    data: dict[str, str] = Field(description="file name -> sha256 of every input file")
    settings: dict[str, Any] = Field(description="training and evaluation settings")
    samples: list[dict[str, Any]] = Field(default_factory=list, description="answers to read")
    finished_at: str = Field(description="ISO 8601 UTC")
    command: str


class TargetCheck(_Strict):
    """One target of benchmark.md at one harmful share."""

    task: str
    share: float
    target: str = Field(description="short name of the target")
    description: str
    method: str | None = Field(description="the BDS variant checked (the best one at this p)")
    value: float | None
    threshold: float | None = Field(description="the bound the value is compared with")
    status: TargetStatus
    note: str = ""


class ResultRow(_Strict):
    """One row of the table: a cell's metrics plus ratios to sft at the same task and p."""

    cell_id: str
    kind: CellKind
    status: CellStatus
    error: str | None
    task: str
    method: str
    share: float | None
    metrics: CellMetrics
    time_ratio_to_sft: float | None = Field(description="seconds per step over sft's")
    clean: bool = Field(description="the clean run: sft at p = 0")


class BenchResults(_Strict):
    """Everything `bds bench report` writes as JSON."""

    schema_version: Literal["2"] = RESULTS_SCHEMA_VERSION
    created_at: str
    model: str
    judges: list[str]
    profiles: list[str]
    seeds: list[int]
    commands: list[str]
    runs: list[dict[str, Any]] = Field(description="run.json entries: command, machine, times")
    rows: list[ResultRow]
    targets: list[TargetCheck]
    detection: list[PretrainedDetection]
    cells: list[CellResult]
    plots: list[str]


class ResultsError(ValueError):
    """A results file is missing or invalid; the message names the file and the fields."""


def _problems(error: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(part) for part in issue['loc']) or '(root)'}: {issue['msg']}"
        for issue in error.errors()
    )


def cell_path(results_dir: Path, cell_id: str) -> Path:
    """Where a cell's JSON lives."""
    return results_dir / CELLS_DIR / f"{cell_id}.json"


def write_json_atomically(path: Path, data: Any) -> None:
    """Write JSON to a temporary sibling, flush it to disk, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_cell(results_dir: Path, cell: CellResult) -> Path:
    """Write a finished cell atomically; returns its path."""
    path = cell_path(results_dir, cell.cell_id)
    write_json_atomically(path, cell.model_dump(mode="json"))
    return path


def read_cell(path: Path) -> CellResult:
    """Load and validate one cell file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ResultsError(f"{path}: not a readable JSON file ({error})") from None
    version = data.get("schema_version") if isinstance(data, dict) else None
    if version not in READABLE_CELL_VERSIONS:
        raise ResultsError(
            f"{path}: cell schema_version {version!r}, this library reads "
            f"{' and '.join(READABLE_CELL_VERSIONS)}; rerun that cell (delete the file)"
        )
    try:
        return CellResult.model_validate(data)
    except ValidationError as error:
        raise ResultsError(f"{path}: invalid cell: {_problems(error)}") from None


def read_cells(results_dir: Path) -> list[CellResult]:
    """Every cell in a results folder, sorted by file name."""
    folder = results_dir / CELLS_DIR
    if not folder.is_dir():
        raise ResultsError(
            f"{results_dir} holds no {CELLS_DIR}/ folder; run `bds bench run --out "
            f"{results_dir}` first"
        )
    return [read_cell(path) for path in sorted(folder.glob("*.json"))]


def validate_results(data: Any) -> BenchResults:
    """Parse and validate a results document; ResultsError names each bad field."""
    version = data.get("schema_version") if isinstance(data, dict) else None
    if version != RESULTS_SCHEMA_VERSION:
        raise ResultsError(
            f"unsupported results schema_version {version!r}; this library reads "
            f"{RESULTS_SCHEMA_VERSION!r}"
        )
    try:
        return BenchResults.model_validate(data)
    except ValidationError as error:
        raise ResultsError(f"invalid results: {_problems(error)}") from None


def results_json_schema() -> dict[str, Any]:
    """The JSON schema (draft 2020-12) of the report's results.json."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **BenchResults.model_json_schema(mode="serialization"),
    }
