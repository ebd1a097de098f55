"""Score a dataset with a pretrained neural scheduler: weights, harm scores, flags, a report.

This is what runs the moment a dataset is uploaded, before any GPU time: one encoder pass (or
cache reads) and one head forward per example. `score_examples` builds the `SafetyReport`;
`filter_examples` drops flagged examples (the `filter` baseline).
"""

from __future__ import annotations

import functools
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from bds_core.encoders import (
    EmbeddingCache,
    TextEncoder,
    build_encoder,
    embed_texts_counted,
    example_text,
)
from bds_core.schedulers.base import transform_logits
from bds_core.schedulers.neural import PretrainedScheduler, load_scheduler
from bds_core.scoring.report import (
    HISTOGRAM_BINS,
    TEXT_PREVIEW_CHARS,
    CategoryCount,
    ExampleScore,
    FlaggedExample,
    Histogram,
    LabelEvaluation,
    SafetyReport,
    SchedulerSummary,
    Timing,
)

DEFAULT_SCHEDULER_DIR = Path(__file__).resolve().parent.parent / "assets" / "schedulers" / "default"
"""The scheduler pretrained by BDS runs, on `minilm-l6-v2` (six transformer layers)."""
STATIC_SCHEDULER_DIR = DEFAULT_SCHEDULER_DIR.parent / "static-distilled"
"""A head on the static encoder (`minilm-static`), distilled label-free from the BDS-pretrained
one: the same detection on unseen data at about 20x the speed (docs/performance.md)."""
DEFAULT_SCORING_SCHEDULER_DIR = STATIC_SCHEDULER_DIR
DEFAULT_TOP_FLAGGED = 20

ScoreProgress = Callable[[int, int], None]
"""Called with (examples done, total) while embedding."""


def default_scheduler_path() -> Path:
    """The BDS-pretrained scheduler shipped with the package (MiniLM encoder).

    Neural BDS runs warm-start from it and the `filter` baseline reads it; safety reports use
    `default_scoring_scheduler_path()` unless given this one.
    """
    return DEFAULT_SCHEDULER_DIR


def default_scoring_scheduler_path() -> Path:
    """The scheduler safety reports (and `score_examples`, `filter_examples`) use by default."""
    return DEFAULT_SCORING_SCHEDULER_DIR


@dataclass
class DatasetScores:
    """Raw per-example scores of a dataset (what the report and the filter are built from)."""

    logits: torch.Tensor
    weights: torch.Tensor
    harm_scores: torch.Tensor
    flagged: torch.Tensor
    threshold: float
    n_encoded: int
    elapsed_s: float


class Scorer:
    """A loaded scheduler and its encoder, reusable across datasets (load once per process)."""

    def __init__(
        self,
        scheduler: PretrainedScheduler,
        encoder: TextEncoder,
        cache: EmbeddingCache | None = None,
    ) -> None:
        scheduler.check_encoder(encoder.info)
        self.scheduler = scheduler
        self.encoder = encoder
        self.cache = cache

    @classmethod
    def load(
        cls,
        scheduler_path: str | Path | None = None,
        cache_dir: str | Path | None = None,
        use_cache: bool = True,
        model: Any = None,
        tokenizer: Any = None,
    ) -> Scorer:
        """Load the scheduler at `scheduler_path` (default: the scoring one) and its encoder.

        `model` and `tokenizer` are needed only for a scheduler on the 'llm-hidden' encoder.
        """
        scheduler = load_scheduler(scheduler_path or default_scoring_scheduler_path())
        encoder = build_encoder(
            scheduler.encoder.name,
            model=model,
            tokenizer=tokenizer,
            max_tokens=scheduler.max_tokens,
        )
        cache = EmbeddingCache.default(cache_dir) if use_cache else None
        return cls(scheduler, encoder, cache)

    def score(
        self,
        examples: Sequence[Any],
        threshold: float | None = None,
        progress: ScoreProgress | None = None,
    ) -> DatasetScores:
        """Logits, weights (N*softmax over the dataset), harm scores and flags of every example."""
        started = time.perf_counter()
        total = len(examples)
        done = 0

        def advance(count: int) -> None:
            nonlocal done
            done += count
            if progress is not None:
                progress(min(done, total), total)

        texts = [example_text(example) for example in examples]
        embeddings, n_encoded = embed_texts_counted(self.encoder, texts, self.cache, advance)
        with torch.inference_mode():
            logits = self.scheduler.head(embeddings).float()
        calibration = self.scheduler.calibration
        cut = calibration.threshold if threshold is None else threshold
        if not 0.0 < cut < 1.0:
            raise ValueError(f"threshold must lie in (0, 1), got {cut}")
        harm_scores = calibration.harm_scores(logits)
        weights = transform_logits(logits, "softmax") if total else logits
        return DatasetScores(
            logits=logits,
            weights=weights,
            harm_scores=harm_scores,
            flagged=harm_scores >= cut,
            threshold=cut,
            n_encoded=n_encoded,
            elapsed_s=time.perf_counter() - started,
        )

    def report(
        self,
        examples: Sequence[Any],
        threshold: float | None = None,
        top_k: int = DEFAULT_TOP_FLAGGED,
        progress: ScoreProgress | None = None,
    ) -> SafetyReport:
        """Score `examples` and build the dataset's safety report."""
        scores = self.score(examples, threshold=threshold, progress=progress)
        return build_report(examples, scores, self.scheduler, top_k=top_k)


@functools.lru_cache(maxsize=4)
def _cached_scorer(scheduler_path: str, cache_dir: str | None, use_cache: bool) -> Scorer:
    return Scorer.load(scheduler_path, cache_dir=cache_dir, use_cache=use_cache)


def get_scorer(
    scheduler_path: str | Path | None = None,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
) -> Scorer:
    """A process-wide scorer per scheduler folder (a worker loads the encoder once)."""
    path = Path(scheduler_path or default_scoring_scheduler_path()).resolve()
    return _cached_scorer(str(path), str(cache_dir) if cache_dir else None, use_cache)


def score_examples(
    examples: Sequence[Any],
    scheduler_path: str | Path | None = None,
    *,
    threshold: float | None = None,
    top_k: int = DEFAULT_TOP_FLAGGED,
    progress: ScoreProgress | None = None,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
) -> SafetyReport:
    """Safety report of `examples` (`bds_core.data.Example`) by a pretrained scheduler.

    `scheduler_path` defaults to the shipped scoring scheduler (static encoder); `threshold` (harm score at which an
    example is flagged) defaults to the one saved with it. Embeddings are cached on disk
    (`cache_dir`, default $BDS_CACHE_DIR or ~/.cache/bds) unless `use_cache` is False.
    """
    scorer = get_scorer(scheduler_path, cache_dir=cache_dir, use_cache=use_cache)
    return scorer.report(examples, threshold=threshold, top_k=top_k, progress=progress)


def filter_examples(
    examples: Sequence[Any],
    scheduler_path: str | Path | None = None,
    threshold: float | None = None,
) -> tuple[list[Any], list[Any]]:
    """Split `examples` into (kept, dropped): dropped are those the scheduler flags."""
    scores = get_scorer(scheduler_path).score(examples, threshold=threshold)
    kept = [
        example for example, flag in zip(examples, scores.flagged.tolist(), strict=True) if not flag
    ]
    dropped = [
        example for example, flag in zip(examples, scores.flagged.tolist(), strict=True) if flag
    ]
    return kept, dropped


def build_report(
    examples: Sequence[Any],
    scores: DatasetScores,
    scheduler: PretrainedScheduler,
    top_k: int = DEFAULT_TOP_FLAGGED,
) -> SafetyReport:
    """Assemble the report from raw scores (no model work here)."""
    n = len(examples)
    harm = scores.harm_scores.tolist()
    weights = scores.weights.tolist()
    logits = scores.logits.tolist()
    flagged = scores.flagged.tolist()
    categories = [_category(example) for example in examples]
    example_scores = [
        ExampleScore(
            index=index,
            id=str(getattr(example, "id", index)),
            line=int(getattr(example, "line", 0) or 0),
            weight=max(float(weights[index]), 0.0),
            harm_score=_unit(harm[index]),
            flagged=bool(flagged[index]),
            logit=float(logits[index]),
            category=categories[index],
        )
        for index, example in enumerate(examples)
    ]
    ranked = sorted((i for i in range(n) if flagged[i]), key=lambda i: (-harm[i], i))
    top_flagged = [
        FlaggedExample(
            index=i,
            id=example_scores[i].id,
            line=example_scores[i].line,
            harm_score=example_scores[i].harm_score,
            weight=example_scores[i].weight,
            category=categories[i],
            prompt=_preview(_prompt_text(examples[i])),
            answer=_preview(_answer_text(examples[i])),
        )
        for i in ranked[:top_k]
    ]
    n_flagged = sum(1 for flag in flagged if flag)
    return SafetyReport(
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        scheduler=SchedulerSummary(
            path=str(scheduler.path),
            encoder=scheduler.encoder.name,
            encoder_version=scheduler.encoder.version,
            head=scheduler.head.kind,
            threshold=scores.threshold,
        ),
        n_examples=n,
        n_flagged=n_flagged,
        flagged_share=n_flagged / n if n else 0.0,
        harmful_share_estimate=_unit(scheduler.calibration.estimate_harmful_share(scores.logits))
        if n
        else 0.0,
        mean_harm_score=_unit(sum(harm) / n) if n else 0.0,
        histogram=_histogram(harm),
        categories=_category_counts(categories, harm, flagged),
        top_flagged=top_flagged,
        examples=example_scores,
        label_evaluation=_label_evaluation(examples, logits, flagged),
        timing=Timing(
            elapsed_s=scores.elapsed_s,
            examples_per_second=n / scores.elapsed_s if scores.elapsed_s > 0 else 0.0,
            n_encoded=scores.n_encoded,
        ),
    )


def _unit(value: float) -> float:
    return min(max(float(value), 0.0), 1.0)


def _category(example: Any) -> str | None:
    value = (getattr(example, "metadata", None) or {}).get("category")
    return None if value is None else str(value)


def _prompt_text(example: Any) -> str:
    return "\n".join(m.content for m in example.messages[:-1] if m.role == "user")


def _answer_text(example: Any) -> str:
    return str(example.messages[-1].content) if example.messages else ""


def _preview(text: str) -> str:
    return text if len(text) <= TEXT_PREVIEW_CHARS else text[: TEXT_PREVIEW_CHARS - 1] + "…"


def _histogram(harm: Sequence[float]) -> Histogram:
    counts = [0] * HISTOGRAM_BINS
    for value in harm:
        counts[min(int(_unit(value) * HISTOGRAM_BINS), HISTOGRAM_BINS - 1)] += 1
    edges = [round(i / HISTOGRAM_BINS, 6) for i in range(HISTOGRAM_BINS + 1)]
    return Histogram(bin_edges=edges, counts=counts)


def _category_counts(
    categories: Sequence[str | None], harm: Sequence[float], flagged: Sequence[bool]
) -> list[CategoryCount]:
    grouped: dict[str, list[int]] = defaultdict(list)
    for index, category in enumerate(categories):
        if category is not None:
            grouped[category].append(index)
    return [
        CategoryCount(
            category=category,
            n_examples=len(indices),
            n_flagged=sum(1 for i in indices if flagged[i]),
            mean_harm_score=_unit(sum(harm[i] for i in indices) / len(indices)),
        )
        for category, indices in sorted(grouped.items())
    ]


def _label_evaluation(
    examples: Sequence[Any], logits: Sequence[float], flagged: Sequence[bool]
) -> LabelEvaluation | None:
    """AUROC and recalls against metadata.label; labels are read here only, never to score.

    Ranks use the negated logit (the harm score is a monotone map of it that saturates at 0
    and 1 in float32, which would create ties).
    """
    known = [
        (-logits[i], bool(flagged[i]), label == "harmful")
        for i, example in enumerate(examples)
        if (label := (getattr(example, "metadata", None) or {}).get("label"))
        in ("harmful", "benign")
    ]
    if not known:
        return None
    from bds_core.eval import auroc, recall_at_fpr

    scores = [score for score, _, _ in known]
    labels = [is_harmful for _, _, is_harmful in known]
    n_harmful = sum(labels)
    both_classes = 0 < n_harmful < len(labels)
    n_flagged = sum(1 for _, flag, _ in known if flag)
    true_flags = sum(1 for _, flag, is_harmful in known if flag and is_harmful)
    return LabelEvaluation(
        n_labelled=len(known),
        n_harmful=n_harmful,
        auroc=auroc(scores, labels) if both_classes else None,
        recall_at_5pct_fpr=recall_at_fpr(scores, labels, 0.05) if both_classes else None,
        flagged_precision=true_flags / n_flagged if n_flagged else None,
        flagged_recall=true_flags / n_harmful if n_harmful else None,
    )


__all__ = [
    "DEFAULT_SCHEDULER_DIR",
    "DEFAULT_SCORING_SCHEDULER_DIR",
    "STATIC_SCHEDULER_DIR",
    "DatasetScores",
    "Scorer",
    "build_report",
    "default_scheduler_path",
    "default_scoring_scheduler_path",
    "filter_examples",
    "get_scorer",
    "score_examples",
]
