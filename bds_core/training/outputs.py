"""What a finished run writes: the adapter, `weights.jsonl` and `metrics.json`.

OUT/adapter/          the main LoRA adapter, a standard PEFT directory, plus
                      `bds_adapter.json` (base model and method)
OUT/weights.jsonl     one row per uploaded example (`weight_row`)
OUT/metrics.json      run statistics, weight statistics, loss history and the config
"""

from __future__ import annotations

import json
import resource
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from bds_core.data import Example
from bds_core.eval.weights import INTERVAL_LEVEL, uncertainty_statistics, weight_statistics
from bds_core.schedulers.base import DataScheduler, WeightSummary
from bds_core.training.config import TrainConfig

if TYPE_CHECKING:
    # setup.py imports this module (MAIN_ADAPTER).
    from bds_core.training.setup import TrainingData

MAIN_ADAPTER = "default"
"""PEFT's name of the adapter a run trains and ships."""


@dataclass
class TrainResult:
    """What a run produced."""

    out_dir: Path
    adapter_dir: Path | None
    weights_file: Path | None
    metrics_file: Path | None
    metrics: dict[str, Any]
    steps: int
    cancelled: bool = False
    resumed_from_step: int | None = None
    rank: int = 0
    world_size: int = 1


def weight_row(
    index: int, example: Example, weight: float, summary: WeightSummary | None
) -> dict[str, Any]:
    """One line of `weights.jsonl`.

    Every row has `weight` (the posterior mean when sampling, else the final weight),
    `weight_mean` and `uncertainty`, which says what any spread means: "posterior" (pSGLD
    samples: `weight_std`, the 90% interval `weight_low`..`weight_high`, `n_samples`),
    "optimisation" (`weight_spread`: the standard deviation of the optimiser's last iterates,
    jitter rather than uncertainty) or "none" (fixed weights: sft, mix, filter).
    """
    row: dict[str, Any] = {"index": index, "id": example.id, "line": example.line}
    row["weight"] = round(weight, 6)
    if summary is None:
        row["weight_mean"] = round(weight, 6)
        row["uncertainty"] = "none"
        return row
    row["weight_mean"] = round(float(summary.mean[index]), 6)
    row["uncertainty"] = summary.kind
    if summary.kind == "posterior":
        row["weight_std"] = round(float(summary.std[index]), 6)
        row["weight_low"] = round(float(summary.low[index]), 6)
        row["weight_high"] = round(float(summary.high[index]), 6)
        row["interval_level"] = INTERVAL_LEVEL
        row["n_samples"] = summary.n_samples
    else:
        row["weight_spread"] = round(float(summary.std[index]), 6)
    return row


def save_adapter(model: Any, adapter_dir: Path) -> None:
    """The main adapter of the PEFT `model` as a standard PEFT directory (safetensors)."""
    model.save_pretrained(
        str(adapter_dir), selected_adapters=[MAIN_ADAPTER], safe_serialization=True
    )


def write_adapter(model: Any, out_dir: Path, base_model: str, method: str) -> Path:
    """`OUT/adapter`, with `bds_adapter.json` naming its base model and method."""
    adapter_dir = out_dir / "adapter"
    save_adapter(model, adapter_dir)
    (adapter_dir / "bds_adapter.json").write_text(
        json.dumps({"base_model": base_model, "method": method}, indent=2)
    )
    return adapter_dir


def write_weights(
    out_dir: Path,
    examples: Sequence[Example],
    weights: torch.Tensor,
    summary: WeightSummary | None,
) -> Path:
    """`OUT/weights.jsonl`: one `weight_row` per example, in file order."""
    weights_file = out_dir / "weights.jsonl"
    with weights_file.open("w") as handle:
        for index, example in enumerate(examples):
            row = weight_row(index, example, float(weights[index]), summary)
            handle.write(json.dumps(row) + "\n")
    return weights_file


def write_metrics(out_dir: Path, metrics: dict[str, Any]) -> Path:
    """`OUT/metrics.json`."""
    metrics_file = out_dir / "metrics.json"
    metrics_file.write_text(json.dumps(metrics, indent=2, default=str))
    return metrics_file


def write_outputs(
    model: Any,
    config: TrainConfig,
    data: TrainingData,
    scheduler: DataScheduler | None,
    weights: torch.Tensor,
    *,
    step: int,
    total_steps: int,
    history: list[dict[str, float | None]],
    elapsed_s: float,
    resumed_from_step: int | None,
    world_size: int,
    throughput: dict[str, float],
    peak_gpu_memory_mb: float | None,
) -> TrainResult:
    """Write the adapter, `weights.jsonl` and `metrics.json` of a finished run (rank 0).

    `weights` is the current weight of every trained example; when sampling, the reported
    weight is the posterior mean instead (bds-method.md), and examples the selection left out
    are reported with weight 0.
    """
    out = config.out_dir
    out.mkdir(parents=True, exist_ok=True)
    adapter_dir = write_adapter(model, out, config.model, config.method)

    final = weights
    summary: WeightSummary | None = None
    if scheduler is not None:
        summary = scheduler.summarise_weights(INTERVAL_LEVEL)
        if summary.kind == "posterior" and summary.n_samples > 0:
            final = summary.mean.cpu()
    elif data.dropped_ids:
        final = torch.tensor(
            [0.0 if ex.id in data.dropped_ids else 1.0 for ex in data.all_train_examples]
        )
    reported = data.all_train_examples if data.dropped_ids else data.train_examples
    weights_file = write_weights(out, reported, final, summary)

    labels = [ex.is_harmful for ex in reported]
    known_labels = labels if any(x is not None for x in labels) else None
    metrics: dict[str, Any] = {
        "method": config.method,
        "model": config.model,
        "steps": step,
        "total_steps": total_steps,
        "num_train_examples": len(data.train_examples),
        "num_safety_examples": len(data.safety_examples),
        "num_dropped_examples": len(data.dropped_ids),
        **throughput,
        "world_size": world_size,
        "elapsed_s": elapsed_s,
        "peak_rss_mb": peak_rss_mb(),
        "final_loss": history[-1]["loss"] if history else None,
        # Tokens (without padding) of every row the model steps trained on, customer and
        # alignment, over the whole run including the steps before a resume.
        "trained_tokens": int(sum(record.get("tokens") or 0 for record in history)),
        "weight_stats": weight_statistics(final, known_labels),
        "weight_uncertainty": uncertainty_statistics(summary, known_labels),
        "history": history,
        "resumed_from_step": resumed_from_step,
        "config": config.to_dict(),
    }
    if peak_gpu_memory_mb is not None:
        metrics["peak_gpu_memory_mb"] = peak_gpu_memory_mb
    return TrainResult(
        out_dir=out,
        adapter_dir=adapter_dir,
        weights_file=weights_file,
        metrics_file=write_metrics(out, metrics),
        metrics=metrics,
        steps=step,
        resumed_from_step=resumed_from_step,
        world_size=world_size,
    )


def cancelled_result(
    out_dir: Path, step: int, resumed_from_step: int | None, rank: int, world_size: int
) -> TrainResult:
    """What a cancelled run reports: no outputs, only the step its last checkpoint holds."""
    return TrainResult(
        out_dir=out_dir,
        adapter_dir=None,
        weights_file=None,
        metrics_file=None,
        metrics={"steps": step, "cancelled": True},
        steps=step,
        cancelled=True,
        resumed_from_step=resumed_from_step,
        rank=rank,
        world_size=world_size,
    )


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


__all__ = [
    "MAIN_ADAPTER",
    "TrainResult",
    "cancelled_result",
    "peak_rss_mb",
    "save_adapter",
    "weight_row",
    "write_adapter",
    "write_metrics",
    "write_outputs",
    "write_weights",
]
