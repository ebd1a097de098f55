"""`bds bench` commands (the top-level CLI mounts ``bench_app``)."""

from __future__ import annotations

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
        str, typer.Option(help="comma-separated benign tasks: arithmetic, sort-words, spell-number")
    ] = ",".join(DEFAULT_TASKS),
    n_alignment: Annotated[int, typer.Option(help="prompts in the alignment split")] = 100,
    n_harmful_train: Annotated[
        int, typer.Option(help="prompts in the harmful-training split")
    ] = 100,
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
