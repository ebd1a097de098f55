"""Detection metrics for per-example scores against harmful labels (numpy only)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt


def _scores_and_labels(
    scores: Sequence[float] | npt.ArrayLike, labels: Sequence[bool] | npt.ArrayLike
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    score_array = np.asarray(scores, dtype=np.float64).reshape(-1)
    raw_labels = np.asarray(labels).reshape(-1)
    if score_array.shape != raw_labels.shape:
        raise ValueError(
            f"scores and labels must have the same length, got {score_array.size} and "
            f"{raw_labels.size}"
        )
    if not np.all(np.isfinite(score_array)):
        raise ValueError("scores must be finite numbers (found NaN or infinity)")
    if raw_labels.dtype != np.bool_ and not np.all(np.isin(raw_labels, (0, 1))):
        raise ValueError("labels must be booleans or 0/1 (1 = harmful, the positive class)")
    label_array = raw_labels.astype(np.bool_)
    n_positive = int(label_array.sum())
    if n_positive == 0 or n_positive == label_array.size:
        only = "harmful" if n_positive else "benign"
        raise ValueError(
            f"labels must contain both classes; all {label_array.size} are {only}, so the "
            "metric is undefined"
        )
    return score_array, label_array


def _average_ranks(values: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """1-based ranks; tied values share the mean of the ranks they span."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    # Start index of each run of equal values in sorted order.
    run_starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    run_ends = np.r_[run_starts[1:], values.size]
    run_ranks = (run_starts + 1 + run_ends) / 2.0  # mean of ranks start+1 .. end
    ranks_sorted = np.repeat(run_ranks, run_ends - run_starts)
    ranks = np.empty_like(ranks_sorted)
    ranks[order] = ranks_sorted
    return ranks


def auroc(scores: Sequence[float] | npt.ArrayLike, labels: Sequence[bool] | npt.ArrayLike) -> float:
    """Area under the ROC curve; higher score = more likely harmful (label True / 1).

    Computed as the Mann-Whitney U statistic with average ranks, so a tie between a harmful and a
    benign example counts one half. For weights (low weight = harmful) pass ``-weights``.
    Raises ValueError if the lengths differ, a score is not finite or only one class is present.
    """
    score_array, label_array = _scores_and_labels(scores, labels)
    ranks = _average_ranks(score_array)
    n_positive = int(label_array.sum())
    n_negative = label_array.size - n_positive
    rank_sum_positive = float(ranks[label_array].sum())
    u_statistic = rank_sum_positive - n_positive * (n_positive + 1) / 2.0
    return u_statistic / (n_positive * n_negative)


def recall_at_fpr(
    scores: Sequence[float] | npt.ArrayLike,
    labels: Sequence[bool] | npt.ArrayLike,
    fpr: float = 0.05,
) -> float:
    """Share of harmful examples flagged when at most ``fpr`` of benign ones are flagged.

    An example is flagged when its score is at or above a threshold; the threshold is the lowest
    one whose false-positive rate does not exceed ``fpr``. Tied scores are flagged together, so
    a tie straddling the threshold is never split at random. Returns a fraction in [0, 1].
    """
    if not 0.0 <= fpr <= 1.0:
        raise ValueError(f"fpr must be between 0 and 1, got {fpr}")
    score_array, label_array = _scores_and_labels(scores, labels)
    negatives = np.sort(score_array[~label_array])
    positives = np.sort(score_array[label_array])
    thresholds = np.unique(score_array)  # ascending
    # Number of negatives (positives) with score >= threshold, for every candidate threshold.
    flagged_negatives = negatives.size - np.searchsorted(negatives, thresholds, side="left")
    flagged_positives = positives.size - np.searchsorted(positives, thresholds, side="left")
    allowed = flagged_negatives / negatives.size <= fpr + 1e-12
    if not np.any(allowed):
        return 0.0
    # The lowest allowed threshold flags the most positives (counts only fall as it rises).
    lowest_allowed = int(np.flatnonzero(allowed)[0])
    return float(flagged_positives[lowest_allowed] / positives.size)
