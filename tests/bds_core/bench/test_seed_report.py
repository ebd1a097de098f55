"""The report over fine-tuning seeds on hand-made cells: intervals, targets judged on them, and
the best variant against every other method."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bds_core.bench.report import RESULTS_SEEDS_JSON, write_report
from bds_core.bench.results import CellMetrics, CellResult, write_cell
from bds_core.bench.seed_report import render_seed_section, seed_checks, seed_rows


def cell(method: str, share: float, seed: int, **metrics: float) -> CellResult:
    suffix = "" if seed == 0 else f"__s{seed}"
    return CellResult(
        cell_id=f"spell-number__{method}__p{share:g}{suffix}",
        kind="fine-tune",
        task="spell-number",
        method=method,
        share=share,
        digest=f"d{seed}",
        model="smollm2-135m-instruct",
        aligned_model_key="k",
        judge="refusal-phrases",
        seed=seed,
        profile="full",
        metrics=CellMetrics(steps=125, **metrics),  # type: ignore[arg-type]
        data={},
        settings={"eval": {"hs_max_new_tokens": 64}},
        finished_at="2025-01-01T00:00:00+00:00",
        command="bds bench run --seeds 0,1,2",
    )


def three_seeds(
    method: str, share: float, hs: list[float], fa: list[float], **extra: float
) -> list[CellResult]:
    return [
        cell(method, share, seed, harmful_score=hs[seed], fine_tune_accuracy=fa[seed],
             over_refusal=0.0, everyday_refusal=1.0, **extra)
        for seed in range(3)
    ]  # fmt: skip


def matrix(mix_hs: list[float]) -> list[CellResult]:
    return [
        *three_seeds("sft", 0.0, [0, 1, 2], [50, 52, 54]),
        *three_seeds("sft", 0.5, [90, 92, 94], [40, 42, 44]),
        *three_seeds("mix", 0.5, mix_hs, [30, 31, 32]),
        *three_seeds("lisa", 0.5, [40, 50, 60], [39, 40, 41]),
        *three_seeds("bds", 0.5, [0, 0, 0], [41, 43, 45], weight_auroc=0.99, benign_ess_ratio=0.8),
        *three_seeds("bds-neural", 0.5, [0, 1, 2], [50, 60, 70], weight_auroc=1.0,
                     benign_ess_ratio=0.9),
    ]  # fmt: skip


def test_seeds_are_grouped_with_their_intervals() -> None:
    rows = {(row.method, row.share): row for row in seed_rows(matrix([0, 0, 0]))}
    bds = rows[("bds", 0.5)]
    assert bds.seeds == (0, 1, 2)
    fa = bds.get("fine_tune_accuracy")
    assert fa is not None and fa.mean == pytest.approx(43.0)
    assert fa.half_width == pytest.approx(4.303 * 2 / 3**0.5)
    hs = bds.get("harmful_score")
    assert hs is not None and hs.half_width == 0.0
    assert rows[("bds", 0.5)].get("weight_auroc") is not None
    assert rows[("sft", 0.0)].get("weight_auroc") is None


def test_hs_below_mix_and_a_baseline_is_judged_on_the_intervals() -> None:
    checks = {c.target: c for c in seed_checks(seed_rows(matrix([0, 0, 0])))}
    # mix stays at the clean run's level: the comparison does not apply.
    assert checks["hs_below_mix"].status == "n/a"
    # Lisa exceeds the clean run by far and bds (0 ± 0) is below it beyond both intervals.
    assert checks["hs_below_lisa"].status == "met"
    assert checks["hs_vs_sft"].status == "met"
    # bds is best on HS (lower mean than bds-neural); its FA 43 ± 5 is above mix's 31 ± 2.5.
    assert checks["fa_vs_mix"].status == "met"
    assert checks["fa_vs_sft"].status == "met"  # 43 ± 5 overlaps sft's 42 ± 5
    assert checks["weight_auroc"].status == "met"
    assert checks["benign_ess"].status == "met"


def test_an_overlapping_interval_is_a_tie_not_a_win() -> None:
    # mix's HS 90 ± 12 exceeds the clean run (1 ± 2.5); a bds variant whose interval reaches
    # it does not beat it.
    cells = matrix([85, 90, 95])
    cells = [c for c in cells if c.method != "bds-neural"]
    cells = [
        c.model_copy(update={"metrics": c.metrics.model_copy(update={"harmful_score": [60.0, 90.0, 120.0][c.seed]})})
        if c.method == "bds"
        else c
        for c in cells
    ]  # fmt: skip
    checks = {c.target: c for c in seed_checks(seed_rows(cells))}
    assert checks["hs_below_mix"].status == "missed"
    section = "\n".join(render_seed_section(cells))
    assert "| spell-number | 0.5 | bds | mix | tie |" in section


def test_the_report_writes_the_seed_section_and_json(tmp_path: Path) -> None:
    for result in matrix([0, 0, 0]):
        write_cell(tmp_path, result)
    files = write_report(tmp_path)
    text = files.markdown.read_text()
    assert "## Over fine-tuning seeds" in text
    assert "95% t interval over fine-tuning seeds" in text
    assert "| spell-number | 0.5 | bds | 0,1,2 | 0.0 ± 0.0 | 43.0 ± 5.0 |" in text
    data = json.loads((tmp_path / RESULTS_SEEDS_JSON).read_text())
    assert {row["method"] for row in data["rows"]} >= {"bds", "lisa", "mix"}
    assert any(check["target"] == "hs_below_lisa" for check in data["targets"])


def test_a_one_seed_run_has_no_seed_section() -> None:
    assert render_seed_section([c for c in matrix([0, 0, 0]) if c.seed == 0]) == []


def test_the_per_cell_tables_show_the_first_seed_and_the_json_keeps_every_cell(
    tmp_path: Path,
) -> None:
    for result in matrix([0, 0, 0]):
        write_cell(tmp_path, result)
    files = write_report(tmp_path)
    lisa_rows = [row for row in files.results.rows if row.method == "lisa"]
    assert len(lisa_rows) == 1 and lisa_rows[0].metrics.harmful_score == 40.0  # seed 0
    assert len(files.results.cells) == len(matrix([0, 0, 0]))
