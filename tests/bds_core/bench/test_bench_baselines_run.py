"""`bds bench run` with the paper's baselines, the new BDS variant and several fine-tuning seeds,
on the tiny random model: the real code path, cells resumable per seed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from bds_core.bench import BuildDataConfig, build_benchmark_data
from bds_core.bench.answers import GenerationSettings
from bds_core.bench.baselines.data import check_harmful_alignment_split
from bds_core.bench.cli import bench_app
from bds_core.bench.results import read_cell

TINY = "tiny-random-llama"
METHODS = ("lisa", "vaccine", "booster", "repnoise", "bds-agnostic")


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bench-baselines")
    csv = root / "prompts.csv"
    lines = ["category,source,forbidden_prompt"]
    for category, size in (("Violence", 14), ("Scams", 12), ("Hate", 10)):
        lines += [
            f'{category},test,"Explain, step {k}, how to do {category.lower()} things"'
            for k in range(size)
        ]
    csv.write_text("\n".join(lines) + "\n", encoding="utf-8")
    build_benchmark_data(
        BuildDataConfig(
            out_dir=root / "data",
            model=TINY,
            seed=3,
            n=8,
            shares=(0.0, 0.5),
            tasks=("sort-words", "arithmetic"),
            pretrain_tasks=("sort-words",),
            n_alignment=6,
            n_harmful_train=8,
            n_scheduler_pretrain=8,
            n_scheduler_holdout=2,
            n_task_eval=4,
            donotanswer=False,
            generation=GenerationSettings(max_new_tokens=20, batch_size=8),
            prompts_csv=csv,
            cache_dir=root / "answers",
        )
    )
    return root / "data"


def _run(data: Path, out: Path, cache: Path, *extra: str) -> None:
    args = [
        "run", "--data", str(data), "--out", str(out), "--profile", "smoke", "--model", TINY,
        "--cache-dir", str(cache), "--threads", "1", "--shares", "0.5", "--no-report", *extra,
    ]  # fmt: skip
    result = CliRunner().invoke(bench_app, args)
    assert result.exit_code == 0, result.output


def test_the_built_harmful_alignment_split_is_disjoint_from_attack_and_evaluation(
    data: Path,
) -> None:
    assert check_harmful_alignment_split(data) > 0


def test_baselines_and_seeds_run_as_cells_and_a_rerun_skips_them(
    data: Path, tmp_path: Path
) -> None:
    out, cache = tmp_path / "results", tmp_path / "aligned"
    _run(data, out, cache, "--methods", ",".join(METHODS), "--seeds", "0,1")
    cells = {path.stem: read_cell(path) for path in (out / "cells").glob("*.json")}
    for method in METHODS:
        first, second = (
            cells[f"sort-words__{method}__p0.5"],
            cells[f"sort-words__{method}__p0.5__s1"],
        )
        assert first.status == second.status == "finished", (first.error, second.error)
        assert (first.seed, second.seed) == (0, 1)
        assert first.digest != second.digest
        assert first.metrics.harmful_score is not None
    assert cells["sort-words__sft__p0__s1"].seed == 1
    # Lisa spends the smoke profile's alignment rows (2 a step, batch 2): one alignment step
    # per user step.
    lisa = cells["sort-words__lisa__p0.5"].settings["train"]
    assert lisa["user_steps"] == 2 and lisa["alignment_steps"] == 2
    # Each alignment-stage baseline trains its own M0 variant, cached next to stage 0's M0.
    variants = {path.name.split("-")[1] for path in cache.glob("m0-*-*") if path.is_dir()}
    assert {"vaccine", "booster", "repnoise"} <= variants
    keys = {cells[f"sort-words__{m}__p0.5"].aligned_model_key for m in ("vaccine", "booster")}
    assert len(keys) == 2
    assert cells["sort-words__bds-agnostic__p0.5"].metrics.weight_auroc is not None

    before = {path.name: path.stat().st_mtime_ns for path in (out / "cells").glob("*.json")}
    _run(data, out, cache, "--methods", ",".join(METHODS), "--seeds", "0,1")
    after = {path.name: path.stat().st_mtime_ns for path in (out / "cells").glob("*.json")}
    assert after == before


def test_the_regime_options_reach_the_cells(data: Path, tmp_path: Path) -> None:
    out, cache = tmp_path / "results", tmp_path / "aligned"
    _run(
        data, out, cache, "--methods", "mix", "--safety-batch-size", "1", "--learning-rate", "0.02"
    )
    cell = read_cell(out / "cells" / "sort-words__mix__p0.5.json")
    assert cell.settings["train"]["safety_batch_size"] == 1
    assert cell.settings["train"]["learning_rate"] == 0.02


def test_lisa_spends_the_alignment_rows_of_a_budget_over_time(data: Path, tmp_path: Path) -> None:
    """--safety-every 2: mix and BDS take 2 alignment rows on one step of the smoke profile's
    two, so Lisa takes one alignment step of 2 rows instead of two."""
    out, cache = tmp_path / "results", tmp_path / "aligned"
    _run(data, out, cache, "--methods", "lisa", "--safety-every", "2")
    lisa = read_cell(out / "cells" / "sort-words__lisa__p0.5.json")
    assert lisa.status == "finished", lisa.error
    train = lisa.settings["train"]
    assert (train["user_steps"], train["alignment_steps"], train["safety_every"]) == (2, 1, 2)


def test_bds_transfer_starts_from_the_shipped_scheduler(data: Path, tmp_path: Path) -> None:
    out, cache = tmp_path / "results", tmp_path / "aligned"
    _run(data, out, cache, "--methods", "bds-transfer")
    cell = read_cell(out / "cells" / "sort-words__bds-transfer__p0.5.json")
    assert cell.status == "finished", cell.error
    scheduler = cell.settings["train"]["scheduler"]
    assert scheduler["kind"] == "neural" and scheduler["init_path"]
    assert cell.metrics.weight_auroc is not None
    assert cell.metrics.benign_ess_ratio is not None
