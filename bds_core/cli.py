"""`bds` commands of the ML library: train and gpu-check (and the sub-apps mounted by the
top-level CLI).

`python -m bds_core.cli train ...` runs the same command as `bds train ...`; launched by
torchrun (`torchrun --nproc-per-node N -m bds_core.cli train ...`) it trains data-parallel on N
processes (docs/scaling.md).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from bds_core.cli_options import with_setting_options
from bds_core.models import AssetError, LoraSettings, ModelLoadError
from bds_core.schedulers import SchedulerSettings, scheduler_setting_fields
from bds_core.training import ProgressEvent, TrainConfig, TrainerCallback, TrainResult, train

console = Console()
train_app = typer.Typer(
    help="Fine-tune a LoRA adapter with BDS, SFT or mix; check a GPU.", no_args_is_help=True
)


class RichProgressCallback(TrainerCallback):
    """A progress bar with loss, ETA and weight statistics for the terminal."""

    def __init__(self) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
        )
        self.task_id: Any = None

    def on_start(self, info: dict[str, Any]) -> None:
        console.print(
            f"[bold]{info['method']}[/] on {info['model']}: {info['num_train_examples']} customer and "
            f"{info['num_safety_examples']} alignment examples, {info['total_steps']} steps on {info['device']}"
        )
        self.progress.start()
        self.task_id = self.progress.add_task(
            "training", total=info["total_steps"], completed=info["start_step"], status=""
        )

    def on_resume(self, step: int, path: Path) -> None:
        console.print(f"resuming from checkpoint {path} (step {step})")

    def on_step(self, event: ProgressEvent) -> None:
        stats = event.weight_stats
        status = f"loss {event.loss:.3f}  weights min {stats['min']:.2f} max {stats['max']:.2f} ess {stats['ess_ratio']:.2f}"
        self.progress.update(self.task_id, completed=event.step, status=status)
        if not console.is_terminal:
            # Logs of background runs get one line per step instead of a redrawn bar.
            console.print(
                f"step {event.step}/{event.total_steps} {status} "
                f"{event.seconds_per_step:.1f}s/step eta {event.eta_s / 60:.1f}min"
            )

    def on_end(self, result: TrainResult) -> None:
        self.progress.stop()


def _parse_targets(value: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in value.split(",") if t.strip())


@train_app.command("train")
@with_setting_options(
    scheduler_setting_fields(),
    into="scheduler",
    panel="BDS scheduler (SchedulerSettings)",
    # The spellings these options had before they were built from SchedulerSettings.
    extra_names={"learning_rate": ["--scheduler-lr"], "init_path": ["--init"]},
)
def train_command(
    model: Annotated[
        str, typer.Option(help="catalog name, local HF directory, .gguf file or hub id")
    ],
    train_file: Annotated[Path, typer.Option(help="customer dataset (JSONL)")],
    out: Annotated[Path, typer.Option(help="output directory")],
    safety_file: Annotated[
        Path | None, typer.Option(help="alignment dataset (JSONL); needed by bds and mix")
    ] = None,
    method: Annotated[str, typer.Option(help="bds, sft or mix")] = "bds",
    learning_rate: Annotated[float, typer.Option(help="LoRA learning rate")] = 5e-4,
    batch_size: Annotated[int, typer.Option(help="customer examples per step")] = 8,
    safety_batch_size: Annotated[
        int | None,
        typer.Option(
            help="alignment examples per step (default: a quarter of the batch size, rounded "
            "up to a multiple of the number of processes)"
        ),
    ] = None,
    safety_every: Annotated[
        int, typer.Option(help="alignment budget: one alignment batch every this many steps")
    ] = 1,
    gradient_accumulation_steps: Annotated[int, typer.Option(help="micro-batches per step")] = 1,
    length_bucketing: Annotated[
        bool, typer.Option(help="group rows by length into passes that compute the least padding")
    ] = True,
    max_batch_tokens: Annotated[
        int | None, typer.Option(help="cap on padded tokens per forward pass (activation memory)")
    ] = None,
    epochs: Annotated[float, typer.Option(help="passes over the training file")] = 1.0,
    max_steps: Annotated[int | None, typer.Option(help="stop after this many steps")] = None,
    max_length: Annotated[int, typer.Option(help="tokens per example")] = 256,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    lora_r: Annotated[int, typer.Option(help="LoRA rank")] = 8,
    lora_alpha: Annotated[float, typer.Option(help="LoRA alpha")] = 16.0,
    lora_dropout: Annotated[float, typer.Option(help="LoRA dropout")] = 0.0,
    lora_targets: Annotated[
        str, typer.Option(help="comma-separated module names")
    ] = "q_proj,k_proj,v_proj,o_proj",
    checkpoint_every: Annotated[int, typer.Option(help="checkpoint interval in steps")] = 50,
    device: Annotated[
        str | None,
        typer.Option(
            help="cpu or cuda (default: cuda when available; under torchrun cuda:LOCAL_RANK)"
        ),
    ] = None,
    precision: Annotated[
        str, typer.Option(help="fp32, or bf16 (bfloat16 autocast, for CUDA)")
    ] = "fp32",
    gradient_checkpointing: Annotated[
        bool, typer.Option(help="recompute activations in backward: less memory, more compute")
    ] = False,
    fresh: Annotated[bool, typer.Option(help="ignore existing checkpoints in OUT")] = False,
    threads: Annotated[
        int | None, typer.Option(help="torch CPU threads (1 is fastest on a busy machine)")
    ] = None,
    scheduler: dict[str, Any] | None = None,
) -> None:
    """Fine-tune a LoRA adapter; writes OUT/adapter, OUT/weights.jsonl and OUT/metrics.json."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    try:
        config = TrainConfig(
            model=model,
            train_file=train_file,
            safety_file=safety_file,
            out_dir=out,
            method=method,
            lora=LoraSettings(
                r=lora_r,
                alpha=lora_alpha,
                dropout=lora_dropout,
                target_modules=_parse_targets(lora_targets),
            ),
            learning_rate=learning_rate,
            batch_size=batch_size,
            safety_batch_size=safety_batch_size,
            safety_every=safety_every,
            gradient_accumulation_steps=gradient_accumulation_steps,
            length_bucketing=length_bucketing,
            max_batch_tokens=max_batch_tokens,
            epochs=epochs,
            max_steps=max_steps,
            max_length=max_length,
            seed=seed,
            scheduler=SchedulerSettings(**(scheduler or {})),
            checkpoint_every=checkpoint_every,
            device=device,
            precision=precision,
            gradient_checkpointing=gradient_checkpointing,
        )
    except ValueError as error:
        console.print(f"[red]error:[/] {error}")
        raise typer.Exit(2) from error
    select_examples = None
    if config.method == "filter":
        from bds_core.bench.filter import drop_flagged

        select_examples = drop_flagged(config)
    try:
        result = train(
            config,
            callbacks=[RichProgressCallback()],
            resume=not fresh,
            select_examples=select_examples,
        )
    except (ValueError, ModelLoadError, AssetError) as error:
        # Bad datasets (DatasetError lists line and field), unknown models, bad settings.
        console.print(f"[red]error:[/] {error}")
        raise typer.Exit(2) from error
    if result.rank != 0:
        return  # data-parallel: rank 0 reports for every process
    metrics = result.metrics
    table = Table(title=f"{config.method} finished")
    table.add_column("metric")
    table.add_column("value")
    table.add_row("steps", str(result.steps))
    table.add_row("seconds per step", f"{metrics['seconds_per_step']:.2f}")
    table.add_row("tokens per second", f"{metrics['tokens_per_second']:.0f}")
    table.add_row("processes", str(metrics["world_size"]))
    table.add_row("peak RSS (MiB)", f"{metrics['peak_rss_mb']:.0f}")
    table.add_row(
        "final loss", f"{metrics['final_loss']:.4f}" if metrics["final_loss"] is not None else "-"
    )
    for key, value in metrics["weight_stats"].items():
        table.add_row(f"weights {key}", f"{value:.4f}")
    console.print(table)
    console.print(
        f"adapter: {result.adapter_dir}\nweights: {result.weights_file}\nmetrics: {result.metrics_file}"
    )
    console.print_json(
        json.dumps({k: metrics["weight_stats"].get(k) for k in ("auroc", "ess_ratio")})
    )


@train_app.command("gpu-check")
def gpu_check_command(
    model: Annotated[
        str, typer.Option(help="catalog name, local HF directory or hub id")
    ] = "tiny-random-llama",
    steps: Annotated[int, typer.Option(help="steps per method (the first is not timed)")] = 10,
    batch_size: Annotated[int, typer.Option(help="customer examples per step")] = 8,
    max_length: Annotated[int, typer.Option(help="tokens per example")] = 256,
    precision: Annotated[str, typer.Option(help="bf16 (autocast) or fp32")] = "bf16",
    gradient_checkpointing: Annotated[
        bool, typer.Option(help="recompute activations in backward")
    ] = False,
    json_output: Annotated[
        bool, typer.Option("--json", help="print the report as JSON only")
    ] = False,
) -> None:
    """Train sft and bds a few steps on CUDA: tokens/s, peak GPU memory, BDS/SFT time ratio.

    Exits with status 2 on a machine without CUDA.
    """
    from bds_core.training.gpu_check import GpuUnavailableError, run_gpu_check

    try:
        report = run_gpu_check(
            model=model,
            steps=steps,
            batch_size=batch_size,
            max_length=max_length,
            precision=precision,
            gradient_checkpointing=gradient_checkpointing,
        )
    except GpuUnavailableError as error:
        console.print(f"[red]error:[/] {error}")
        raise typer.Exit(2) from error
    except (ValueError, ModelLoadError, AssetError) as error:
        console.print(f"[red]error:[/] {error}")
        raise typer.Exit(2) from error
    if json_output:
        console.print_json(json.dumps(report.to_dict()))
        return
    table = Table(
        title=f"gpu-check: {report.model} on {report.device_name} ({report.precision}, "
        f"batch {report.batch_size}, {report.max_length} tokens max)"
    )
    for column in ("method", "s/step", "tokens/s", "peak GPU memory (MiB)", "final loss"):
        table.add_column(column)
    for run in report.runs.values():
        table.add_row(
            run.method,
            f"{run.seconds_per_step:.4f}",
            f"{run.tokens_per_second:.0f}",
            f"{run.peak_gpu_memory_mb:.0f}" if run.peak_gpu_memory_mb is not None else "-",
            f"{run.final_loss:.4f}" if run.final_loss is not None else "-",
        )
    console.print(table)
    ratio = report.bds_sft_ratio
    console.print(f"BDS/SFT time per step: {ratio:.2f}" if ratio is not None else "")
    console.print(f"torch {report.torch_version}, CUDA {report.cuda_version}")


if __name__ == "__main__":
    train_app()
