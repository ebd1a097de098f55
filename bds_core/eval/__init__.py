"""Evaluation: refusal judges, greedy generation, HS / FA / over-refusal, detection metrics,
statistics of per-example weights.

The generation and weight names import torch on first use, so ``from bds_core.eval import
RefusalPhraseJudge`` stays cheap (the API judges answers from the inference engine with it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bds_core.eval.judges import (
    DEFAULT_REFUSAL_PHRASES,
    Judge,
    RefusalPhraseJudge,
    is_degenerate,
    judge_name,
)
from bds_core.lazy import lazy_attributes

if TYPE_CHECKING:
    from bds_core.eval.generation import (
        GenerativeModel,
        HarmfulScoreResult,
        Prompt,
        exact_match_accuracy,
        generate_answers,
        harmful_score,
        normalise_answer,
        over_refusal_rate,
    )
    from bds_core.eval.metrics import auroc, recall_at_fpr
    from bds_core.eval.weights import (
        INTERVAL_LEVEL,
        interval_separation,
        uncertainty_statistics,
        weight_statistics,
    )

_LAZY_NAMES = {
    **dict.fromkeys(
        (
            "GenerativeModel",
            "HarmfulScoreResult",
            "Prompt",
            "exact_match_accuracy",
            "generate_answers",
            "harmful_score",
            "normalise_answer",
            "over_refusal_rate",
        ),
        "bds_core.eval.generation",
    ),
    "auroc": "bds_core.eval.metrics",
    "recall_at_fpr": "bds_core.eval.metrics",
    **dict.fromkeys(
        ("INTERVAL_LEVEL", "interval_separation", "uncertainty_statistics", "weight_statistics"),
        "bds_core.eval.weights",
    ),
}


__getattr__ = lazy_attributes(__name__, _LAZY_NAMES)


__all__ = [
    "DEFAULT_REFUSAL_PHRASES",
    "INTERVAL_LEVEL",
    "GenerativeModel",
    "HarmfulScoreResult",
    "Judge",
    "Prompt",
    "RefusalPhraseJudge",
    "auroc",
    "exact_match_accuracy",
    "generate_answers",
    "harmful_score",
    "interval_separation",
    "is_degenerate",
    "judge_name",
    "normalise_answer",
    "over_refusal_rate",
    "recall_at_fpr",
    "uncertainty_statistics",
    "weight_statistics",
]
