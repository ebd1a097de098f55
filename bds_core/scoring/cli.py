"""`bds score FILE` and `bds scheduler pretrain`: typer apps the top-level CLI mounts."""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from bds_core.training import ProgressEvent, TrainerCallback, TrainResult

console = Console(stderr=True)
score_app = typer.Typer(help="Score a dataset for harmful content with the pretrained scheduler.")
scheduler_app = typer.Typer(help="Pretrain and inspect amortized neural schedulers.")


@score_app.command("score")
def score_command(
    file: Annotated[Path, typer.Argument(help="dataset to score (JSONL in any accepted format)")],
    scheduler: Annotated[
        Path | None, typer.Option(help="saved scheduler folder (default: the shipped scoring one)")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="folder for report.json, report.md and histogram.png")
    ] = None,
    threshold: Annotated[
        float | None,
        typer.Option(help="harm score at which an example is flagged (default: the scheduler's)"),
    ] = None,
    top: Annotated[int, typer.Option(help="flagged examples listed with their text")] = 20,
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="do not read or write the embedding cache")
    ] = False,
) -> None:
    """Score FILE and print the markdown summary; write JSON, markdown and PNG to --out."""
    from bds_core.data import DatasetError, load_examples
    from bds_core.scoring.scorer import get_scorer

    try:
        examples = load_examples(file)
    except DatasetError as error:
        console.print(f"[red]{file} is not a valid dataset:[/]\n{error}")
        raise typer.Exit(2) from error
    except OSError as error:
        console.print(f"[red]cannot read {file}: {error}[/]")
        raise typer.Exit(2) from error
    try:
        scorer = get_scorer(scheduler, use_cache=not no_cache)
    except (ValueError, FileNotFoundError) as error:
        console.print(f"[red]cannot load the scheduler: {error}[/]")
        raise typer.Exit(2) from error
    with Progress(
        TextColumn("[bold]scoring"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("scoring", total=len(examples))
        report = scorer.report(
            examples,
            threshold=threshold,
            top_k=top,
            progress=lambda done, total: progress.update(task, completed=done),
        )
    print(report.to_markdown())
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(report.to_json() + "\n")
        (out / "report.md").write_text(report.to_markdown())
        report.save_histogram_png(out / "histogram.png")
        console.print(
            f"wrote {out / 'report.json'}, {out / 'report.md'} and {out / 'histogram.png'}"
        )


class LogProgressCallback(TrainerCallback):
    """One plain line every `every` steps (readable in a log file, unlike a progress bar)."""

    def __init__(self, every: int = 10) -> None:
        self.every = max(1, every)

    def on_start(self, info: dict[str, Any]) -> None:
        console.print(
            f"BDS run: {info['num_train_examples']} customer / "
            f"{info['num_safety_examples']} alignment examples, {info['total_steps']} steps "
            f"from step {info['start_step']} on {info['device']}"
        )

    def on_resume(self, step: int, path: Path) -> None:
        console.print(f"resuming from {path} (step {step})")

    def on_step(self, event: ProgressEvent) -> None:
        if event.step % self.every == 0 or event.step == event.total_steps:
            stats = event.weight_stats
            console.print(
                f"step {event.step}/{event.total_steps} loss {event.loss:.3f} "
                f"w[min {stats.get('min', 0):.2f} max {stats.get('max', 0):.2f} "
                f"ess {stats.get('ess_ratio', 0):.2f}] "
                f"{event.seconds_per_step:.1f} s/step eta {event.eta_s / 60:.1f} min"
            )

    def on_end(self, result: TrainResult) -> None:
        auroc = result.metrics.get("weight_stats", {}).get("auroc")
        console.print(
            f"run finished: {result.steps} steps"
            + (f", weight AUROC {auroc:.3f} (evaluation only)" if auroc else "")
        )


@scheduler_app.command("pretrain")
def pretrain_command(
    model: Annotated[str, typer.Option(help="base model of the BDS runs")],
    train_file: Annotated[
        list[Path], typer.Option(help="label-free customer dataset; repeat for several runs")
    ],
    safety_file: Annotated[
        Path, typer.Option(help="alignment dataset (harmful prompts with refusals)")
    ],
    out: Annotated[Path, typer.Option(help="folder to save the scheduler to")],
    steps: Annotated[int, typer.Option(help="BDS steps per train file")] = 150,
    work_dir: Annotated[
        Path | None, typer.Option(help="folder for the runs' checkpoints (resumable)")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="customer examples per step")] = 8,
    safety_batch_size: Annotated[
        int | None, typer.Option(help="alignment examples per step (default: batch size)")
    ] = None,
    checkpoint_every: Annotated[int, typer.Option(help="checkpoint every this many steps")] = 25,
    learning_rate: Annotated[float, typer.Option(help="LoRA learning rate")] = 5e-4,
    scheduler_learning_rate: Annotated[
        float, typer.Option(help="learning rate of the head")
    ] = 3e-3,
    reference: Annotated[
        str, typer.Option(help="reference loss: none, initial or agnostic")
    ] = "initial",
    encoder: Annotated[
        str, typer.Option(help="minilm-l6-v2, minilm-static or llm-hidden")
    ] = "minilm-l6-v2",
    head: Annotated[str, typer.Option(help="mlp or linear")] = "mlp",
    hidden: Annotated[int, typer.Option(help="hidden width of the MLP head")] = 128,
    max_length: Annotated[int, typer.Option(help="tokens per training example")] = 256,
    init: Annotated[Path | None, typer.Option(help="continue from a saved scheduler")] = None,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    device: Annotated[
        str | None, typer.Option(help="cpu or cuda (default: cuda when available)")
    ] = None,
) -> None:
    """Train a neural scheduler's head with BDS on label-free data and save it to --out."""
    from bds_core.scoring.pretrain import PretrainConfig, pretrain_scheduler

    try:
        config = PretrainConfig(
            model=model,
            train_files=list(train_file),
            safety_file=safety_file,
            out=out,
            work_dir=work_dir,
            steps=steps,
            batch_size=batch_size,
            safety_batch_size=safety_batch_size,
            checkpoint_every=checkpoint_every,
            learning_rate=learning_rate,
            scheduler_learning_rate=scheduler_learning_rate,
            reference=reference,
            encoder=encoder,
            head=head,
            hidden=hidden,
            max_length=max_length,
            init_path=init,
            seed=seed,
            device=device,
        )
    except ValueError as error:
        console.print(f"[red]{error}[/]")
        raise typer.Exit(2) from error
    # Recorded as the `bds scheduler pretrain ...` command, however the app was mounted.
    arguments = sys.argv[sys.argv.index("pretrain") + 1 :] if "pretrain" in sys.argv else []
    command = "bds scheduler pretrain " + " ".join(shlex.quote(arg) for arg in arguments)
    started = time.monotonic()
    result = pretrain_scheduler(config, callbacks=[LogProgressCallback()], command=command)
    calibration = result.calibration
    console.print(
        f"saved {result.scheduler_dir} in {time.monotonic() - started:.0f} s; "
        "calibration modes (weight, mean, std): "
        + ", ".join(f"({c.weight:.3f}, {c.mean:.3f}, {c.std:.3f})" for c in calibration.components)
    )
    print(json.dumps(result.runs, indent=2))


@scheduler_app.command("evaluate")
def evaluate_command(
    file: Annotated[
        list[Path], typer.Argument(help="labelled JSONL files (metadata.label), pooled")
    ],
    scheduler: Annotated[
        Path | None, typer.Option(help="saved scheduler folder (default: the shipped scoring one)")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="write the evaluation JSON here")] = None,
) -> None:
    """AUROC and recall at 5% false positives of a scheduler against metadata.label.

    Labels are read only here, to evaluate; scoring never sees them.
    """
    from bds_core.data import load_examples
    from bds_core.scoring.scorer import get_scorer

    examples = [example for path in file for example in load_examples(path)]
    report = get_scorer(scheduler).report(examples)
    if report.label_evaluation is None:
        console.print("[red]none of the examples carries metadata.label[/]")
        raise typer.Exit(2)
    result = {
        "scheduler": report.scheduler.model_dump(),
        "files": [str(path) for path in file],
        **report.label_evaluation.model_dump(),
        "n_flagged": report.n_flagged,
        "harmful_share_estimate": report.harmful_share_estimate,
        "examples_per_second": report.timing.examples_per_second,
    }
    print(json.dumps(result, indent=2))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")


@scheduler_app.command("show")
def show_command(
    path: Annotated[
        Path | None,
        typer.Argument(help="saved scheduler folder (default: the shipped scoring one)"),
    ] = None,
) -> None:
    """Print a saved scheduler's encoder, head, calibration and provenance."""
    from bds_core.schedulers.neural import SchedulerFileError, load_scheduler
    from bds_core.scoring.scorer import default_scoring_scheduler_path

    try:
        loaded = load_scheduler(path or default_scoring_scheduler_path())
    except SchedulerFileError as error:
        console.print(f"[red]{error}[/]")
        raise typer.Exit(2) from error
    print(json.dumps(loaded.config, indent=2))


__all__ = ["LogProgressCallback", "scheduler_app", "score_app"]
