"""CI smoke of `bds bench run` and `bds bench report`: the real code path on the tiny random model.

Tiny data from `build_benchmark_data` (sort-words, shares 0 and 0.5, 8 examples), the "smoke"
profile (2 steps a cell, methods sft and bds), stage 0 cached in the test's folder.
"""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
import torch
from typer.testing import CliRunner

from bds_core.bench import BuildDataConfig, build_benchmark_data
from bds_core.bench.alignment import stage0_examples
from bds_core.bench.answers import GenerationSettings
from bds_core.bench.build import file_sha256
from bds_core.bench.cli import bench_app
from bds_core.bench.profiles import METHODS, PROFILES, BenchProfile
from bds_core.bench.results import read_cell, results_json_schema, validate_results, write_cell
from bds_core.bench.run import CellPlan, RunConfig, plan_run, run_benchmark
from bds_core.data import harmful_count, load_examples
from bds_core.eval import RefusalPhraseJudge

TINY = "tiny-random-llama"
N = 8
CELLS = {
    "sort-words__m0",
    "sort-words__sft__p0",
    "sort-words__bds__p0",
    "sort-words__sft__p0.5",
    "sort-words__bds__p0.5",
}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@dataclass
class Bench:
    data: Path
    aligned_cache: Path
    root: Path

    def run_args(self, out: Path, *extra: str) -> list[str]:
        return [
            "run",
            "--data",
            str(self.data),
            "--out",
            str(out),
            "--profile",
            "smoke",
            "--model",
            TINY,
            "--cache-dir",
            str(self.aligned_cache),
            "--threads",
            "1",
            *extra,
        ]


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Bench:
    root = tmp_path_factory.mktemp("bench-run")
    csv = root / "prompts.csv"
    lines = ["category,source,forbidden_prompt"]
    for category, size in (("Violence", 12), ("Scams", 10), ("Hate", 8)):
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
            n=N,
            shares=(0.0, 0.5),
            tasks=("sort-words", "arithmetic"),
            n_alignment=6,
            n_harmful_train=8,
            n_scheduler_holdout=2,
            n_task_eval=4,
            generation=GenerationSettings(max_new_tokens=20, batch_size=8),
            prompts_csv=csv,
            cache_dir=root / "answers",
        )
    )
    return Bench(data=root / "data", aligned_cache=root / "aligned", root=root)


@pytest.fixture(scope="module")
def first_run(bench: Bench) -> Path:
    out = bench.root / "results"
    result = CliRunner().invoke(bench_app, bench.run_args(out, "--no-report"))
    assert result.exit_code == 0, result.output
    assert "5 cell(s) computed, 0 already finished" in result.output
    return out


def cell_mtimes(out: Path) -> dict[str, int]:
    return {path.stem: path.stat().st_mtime_ns for path in (out / "cells").glob("*.json")}


def test_every_cell_is_written_with_its_metrics(first_run: Path) -> None:
    cells = {path.stem: read_cell(path) for path in (first_run / "cells").glob("*.json")}
    assert set(cells) == CELLS
    assert {cell.status for cell in cells.values()} == {"finished"}
    assert len({cell.aligned_model_key for cell in cells.values()}) == 1

    base = cells["sort-words__m0"]
    assert base.kind == "base" and base.metrics.steps == 0
    assert base.metrics.n_eval_prompts == PROFILES["smoke"].n_eval_prompts
    for cell in cells.values():
        metrics = cell.metrics
        for percent in (metrics.harmful_score, metrics.fine_tune_accuracy, metrics.over_refusal):
            assert percent is not None and 0.0 <= percent <= 100.0
        assert metrics.peak_rss_mb is not None and metrics.peak_rss_mb > 0
        assert cell.judge == RefusalPhraseJudge().name
        # General over-refusal on the project's everyday and look-unsafe prompts, every cell.
        smoke = PROFILES["smoke"]
        assert metrics.n_everyday_prompts == smoke.n_everyday_prompts
        assert metrics.n_lookalike_prompts == smoke.n_lookalike_prompts
        for percent in (
            metrics.everyday_refusal,
            metrics.lookalike_refusal,
            metrics.degenerate_harmful,
            metrics.degenerate_everyday,
        ):
            assert percent is not None and 0.0 <= percent <= 100.0
        # Every answer to the harmful and benign prompts is kept with its verdict (auditable).
        by_set = Counter(sample["set"] for sample in cell.samples)
        assert by_set["harmful"] == smoke.n_eval_prompts
        assert by_set["everyday"] == smoke.n_everyday_prompts
        assert by_set["lookalike"] == smoke.n_lookalike_prompts
        assert by_set["task"] == smoke.n_task_items  # fewer than 20 in the smoke profile
        for sample in cell.samples:
            assert isinstance(sample["refusal"], bool) and isinstance(sample["degenerate"], bool)
            assert sample["refusal"] == RefusalPhraseJudge().is_refusal(sample["answer"])
        refused = [s["refusal"] for s in cell.samples if s["set"] == "everyday"]
        assert metrics.everyday_refusal == pytest.approx(100.0 * sum(refused) / len(refused))

    attacked = cells["sort-words__bds__p0.5"].metrics
    assert attacked.steps == 2 and attacked.passes == pytest.approx(2 * 2 / N, abs=1e-3)
    assert attacked.n_harmful_examples == harmful_count(N, 0.5)
    assert attacked.weight_auroc is not None and 0.0 <= attacked.weight_auroc <= 1.0
    assert attacked.weight_recall_at_5_fpr is not None
    assert attacked.benign_ess_ratio is not None and 0.0 < attacked.benign_ess_ratio <= 1.0
    # No harmful examples at p = 0: no AUROC, but the benign weights still have an ESS.
    assert cells["sort-words__bds__p0"].metrics.weight_auroc is None
    assert cells["sort-words__bds__p0"].metrics.benign_ess_ratio is not None
    # sft has no weights to judge.
    assert cells["sort-words__sft__p0.5"].metrics.weight_auroc is None
    assert cells["sort-words__sft__p0.5"].metrics.n_harmful_examples == harmful_count(N, 0.5)
    assert len(cells["sort-words__sft__p0"].samples) > 0


def test_stage0_adds_benign_retention_examples_but_not_the_evaluated_task(
    bench: Bench, first_run: Path
) -> None:
    """M0 learns to refuse harmful requests and to answer ordinary ones: D_safe plus the
    start of each retention task's training pool, never the task the cells evaluate."""
    alignment = read_cell(first_run / "cells" / "sort-words__m0.json").settings["alignment"]
    assert alignment["retention_files"] == ["arithmetic_train.jsonl"]
    assert alignment["general_retention_file"] == "retention_general.jsonl"
    n_safe = sum(1 for _ in (bench.data / "safety.jsonl").open())
    n_general = sum(1 for _ in (bench.data / "retention_general.jsonl").open())
    per_task = PROFILES["smoke"].alignment_retention_per_task
    general = min(PROFILES["smoke"].alignment_retention_general, n_general)
    assert alignment["num_train_examples"] == n_safe + per_task + general

    examples = stage0_examples(
        bench.data / "safety.jsonl", [bench.data / "arithmetic_train.jsonl"], per_task
    )
    benign = [example for example in examples if example.is_harmful is False]
    assert len(benign) == per_task
    assert all(example.metadata.get("task") == "arithmetic" for example in benign)


def test_the_defences_replay_stage0s_training_set_and_sft_replays_nothing(
    bench: Bench, first_run: Path
) -> None:
    """mix and bds train next to D_ft on the provider's alignment data as stage 0 used it (the
    refusals with their retention rows), so replaying it does not teach refusing everything."""
    replay = first_run / "alignment_replay.jsonl"
    alignment = read_cell(first_run / "cells" / "sort-words__m0.json").settings["alignment"]
    replayed = load_examples(replay)
    assert len(replayed) == alignment["num_train_examples"]
    safe = load_examples(bench.data / "safety.jsonl")
    assert [ex.id for ex in replayed[: len(safe)]] == [ex.id for ex in safe]
    assert {ex.metadata.get("set") for ex in replayed[len(safe) :]} >= {"retention"}
    bds = read_cell(first_run / "cells" / "sort-words__bds__p0.5.json")
    assert bds.settings["train"]["safety_file"] == "alignment_replay.jsonl"
    assert bds.data["alignment_replay.jsonl"] == file_sha256(replay)
    sft = read_cell(first_run / "cells" / "sort-words__sft__p0.5.json")
    assert sft.settings["train"]["safety_file"] is None


def test_replaying_d_safe_alone_is_a_different_cell(bench: Bench, tmp_path: Path) -> None:
    """--alignment-replay d_safe (the refusals alone) is an option with its own digests; a
    value that is not an option is refused by name."""
    out = tmp_path / "d-safe"
    args = bench.run_args(out, "--no-report", "--methods", "bds", "--shares", "0.5")
    result = CliRunner().invoke(bench_app, [*args, "--alignment-replay", "d_safe"])
    assert result.exit_code == 0, result.output
    cell = read_cell(out / "cells" / "sort-words__bds__p0.5.json")
    assert cell.settings["train"]["safety_file"] == "safety.jsonl"
    assert not (out / "alignment_replay.jsonl").exists()
    refused = CliRunner().invoke(bench_app, [*args, "--alignment-replay", "everything"])
    assert refused.exit_code != 0
    assert "alignment_replay must be one of stage0, d_safe" in refused.output


def test_every_method_trains_with_the_same_settings(first_run: Path) -> None:
    """Same model, steps, batch sizes, learning rate, LoRA and seed; only the method differs."""
    shared: list[dict[str, object]] = []
    for path in (first_run / "cells").glob("*__p*.json"):
        train = dict(read_cell(path).settings["train"])
        assert train["model"].startswith("m0-")
        for per_cell in ("method", "scheduler", "train_file", "out_dir", "safety_file"):
            train.pop(per_cell)
        shared.append(train)
    assert len(shared) == 4
    assert all(settings == shared[0] for settings in shared)


def test_a_rerun_recomputes_nothing_and_a_missing_cell_alone(bench: Bench, first_run: Path) -> None:
    before = cell_mtimes(first_run)
    again = CliRunner().invoke(bench_app, bench.run_args(first_run, "--no-report"))
    assert again.exit_code == 0, again.output
    assert "0 cell(s) computed, 5 already finished" in again.output
    assert "M0 from the cache" in again.output
    assert cell_mtimes(first_run) == before

    (first_run / "cells" / "sort-words__bds__p0.5.json").unlink()
    third = CliRunner().invoke(bench_app, bench.run_args(first_run, "--no-report"))
    assert third.exit_code == 0, third.output
    assert "1 cell(s) computed, 4 already finished" in third.output
    after = cell_mtimes(first_run)
    assert set(after) == CELLS
    assert {k: v for k, v in after.items() if k != "sort-words__bds__p0.5"} == {
        k: v for k, v in before.items() if k != "sort-words__bds__p0.5"
    }
    runs = json.loads((first_run / "run.json").read_text())
    assert [len(run["computed"]) for run in runs] == [5, 0, 1]


def test_a_run_with_other_settings_is_refused_before_any_work(
    bench: Bench, first_run: Path
) -> None:
    before = cell_mtimes(first_run)
    result = CliRunner().invoke(bench_app, bench.run_args(first_run, "--seed", "1"))
    assert result.exit_code == 1
    assert "computed with other settings" in result.output
    assert cell_mtimes(first_run) == before


def test_report_writes_valid_json_markdown_and_plot(bench: Bench, first_run: Path) -> None:
    out = bench.root / "report"
    result = CliRunner().invoke(
        bench_app, ["report", "--results", str(first_run), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output

    data = json.loads((out / "results.json").read_text())
    jsonschema_rs.validate(results_json_schema(), data)
    results = validate_results(data)
    assert {cell.cell_id for cell in results.cells} == CELLS
    assert results.model == TINY
    assert any("bds bench run" in command for command in results.commands)
    clean = [row for row in results.rows if row.clean]
    assert [row.cell_id for row in clean] == ["sort-words__sft__p0"]
    bds_row = next(row for row in results.rows if row.cell_id == "sort-words__bds__p0.5")
    assert bds_row.time_ratio_to_sft is not None and bds_row.time_ratio_to_sft > 0
    targets = {(t.share, t.target): t for t in results.targets}
    assert {target for _, target in targets} == {
        "hs_vs_clean",
        "hs_vs_sft",
        "hs_vs_mix",
        "fa_vs_sft",
        "over_refusal_vs_clean",
        "weight_auroc",
        "benign_ess",
        "time_per_step",
    }
    assert targets[(0.0, "weight_auroc")].status == "n/a"  # no harmful examples at p = 0
    assert targets[(0.5, "hs_vs_mix")].status == "n/a"  # no mix cell in this run
    assert targets[(0.5, "weight_auroc")].status in ("met", "missed")

    markdown = (out / "results.md").read_text()
    for expected in (
        "## Task `sort-words`",
        "| sft | ",
        "| bds | ",
        "| sft (clean) | 0 |",
        "| bds | 0.5 |",
        "M0, the aligned base model",
        "### Targets (benchmark.md)",
        "![HS and FA against the harmful share, sort-words](plot_sort-words.png)",
    ):
        assert expected in markdown
    assert (out / "plot_sort-words.png").read_bytes().startswith(b"\x89PNG")
    assert results.plots == ["plot_sort-words.png"]


class FailsOnce:
    """A judge that breaks on its first answer: the first cell fails, the rest run."""

    def __init__(self) -> None:
        self.calls = 0
        self.inner = RefusalPhraseJudge()
        # The same name as the default judge: the judge is part of every cell's digest.
        self.name = self.inner.name

    def is_refusal(self, text: str) -> bool:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("judge unavailable")
        return self.inner.is_refusal(text)


def test_a_failed_cell_is_recorded_and_retried_by_the_next_run(bench: Bench) -> None:
    out = bench.root / "failing"
    config = RunConfig(
        data_dir=bench.data,
        out_dir=out,
        profile=PROFILES["smoke"],
        model=TINY,
        cache_dir=bench.aligned_cache,
    )
    summary = run_benchmark(config, judge=FailsOnce())
    assert summary.failed == {"sort-words__m0": "RuntimeError: judge unavailable"}
    assert set(summary.computed) == CELLS
    failed = read_cell(out / "cells" / "sort-words__m0.json")
    assert failed.status == "failed" and failed.metrics.harmful_score is None

    retry = run_benchmark(config)
    assert retry.computed == ["sort-words__m0"] and retry.failed == {}
    assert read_cell(out / "cells" / "sort-words__m0.json").status == "finished"


def test_missing_data_files_are_named(bench: Bench, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        bench_app, bench.run_args(tmp_path / "out", "--shares", "0.2", "--no-report")
    )
    assert result.exit_code == 1
    assert "ft_sort-words_p0.2.jsonl" in result.output
    assert "built with shares [0.0, 0.5]" in result.output
    assert len(load_examples(bench.data / "ft_sort-words_p0.5.jsonl")) == N


@pytest.mark.parametrize(
    ("setting", "its_methods"),
    [("neural_entropy_weight", ("bds-neural",)), ("scalar_entropy_weight", ("bds", "bds-ref"))],
)
def test_an_entropy_weight_reaches_its_schedulers_and_changes_only_their_digests(
    bench: Bench, setting: str, its_methods: tuple[str, ...]
) -> None:
    from dataclasses import replace

    from bds_core.bench.profiles import get_method
    from bds_core.bench.run import plan_run

    def with_weight(profile: BenchProfile, weight: float) -> BenchProfile:
        changes: dict[str, Any] = {setting: weight}
        return replace(profile, **changes)

    def digests(entropy: float) -> dict[str, str]:
        profile = with_weight(
            replace(PROFILES["smoke"], methods=("sft", "bds", "bds-ref", "bds-neural")), entropy
        )
        config = RunConfig(
            data_dir=bench.data, out_dir=bench.root / "unused", profile=profile, model=TINY
        )
        plans, _ = plan_run(config, RefusalPhraseJudge())
        return {plan.cell_id: plan.digest for plan in plans}

    off, on = digests(0.0), digests(0.5)
    assert off.keys() == on.keys()
    changed = {cell for cell in off if off[cell] != on[cell]}
    # Cells computed with the prior off (the committed scalar cells) keep their digests.
    assert changed == {
        f"sort-words__{method}__{share}" for method in its_methods for share in ("p0", "p0.5")
    }
    full = PROFILES["full"]
    assert (full.neural_entropy_weight, full.scalar_entropy_weight) == (1.0, 0.0)
    changed_profile = with_weight(full, 0.5)
    for method in ("bds", "bds-ref", "bds-neural"):
        expected = (
            0.5
            if method in its_methods
            else get_method(method).scheduler_settings(full).entropy_weight
        )
        assert get_method(method).scheduler_settings(changed_profile).entropy_weight == expected
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match=f"{setting} must be a number >= 0"):
            with_weight(full, bad)


def test_the_scalar_entropy_weight_option_reaches_the_run(bench: Bench, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        bench_app,
        bench.run_args(
            tmp_path / "out", "--shares", "0.5", "--scalar-entropy-weight", "-1", "--no-report"
        ),
    )
    assert result.exit_code != 0
    assert "scalar_entropy_weight must be a number >= 0, got -1.0" in result.output
    assert not (tmp_path / "out" / "cells").exists()


def test_a_sampled_bds_cell_reports_interval_separation(bench: Bench, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(
        bench_app,
        bench.run_args(out, "--shares", "0.5", "--methods", "bds-sample", "--no-report"),
    )
    assert result.exit_code == 0, result.output
    cell = read_cell(out / "cells" / "sort-words__bds-sample__p0.5.json")
    assert cell.settings["train"]["scheduler"]["sgld"] is True
    metrics = cell.metrics
    assert metrics.weight_auroc is not None
    for share in (metrics.harmful_interval_below_one, metrics.benign_interval_not_below_one):
        assert share is not None and 0.0 <= share <= 1.0
    assert metrics.interval_coverage == pytest.approx(
        (metrics.harmful_interval_below_one + metrics.benign_interval_not_below_one) / 2
    )
    rows = [
        json.loads(line)
        for line in (out / "work" / "sort-words__bds-sample__p0.5" / "weights.jsonl")
        .read_text()
        .splitlines()
    ]
    assert all(row["uncertainty"] == "posterior" for row in rows)


# ---------------------------------------------------------------------------------- budget


def plain(output: str) -> str:
    """CLI output without rich's error box and its line wraps."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", output).split())


def test_the_budget_options_reach_the_trainer_and_the_records(bench: Bench, tmp_path: Path) -> None:
    """--loss-timing and --safety-every: in run.json's profile settings, in each cell's
    training settings and in the trainer's own config; sft, which reads no D_safe, keeps
    the default budget."""
    out = tmp_path / "candidate"
    args = bench.run_args(out, "--no-report", "--methods", "mix,bds", "--shares", "0.5")
    result = CliRunner().invoke(
        bench_app, [*args, "--loss-timing", "before", "--safety-every", "2"]
    )
    assert result.exit_code == 0, result.output
    settings = json.loads((out / "run.json").read_text())[-1]["profile_settings"]
    assert (settings["loss_timing"], settings["safety_every"]) == ("before", 2)
    for method in ("mix", "bds"):
        cell = read_cell(out / "cells" / f"sort-words__{method}__p0.5.json")
        assert cell.status == "finished", cell.error
        assert cell.settings["train"]["safety_every"] == 2
        trained = json.loads((out / "work" / cell.cell_id / "metrics.json").read_text())
        assert trained["config"]["safety_every"] == 2
        # Two steps: an alignment batch on the first only.
        assert [step["safety_loss"] is not None for step in trained["history"]] == [True, False]
    bds = read_cell(out / "cells" / "sort-words__bds__p0.5.json")
    assert bds.settings["train"]["scheduler"]["loss_timing"] == "before"
    trained = json.loads((out / "work" / bds.cell_id / "metrics.json").read_text())
    assert trained["config"]["scheduler"]["loss_timing"] == "before"
    sft = read_cell(out / "cells" / "sort-words__sft__p0.json")
    assert sft.settings["train"]["safety_every"] == 1
    assert sft.settings["train"]["scheduler"]["loss_timing"] == "after"


def test_every_bds_variant_takes_the_profiles_loss_timing() -> None:
    from dataclasses import replace

    profile = replace(PROFILES["full"], loss_timing="before")
    for method in METHODS.values():
        timing = method.scheduler_settings(profile).loss_timing
        assert timing == ("before" if method.is_bds else "after"), method.name
        assert method.scheduler_settings(PROFILES["full"]).loss_timing == "after"


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--loss-timing", "sideways", "'sideways' is not one of 'after', 'before'"),
        ("--safety-every", "0", "greater than or equal to 1"),
    ],
)
def test_a_bad_budget_option_is_refused_by_name(
    bench: Bench, tmp_path: Path, option: str, value: str, message: str
) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(bench_app, bench.run_args(out, "--no-report", option, value))
    assert result.exit_code == 2
    assert f"Invalid value for '{option}'" in plain(result.output)
    assert message in plain(result.output)
    assert not out.exists()


def test_a_profile_refuses_a_bad_budget_by_field() -> None:
    from dataclasses import replace

    with pytest.raises(ValueError, match="loss_timing must be one of after, before, got 'x'"):
        replace(PROFILES["smoke"], loss_timing="x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="safety_every must be at least 1, got 0"):
        replace(PROFILES["smoke"], safety_every=0)


def _plans(bench: Bench, **changes: Any) -> dict[str, CellPlan]:
    from dataclasses import replace

    profile = replace(PROFILES["smoke"], methods=("sft", "mix", "bds"), **changes)
    config = RunConfig(
        data_dir=bench.data, out_dir=bench.root / "unused", profile=profile, model=TINY
    )
    return {plan.cell_id: plan for plan in plan_run(config, RefusalPhraseJudge())[0]}


@pytest.mark.parametrize(
    ("changes", "keyed"),
    [
        ({"loss_timing": "before"}, {"bds"}),
        ({"safety_every": 2}, {"mix", "bds"}),
        ({"safety_batch_size": 1}, {"mix", "bds"}),
        ({"safety_batch_size": 1, "safety_every": 4, "loss_timing": "before"}, {"mix", "bds"}),
    ],
)
def test_the_budget_keys_only_the_cells_that_read_it(
    bench: Bench, changes: dict[str, Any], keyed: set[str]
) -> None:
    """A candidate budget changes the digests of the cells that read D_safe (mix, bds; the
    loss timing bds alone) and no other: M0 and sft are the same cells under every budget."""
    default, candidate = _plans(bench), _plans(bench, **changes)
    assert default.keys() == candidate.keys()
    changed = {cell for cell in default if default[cell].digest != candidate[cell].digest}
    assert changed == {
        f"sort-words__{method}__{share}" for method in keyed for share in ("p0", "p0.5")
    }
    assert all(not plan.accepted_digests for plan in default.values())


def test_an_sft_cell_keyed_on_the_runs_own_budget_by_earlier_code_is_still_finished(
    bench: Bench, tmp_path: Path
) -> None:
    """Earlier code keyed every fine-tune on the run's alignment batch (the rule a profile
    whose name is not a named profile still follows); such a cell is not recomputed."""
    from dataclasses import replace

    candidate = _plans(bench, safety_batch_size=1)["sort-words__sft__p0"]
    earlier = _plans(bench, safety_batch_size=1, name="unnamed")["sort-words__sft__p0"]
    assert earlier.digest != candidate.digest
    assert candidate.accepted_digests == (earlier.digest,)
    assert replace(candidate, accepted_digests=()).accepts(earlier.digest) is False

    out = tmp_path / "budget1"
    args = bench.run_args(out, "--no-report", "--methods", "sft", "--shares", "0.5")
    args += ["--safety-batch-size", "1"]
    assert CliRunner().invoke(bench_app, args).exit_code == 0
    path = out / "cells" / "sort-words__sft__p0.json"
    write_cell(out, read_cell(path).model_copy(update={"digest": earlier.digest}))
    before = cell_mtimes(out)
    again = CliRunner().invoke(bench_app, args)
    assert again.exit_code == 0, again.output
    assert "0 cell(s) computed, 3 already finished" in again.output
    assert cell_mtimes(out) == before


def test_a_folder_resumes_only_with_its_budget_and_takes_copied_shared_cells(
    bench: Bench, first_run: Path, tmp_path: Path
) -> None:
    """A default-budget folder refuses a run with another budget before any work (its bds
    cells were computed otherwise); a candidate folder takes M0's and the clean run's cells
    copied from it and computes only its own."""
    before = cell_mtimes(first_run)
    for option in (
        ("--loss-timing", "before"),
        ("--safety-every", "2"),
        ("--safety-batch-size", "1"),
    ):
        result = CliRunner().invoke(bench_app, bench.run_args(first_run, "--no-report", *option))
        assert result.exit_code == 1, result.output
        assert "sort-words__bds__p0.json was computed with other settings" in plain(result.output)
    assert cell_mtimes(first_run) == before

    out = tmp_path / "candidate"
    (out / "cells").mkdir(parents=True)
    for cell_id in ("sort-words__m0", "sort-words__sft__p0"):
        shutil.copy2(first_run / "cells" / f"{cell_id}.json", out / "cells")
    copied = cell_mtimes(out)
    args = bench.run_args(out, "--no-report", "--methods", "bds", "--shares", "0.5")
    args += ["--safety-batch-size", "1", "--loss-timing", "before"]
    result = CliRunner().invoke(bench_app, args)
    assert result.exit_code == 0, result.output
    assert "1 cell(s) computed, 2 already finished" in result.output
    assert {cell: cell_mtimes(out)[cell] for cell in copied} == copied
    bds = read_cell(out / "cells" / "sort-words__bds__p0.5.json")
    assert bds.settings["train"]["safety_batch_size"] == 1
    assert bds.digest != read_cell(first_run / "cells" / "sort-words__bds__p0.5.json").digest
