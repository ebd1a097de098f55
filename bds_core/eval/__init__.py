"""Evaluation: refusal judges, greedy generation, HS / FA / over-refusal, detection metrics."""

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
from bds_core.eval.judges import (
    DEFAULT_REFUSAL_PHRASES,
    Judge,
    RefusalPhraseJudge,
    is_degenerate,
    judge_name,
)
from bds_core.eval.metrics import auroc, recall_at_fpr

__all__ = [
    "DEFAULT_REFUSAL_PHRASES",
    "GenerativeModel",
    "HarmfulScoreResult",
    "Judge",
    "Prompt",
    "RefusalPhraseJudge",
    "auroc",
    "exact_match_accuracy",
    "generate_answers",
    "harmful_score",
    "is_degenerate",
    "judge_name",
    "normalise_answer",
    "over_refusal_rate",
    "recall_at_fpr",
]
