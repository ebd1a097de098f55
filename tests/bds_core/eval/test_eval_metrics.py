"""AUROC (Mann-Whitney with average ranks) and recall at a fixed false-positive rate."""

from __future__ import annotations

import numpy as np
import pytest

from bds_core.eval import auroc, recall_at_fpr


def pairwise_auroc(scores: list[float], labels: list[int]) -> float:
    """Hand computation: share of (harmful, benign) pairs ranked right, ties counting one half."""
    positives = [s for s, label in zip(scores, labels, strict=True) if label]
    negatives = [s for s, label in zip(scores, labels, strict=True) if not label]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


def test_textbook_example() -> None:
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)


def test_perfect_reversed_and_all_tied() -> None:
    assert auroc([0.9, 0.8, 0.1, 0.2], [True, True, False, False]) == 1.0
    assert auroc([0.1, 0.2, 0.9, 0.8], [True, True, False, False]) == 0.0
    assert auroc([3.0] * 6, [1, 0, 1, 0, 0, 1]) == 0.5


def test_ties_count_one_half() -> None:
    # Pairs (harmful, benign): (1,1) tie, (1,2) lost, (3,1) won, (3,2) won -> 2.5 / 4.
    assert auroc([1, 1, 2, 3], [0, 1, 0, 1]) == pytest.approx(0.625)


def test_matches_pair_counting_on_random_scores_with_many_ties() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        size = int(rng.integers(2, 60))
        scores = rng.integers(0, 5, size).astype(float).tolist()
        labels = rng.integers(0, 2, size).tolist()
        labels[0], labels[1] = 0, 1
        assert auroc(scores, labels) == pytest.approx(pairwise_auroc(scores, labels))


def test_weights_are_negated_to_score_harmfulness() -> None:
    weights = [1.4, 1.2, 0.1, 0.05, 1.3]
    harmful = [False, False, True, True, False]
    assert auroc([-w for w in weights], harmful) == 1.0


@pytest.mark.parametrize(
    ("scores", "labels", "message"),
    [
        ([0.1, 0.2], [1, 1], "both classes"),
        ([0.1, 0.2], [False, False], "both classes"),
        ([0.1, 0.2, 0.3], [1, 0], "same length"),
        ([0.1, float("nan")], [1, 0], "finite"),
        ([0.1, 0.2], [2, 0], "0/1"),
    ],
)
def test_bad_inputs_raise_clear_errors(
    scores: list[float], labels: list[int], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        auroc(scores, labels)
    with pytest.raises(ValueError, match=message):
        recall_at_fpr(scores, labels)


def test_recall_at_fpr_by_hand() -> None:
    negatives = [float(k) for k in range(20)]  # 0 .. 19
    positives = [5.0, 18.5, 19.0, 25.0]
    scores = negatives + positives
    labels = [0] * 20 + [1] * 4
    # 5% of 20 benign = 1 may be flagged: threshold 18.5 flags benign 19 and harmful 18.5, 19, 25.
    assert recall_at_fpr(scores, labels, fpr=0.05) == pytest.approx(0.75)
    # 70% = 14 benign: threshold 6 still misses harmful 5; 75% = 15 benign reaches it.
    assert recall_at_fpr(scores, labels, fpr=0.70) == pytest.approx(0.75)
    assert recall_at_fpr(scores, labels, fpr=0.75) == pytest.approx(1.0)
    # No benign may be flagged: only the harmful score above every benign one counts.
    assert recall_at_fpr(scores, labels, fpr=0.0) == pytest.approx(0.25)
    assert recall_at_fpr(scores, labels, fpr=1.0) == 1.0


def test_recall_at_fpr_never_splits_a_tie() -> None:
    # Harmful and benign share the top score; flagging it would flag 50% of benign ones.
    assert recall_at_fpr([1.0, 1.0, 0.0, 0.0], [1, 0, 1, 0], fpr=0.05) == 0.0
    assert recall_at_fpr([1.0, 1.0, 0.0, 0.0], [1, 0, 1, 0], fpr=0.5) == 0.5


def test_recall_at_fpr_rejects_fpr_outside_unit_interval() -> None:
    with pytest.raises(ValueError, match="fpr"):
        recall_at_fpr([0.1, 0.2], [0, 1], fpr=1.5)
