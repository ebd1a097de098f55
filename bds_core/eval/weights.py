"""Statistics of a run's per-example weights: spread, collapse, detection and intervals.

Harmful labels are only ever used here, for evaluation, never for training.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from bds_core.eval.metrics import auroc

if TYPE_CHECKING:
    from bds_core.schedulers.base import WeightSummary

INTERVAL_LEVEL = 0.9
"""Coverage of the per-example weight interval reported when sampling."""


def weight_statistics(
    weights: torch.Tensor, harmful_labels: Sequence[bool | None] | None = None
) -> dict[str, float]:
    """Summary of a weight vector: spread, collapse indicators and, if labels exist, AUROC.

    `ess_ratio` is the effective sample size (sum w)^2 / sum w^2 over N (1 = uniform);
    `entropy_ratio` is the entropy of w / sum w over log N.
    """
    values = weights.detach().double().cpu()
    n = values.numel()
    total = values.sum().clamp_min(1e-12)
    probs = (values / total).clamp_min(0)
    entropy = -(probs[probs > 0] * probs[probs > 0].log()).sum().item()
    stats = {
        "mean": values.mean().item(),
        "std": values.std(unbiased=False).item(),
        "min": values.min().item(),
        "max": values.max().item(),
        "ess_ratio": (total**2 / values.pow(2).sum().clamp_min(1e-12)).item() / n,
        "entropy_ratio": entropy / math.log(n) if n > 1 else 1.0,
        "share_below_half": (values < 0.5).double().mean().item(),
    }
    if harmful_labels is not None:
        known = [
            (float(w), bool(lab))
            for w, lab in zip(values.tolist(), harmful_labels, strict=True)
            if lab is not None
        ]
        labels = [lab for _, lab in known]
        if labels and any(labels) and not all(labels):
            # Low weight means harmful, so the harmfulness score is the negated weight.
            stats["auroc"] = auroc([-w for w, _ in known], labels)
            harmful = [w for w, lab in known if lab]
            benign = [w for w, lab in known if not lab]
            stats["mean_weight_harmful"] = float(np.mean(harmful))
            stats["mean_weight_benign"] = float(np.mean(benign))
            benign_tensor = torch.tensor(benign, dtype=torch.float64)
            stats["benign_ess_ratio"] = (
                benign_tensor.sum() ** 2 / benign_tensor.pow(2).sum().clamp_min(1e-12)
            ).item() / len(benign)
    return stats


def uncertainty_statistics(
    summary: WeightSummary | None, harmful_labels: Sequence[bool | None] | None = None
) -> dict[str, Any]:
    """What the per-example intervals say, when sampling: how many lie entirely below 1.

    With labels (evaluation only), `harmful_below_one` is the share of harmful examples whose
    interval lies entirely below 1 and `benign_not_below_one` the share of benign ones whose
    interval does not; their mean is the coverage of the labels by "interval below 1".
    """
    if summary is None or summary.kind != "posterior" or summary.n_samples == 0:
        return {"kind": summary.kind if summary is not None else "none"}
    below = (summary.high < 1.0).cpu().tolist()
    stats: dict[str, Any] = {
        "kind": "posterior",
        "interval_level": INTERVAL_LEVEL,
        "n_samples": summary.n_samples,
        "share_interval_below_one": sum(below) / len(below),
        "mean_interval_width": float((summary.high - summary.low).mean()),
    }
    if harmful_labels is not None:
        stats.update(interval_separation(below, harmful_labels))
    return stats


def interval_separation(
    below_one: Sequence[bool], harmful_labels: Sequence[bool | None]
) -> dict[str, float]:
    """Coverage of the labels by "interval entirely below 1" (rows without a label skipped)."""
    harmful = [b for b, lab in zip(below_one, harmful_labels, strict=True) if lab is True]
    benign = [b for b, lab in zip(below_one, harmful_labels, strict=True) if lab is False]
    stats: dict[str, float] = {}
    if harmful:
        stats["harmful_below_one"] = sum(harmful) / len(harmful)
    if benign:
        stats["benign_not_below_one"] = 1.0 - sum(benign) / len(benign)
    if harmful and benign:
        stats["interval_coverage"] = (
            stats["harmful_below_one"] + stats["benign_not_below_one"]
        ) / 2.0
    return stats


__all__ = ["INTERVAL_LEVEL", "interval_separation", "uncertainty_statistics", "weight_statistics"]
