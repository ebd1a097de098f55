"""Harmful prompts for the benchmark: the StrongREJECT CSV and its deterministic, stratified split.

The split is made once per seed and every set is disjoint from the others:

- ``alignment``: paired with refusals to build the provider's alignment set D_safe;
- ``harmful_train``: paired with compliant answers to poison the customer data D_ft;
- ``evaluation``: the rest, used only to measure the Harmful Score. No training file the builder
  writes (D_safe, D_ft, the harmful pool) contains these prompts, so neither fine-tuning nor the
  pretraining of the amortized scheduler ever sees them.
- ``scheduler_holdout``: an optional category-stratified subset *of the evaluation split* whose
  prompts also get compliant answers, so the pretrained neural scheduler can be checked on harmful
  examples it never saw. It is a subset of ``evaluation``, not a fourth disjoint set.
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

STRONGREJECT_COLUMNS: tuple[str, ...] = ("category", "source", "forbidden_prompt")
"""Columns the StrongREJECT CSV must have."""


@dataclass(frozen=True)
class HarmfulPrompt:
    """One forbidden prompt: its 0-based row in the source CSV, category, origin and text."""

    index: int
    category: str
    source: str
    text: str


def load_strongreject(path: str | Path) -> list[HarmfulPrompt]:
    """Read the StrongREJECT CSV (columns category, source, forbidden_prompt) in file order.

    Raises ValueError naming the file and row when a column is missing or a prompt is empty.
    """
    path = Path(path)
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [name for name in STRONGREJECT_COLUMNS if name not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(
                f"{path}: missing column(s) {', '.join(missing)}; "
                f"expected {', '.join(STRONGREJECT_COLUMNS)}, got {reader.fieldnames}"
            )
        prompts = []
        for index, row in enumerate(reader):
            text = (row["forbidden_prompt"] or "").strip()
            category = (row["category"] or "").strip()
            if not text or not category:
                # +2: the header is line 1 and rows are 0-based.
                raise ValueError(f"{path}: line {index + 2} has an empty prompt or category")
            prompts.append(
                HarmfulPrompt(
                    index=index, category=category, source=(row["source"] or "").strip(), text=text
                )
            )
    if not prompts:
        raise ValueError(f"{path}: no prompts")
    return prompts


def prompts_digest(prompts: Sequence[HarmfulPrompt]) -> str:
    """sha256 (hex) of the prompts' categories and texts in order; identifies a prompt set."""
    canonical = json.dumps(
        [[prompt.category, prompt.text] for prompt in prompts],
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def stratified_allocation(sizes: Mapping[str, int], total: int) -> dict[str, int]:
    """Split ``total`` over strata proportionally to ``sizes`` (largest remainder, exact sum).

    Ties in the remainder go to the larger stratum, then to the name that sorts first, so the
    result depends only on the inputs. Raises ValueError if ``total`` exceeds the items available.
    """
    available = sum(sizes.values())
    if total < 0 or total > available:
        raise ValueError(f"cannot take {total} items from strata holding {available}")
    if total == 0:
        return dict.fromkeys(sizes, 0)
    quotas = {name: size * total / available for name, size in sizes.items()}
    counts = {name: int(quota) for name, quota in quotas.items()}
    leftover = total - sum(counts.values())
    by_remainder = sorted(
        sizes, key=lambda name: (-(quotas[name] - counts[name]), -sizes[name], name)
    )
    for name in by_remainder[:leftover]:
        counts[name] += 1
    return counts


@dataclass(frozen=True)
class PromptSplit:
    """Disjoint prompt sets of one split (see the module docstring for what each is for)."""

    seed: int
    alignment: tuple[HarmfulPrompt, ...]
    harmful_train: tuple[HarmfulPrompt, ...]
    evaluation: tuple[HarmfulPrompt, ...]
    scheduler_holdout: tuple[HarmfulPrompt, ...] = field(default=())

    def counts(self) -> dict[str, dict[str, int]]:
        """Per set, the number of prompts of each category (and ``"total"``)."""
        result: dict[str, dict[str, int]] = {}
        for name in ("alignment", "harmful_train", "evaluation", "scheduler_holdout"):
            prompts: tuple[HarmfulPrompt, ...] = getattr(self, name)
            per_category: dict[str, int] = {}
            for prompt in prompts:
                per_category[prompt.category] = per_category.get(prompt.category, 0) + 1
            result[name] = {**dict(sorted(per_category.items())), "total": len(prompts)}
        return result


def split_prompts(
    prompts: Sequence[HarmfulPrompt],
    seed: int,
    n_alignment: int = 100,
    n_harmful_train: int = 100,
    n_scheduler_holdout: int = 0,
) -> PromptSplit:
    """Split prompts by category into alignment, harmful-training and evaluation sets.

    Each category is shuffled with its own seeded generator and cut so every set holds about the
    category's share of its size (exact totals, see ``stratified_allocation``); the evaluation
    set takes the rest. ``n_scheduler_holdout`` prompts are then drawn, again stratified, from the
    evaluation set. Every set is returned in source-CSV order. Same prompts and seed, same split.
    """
    for name, value in (
        ("n_alignment", n_alignment),
        ("n_harmful_train", n_harmful_train),
        ("n_scheduler_holdout", n_scheduler_holdout),
    ):
        if value < 0:
            raise ValueError(f"{name} must be at least 0, got {value}")
    if n_alignment + n_harmful_train >= len(prompts):
        raise ValueError(
            f"n_alignment ({n_alignment}) + n_harmful_train ({n_harmful_train}) must leave "
            f"evaluation prompts out of {len(prompts)}"
        )
    by_category: dict[str, list[HarmfulPrompt]] = {}
    for prompt in sorted(prompts, key=lambda item: item.index):
        by_category.setdefault(prompt.category, []).append(prompt)
    for category, members in by_category.items():
        # A string seed is hashed with sha512 by `random`, so this is stable across processes.
        random.Random(f"bds-bench-split:{seed}:{category}").shuffle(members)

    sizes = {category: len(members) for category, members in by_category.items()}
    alignment_counts = stratified_allocation(sizes, n_alignment)
    remaining = {category: sizes[category] - alignment_counts[category] for category in sizes}
    harmful_counts = stratified_allocation(remaining, n_harmful_train)

    alignment: list[HarmfulPrompt] = []
    harmful_train: list[HarmfulPrompt] = []
    evaluation_by_category: dict[str, list[HarmfulPrompt]] = {}
    for category, members in by_category.items():
        cut_alignment = alignment_counts[category]
        cut_harmful = cut_alignment + harmful_counts[category]
        alignment += members[:cut_alignment]
        harmful_train += members[cut_alignment:cut_harmful]
        evaluation_by_category[category] = members[cut_harmful:]

    evaluation = [prompt for members in evaluation_by_category.values() for prompt in members]
    if n_scheduler_holdout > len(evaluation):
        raise ValueError(
            f"n_scheduler_holdout ({n_scheduler_holdout}) exceeds the {len(evaluation)} "
            "evaluation prompts it is drawn from"
        )
    holdout_counts = stratified_allocation(
        {category: len(members) for category, members in evaluation_by_category.items()},
        n_scheduler_holdout,
    )
    # The evaluation lists are already shuffled, so their heads are a random stratified subset.
    holdout = [
        prompt
        for category, members in evaluation_by_category.items()
        for prompt in members[: holdout_counts[category]]
    ]

    def in_source_order(items: list[HarmfulPrompt]) -> tuple[HarmfulPrompt, ...]:
        return tuple(sorted(items, key=lambda item: item.index))

    return PromptSplit(
        seed=seed,
        alignment=in_source_order(alignment),
        harmful_train=in_source_order(harmful_train),
        evaluation=in_source_order(evaluation),
        scheduler_holdout=in_source_order(holdout),
    )
