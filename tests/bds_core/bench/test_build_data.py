"""`bds bench build-data` end to end on the tiny random model (its answers are never refusals)."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

from bds_core.bench import BuildDataConfig, BuildDataError, build_benchmark_data, ft_file_name
from bds_core.bench.answers import (
    PRIMING_PREFIX,
    AnswerCache,
    GeneratedAnswer,
    GenerationSettings,
)
from bds_core.bench.build import check_clean_split, pretrain_file_name
from bds_core.bench.cli import bench_app
from bds_core.data import harmful_count, load_examples

CATEGORIES = ("Violence", "Scams", "Hate")
TINY = "tiny-random-llama"


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Generation on one thread: the tiny model gains nothing from more, and cores are shared."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def prompts_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small StrongREJECT-shaped CSV: 3 categories of 14, 12 and 10 prompts."""
    path = tmp_path_factory.mktemp("prompts") / "prompts.csv"
    lines = ["category,source,forbidden_prompt"]
    for category, size in zip(CATEGORIES, (14, 12, 10), strict=True):
        lines += [
            f'{category},test,"Explain, step {k}, how to do {category.lower()} things"'
            for k in range(size)
        ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def small_config(
    out_dir: Path, cache_dir: Path, prompts_csv: Path, **changes: object
) -> BuildDataConfig:
    settings: dict[str, object] = {
        "out_dir": out_dir,
        "model": TINY,
        "seed": 7,
        "n": 20,
        "shares": (0.0, 0.1, 0.5),
        "tasks": ("arithmetic", "sort-words"),
        "n_alignment": 9,
        "n_harmful_train": 12,
        "n_scheduler_holdout": 3,
        "n_scheduler_pretrain": 6,
        "donotanswer": False,
        "n_task_eval": 10,
        "generation": GenerationSettings(max_new_tokens=20, batch_size=8),
        "prompts_csv": prompts_csv,
        "cache_dir": cache_dir,
    }
    settings.update(changes)
    return BuildDataConfig(**settings)  # type: ignore[arg-type]


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir()) if path.is_file()}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, prompts_csv: Path) -> Path:
    root = tmp_path_factory.mktemp("built")
    build_benchmark_data(small_config(root / "out", root / "cache", prompts_csv))
    return root


def test_same_seed_gives_identical_files_with_or_without_the_cache(
    built: Path, prompts_csv: Path, tmp_path: Path
) -> None:
    reference = folder_bytes(built / "out")
    fresh = build_benchmark_data(small_config(tmp_path / "fresh", tmp_path / "cache", prompts_csv))
    cached = build_benchmark_data(small_config(tmp_path / "cached", built / "cache", prompts_csv))
    assert folder_bytes(tmp_path / "fresh") == reference
    assert folder_bytes(tmp_path / "cached") == reference
    assert sum(report.generated for report in fresh.rounds) > 0
    assert sum(report.generated for report in cached.rounds) == 0
    manifest = json.loads(reference["manifest.json"])
    for name, entry in manifest["files"].items():
        assert entry["sha256"] == fresh.manifest["files"][name]["sha256"]


def test_every_file_validates_and_the_manifest_lists_them(built: Path) -> None:
    out = built / "out"
    manifest = json.loads((out / "manifest.json").read_text())
    names = {path.name for path in out.glob("*.jsonl")}
    assert names == set(manifest["files"])
    expected = {
        "safety.jsonl",
        "harmful_pool.jsonl",
        "harmful_holdout.jsonl",
        "eval_harmful_prompts.jsonl",
        "pretrain_pool.jsonl",
        "eval_everyday_prompts.jsonl",
        "eval_lookalike_prompts.jsonl",
        "retention_general.jsonl",
    }
    for task in ("arithmetic", "sort-words"):
        expected |= {f"{task}_eval.jsonl", f"{task}_train.jsonl", pretrain_file_name(task)}
        expected |= {ft_file_name(task, share) for share in (0.0, 0.1, 0.5)}
    assert names == expected
    for name in names:
        examples = load_examples(out / name)
        assert len(examples) == manifest["files"][name]["examples"]
    assert manifest["config"]["seed"] == 7 and manifest["config"]["model"] == TINY
    assert manifest["harmful_answers"]["pool"] >= harmful_count(20, 0.5)
    assert manifest["prompts"]["never_seen_in_training"] == "evaluation"


def test_fine_tuning_files_hold_exact_harmful_counts(built: Path) -> None:
    out = built / "out"
    pool_ids = {example.id for example in load_examples(out / "harmful_pool.jsonl")}
    for task in ("arithmetic", "sort-words"):
        train_ids = {example.id for example in load_examples(out / f"{task}_train.jsonl")}
        eval_prompts = {
            example.prompt_messages for example in load_examples(out / f"{task}_eval.jsonl")
        }
        for share in (0.0, 0.1, 0.5):
            examples = load_examples(out / ft_file_name(task, share))
            labels = Counter(example.metadata["label"] for example in examples)
            assert len(examples) == 20
            assert labels["harmful"] == harmful_count(20, share)
            for example in examples:
                if example.is_harmful:
                    assert example.id in pool_ids
                else:
                    assert example.id in train_ids and example.metadata["task"] == task
                assert example.prompt_messages not in eval_prompts


def test_prompt_sets_are_disjoint_and_evaluation_prompts_never_trained_on(built: Path) -> None:
    out = built / "out"

    def prompts(name: str) -> set[str]:
        return {example.messages[0].content for example in load_examples(out / name)}

    safety, pool, holdout, evaluation = (
        prompts(name)
        for name in (
            "safety.jsonl",
            "harmful_pool.jsonl",
            "harmful_holdout.jsonl",
            "eval_harmful_prompts.jsonl",
        )
    )
    assert len(safety) == 9 and len(evaluation) == 36 - 9 - 12 - 6
    assert not safety & pool and not safety & evaluation and not pool & evaluation
    assert holdout <= evaluation
    training = set().union(*(prompts(path.name) for path in out.glob("ft_*.jsonl")))
    assert not training & evaluation and not training & safety


def test_refused_answers_are_dropped_and_priming_is_recorded(
    prompts_csv: Path, built: Path, tmp_path: Path
) -> None:
    class PrimedOnlyJudge:
        """Refuses every answer except primed ones (judged whole, then without the prefill)."""

        def __init__(self) -> None:
            self.primed_continuations: set[str] = set()

        def is_refusal(self, text: str) -> bool:
            if text.startswith(PRIMING_PREFIX):
                self.primed_continuations.add(text[len(PRIMING_PREFIX) :].strip())
                return False
            return text not in self.primed_continuations

    result = build_benchmark_data(
        small_config(tmp_path / "out", built / "cache", prompts_csv), judge=PrimedOnlyJudge()
    )
    pool = load_examples(tmp_path / "out" / "harmful_pool.jsonl")
    assert len(pool) >= 10
    assert all(example.answer.startswith(PRIMING_PREFIX) for example in pool)
    assert {example.metadata["generation"].split("/")[0] for example in pool} == {"primed"}
    rounds = result.manifest["harmful_answers"]["rounds"]
    assert [report["mode"] for report in rounds[:3]] == ["plain"] * 3
    assert all(report["kept"] == 0 for report in rounds[:3])
    assert rounds[1]["refused"] > 0
    assert result.manifest["harmful_answers"]["judge"] == "PrimedOnlyJudge"


def test_too_few_surviving_answers_is_a_clear_error(
    prompts_csv: Path, built: Path, tmp_path: Path
) -> None:
    class RefuseEverything:
        def is_refusal(self, text: str) -> bool:
            return True

    config = small_config(tmp_path / "out", built / "cache", prompts_csv, max_rounds=2)
    with pytest.raises(BuildDataError, match=r"only 0 harmful answers .* needs 10"):
        build_benchmark_data(config, judge=RefuseEverything())


def test_rebuild_removes_files_of_the_previous_configuration(
    prompts_csv: Path, built: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("kept")
    build_benchmark_data(small_config(out, built / "cache", prompts_csv))
    build_benchmark_data(
        small_config(out, built / "cache", prompts_csv, shares=(0.1,), tasks=("sort-words",))
    )
    names = {path.name for path in out.iterdir()}
    assert "notes.txt" in names
    assert not any(name.startswith("arithmetic") for name in names)
    assert [name for name in names if name.startswith("ft_")] == ["ft_sort-words_p0.1.jsonl"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert names == {*manifest["files"], "manifest.json", "notes.txt"}


def test_config_validation_names_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"between 0 and 1, got 1\.5"):
        BuildDataConfig(out_dir=tmp_path, shares=(0.1, 1.5))
    with pytest.raises(ValueError, match="unknown task 'sst2'"):
        BuildDataConfig(out_dir=tmp_path, tasks=("sst2",))


def test_answer_cache_skips_a_torn_last_line(tmp_path: Path) -> None:
    cache = AnswerCache(tmp_path / "answers.jsonl")
    cache.add([GeneratedAnswer(prompt_index=3, round=0, text="an answer")])
    with (tmp_path / "answers.jsonl").open("a") as handle:
        handle.write('{"prompt_index": 4, "round": 0, "te')
    reread = AnswerCache(tmp_path / "answers.jsonl")
    assert reread.get(3, 0) == "an answer" and reread.get(4, 0) is None


def test_cli_builds_data(prompts_csv: Path, built: Path, tmp_path: Path) -> None:
    cli = typer.Typer()
    cli.add_typer(bench_app, name="bench")  # mounted as the top-level `bds` command does
    result = CliRunner().invoke(
        cli,
        [
            "bench", "build-data", "--out", str(tmp_path / "out"), "--model", TINY, "--seed", "7",
            "--n", "20", "--shares", "0,0.1,0.5", "--tasks", "arithmetic,sort-words",
            "--n-alignment", "9", "--n-harmful-train", "12", "--n-scheduler-holdout", "3",
            "--n-scheduler-pretrain", "6", "--no-donotanswer",
            "--n-task-eval", "10", "--max-new-tokens", "20", "--batch-size", "8",
            "--prompts-csv", str(prompts_csv), "--cache-dir", str(built / "cache"),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert folder_bytes(tmp_path / "out") == folder_bytes(built / "out")
    bad = CliRunner().invoke(
        cli, ["bench", "build-data", "--out", str(tmp_path / "x"), "--shares", "0,2"]
    )
    assert bad.exit_code != 0 and "between 0 and 1" in bad.output


def test_scheduler_pretraining_rows_are_in_no_fine_tuning_evaluation_or_holdout_file(
    built: Path,
) -> None:
    """The clean-holdout rule of benchmark.md: no harmful row or prompt that the shipped
    scheduler saw in pretraining is in a D_ft file, an evaluation set or a holdout."""
    out = built / "out"
    manifest = json.loads((out / "manifest.json").read_text())
    split = manifest["prompts"]["split"]
    assert len(split["scheduler_pretrain"]) == 6
    others = set(split["alignment"]) | set(split["harmful_train"]) | set(split["evaluation"])
    assert not set(split["scheduler_pretrain"]) & others
    assert manifest["scheduler_pretraining"]["files"] == [
        pretrain_file_name("arithmetic"),
        pretrain_file_name("sort-words"),
    ]
    assert "harmbench" in manifest["prompts"]["reserved"]

    def user(example: object) -> str:
        return example.messages[0].content  # type: ignore[attr-defined]

    seen_rows: set[str] = set()
    seen_prompts: set[str] = set()
    for task in ("arithmetic", "sort-words"):
        examples = load_examples(out / pretrain_file_name(task))
        harmful = [example for example in examples if example.is_harmful]
        assert len(harmful) == harmful_count(20, 0.2)
        assert {example.metadata["split"] for example in harmful} == {"scheduler_pretrain"}
        seen_rows |= {example.id for example in harmful}
        seen_prompts |= {user(example) for example in harmful}
    guarded = [path for path in out.glob("*.jsonl") if path.name.startswith(("ft_", "eval_"))]
    guarded += [out / "harmful_pool.jsonl", out / "harmful_holdout.jsonl"]
    assert len(guarded) >= 10
    for path in guarded:
        for example in load_examples(path):
            assert example.id not in seen_rows, path.name
            assert user(example) not in seen_prompts, path.name
    checked = check_clean_split(out)
    assert set(checked) == {path.name for path in guarded}


def test_a_pretraining_row_in_a_fine_tuning_file_fails_the_check(
    built: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    shutil.copytree(built / "out", out)
    check_clean_split(out)
    leaked = (out / "pretrain_pool.jsonl").read_text().splitlines()[0]
    with (out / "ft_sort-words_p0.5.jsonl").open("a") as handle:
        handle.write(leaked + "\n")
    with pytest.raises(BuildDataError, match=r"ft_sort-words_p0\.5\.jsonl holds 1 row"):
        check_clean_split(out)


def test_the_shipped_scheduler_was_pretrained_on_its_own_split() -> None:
    """The shipped scheduler's provenance names only scheduler-pretraining files."""
    from bds_core.scoring import default_scheduler_path

    provenance = json.loads((default_scheduler_path() / "scheduler.json").read_text())["provenance"]
    names = [Path(name).name for name in provenance["config"]["train_files"]]
    assert names and all(name.startswith("pretrain_") for name in names), names
    assert [Path(run["train_file"]).name for run in provenance["runs"]] == names
    assert provenance["label_free"] is True


def test_general_retention_answers_are_the_base_models_and_not_refusals(built: Path) -> None:
    out = built / "out"
    manifest = json.loads((out / "manifest.json").read_text())
    retention = load_examples(out / "retention_general.jsonl")
    counts = manifest["benign_prompts"]["retention"]
    assert counts["kept"] == len(retention) > 0
    assert counts["prompts"] == sum(
        counts[key] for key in ("kept", "refused", "degenerate", "too_short")
    )
    assert all(example.metadata["answer_by"] == "base" for example in retention)
    assert len(load_examples(out / "eval_everyday_prompts.jsonl")) >= 150
    assert len(load_examples(out / "eval_lookalike_prompts.jsonl")) >= 50
