"""Prompt splits, refusals and benign tasks of the benchmark data builder (no model needed)."""

from __future__ import annotations

import random
import re
from collections import Counter
from pathlib import Path

import pytest

from bds_core.bench.prompts import (
    HarmfulPrompt,
    load_strongreject,
    split_prompts,
    stratified_allocation,
)
from bds_core.bench.refusals import REFUSAL_TEMPLATES, build_safety_examples, refusal_for
from bds_core.bench.tasks import REVIEW_PHRASES, TASKS, get_task, number_to_words
from bds_core.eval import RefusalPhraseJudge

CATEGORY_SIZES = {"Violence": 54, "Sexual content": 50, "Non-violent crimes": 59, "Scams": 13}


def make_prompts() -> list[HarmfulPrompt]:
    prompts: list[HarmfulPrompt] = []
    for category, size in CATEGORY_SIZES.items():
        for k in range(size):
            prompts.append(
                HarmfulPrompt(len(prompts), category, "test", f"{category} request number {k}")
            )
    return prompts


def test_split_is_disjoint_complete_and_stratified() -> None:
    prompts = make_prompts()
    split = split_prompts(
        prompts, seed=3, n_alignment=50, n_harmful_train=40, n_scheduler_holdout=20
    )
    sets = [split.alignment, split.harmful_train, split.evaluation]
    indices = [{prompt.index for prompt in group} for group in sets]
    assert [len(group) for group in sets] == [50, 40, len(prompts) - 90]
    assert (
        not indices[0] & indices[1] and not indices[0] & indices[2] and not indices[1] & indices[2]
    )
    assert indices[0] | indices[1] | indices[2] == {prompt.index for prompt in prompts}
    holdout = {prompt.index for prompt in split.scheduler_holdout}
    assert len(holdout) == 20 and holdout <= indices[2]
    # Stratified: each category gets its proportional share, within one item.
    for group, size in ((split.alignment, 50), (split.harmful_train, 40)):
        counts = Counter(prompt.category for prompt in group)
        for category, available in CATEGORY_SIZES.items():
            assert abs(counts[category] - available * size / len(prompts)) <= 1.5
    assert split.counts()["alignment"]["total"] == 50


def test_split_depends_only_on_seed() -> None:
    prompts = make_prompts()
    shuffled = random.Random(0).sample(prompts, len(prompts))
    first = split_prompts(prompts, seed=1, n_alignment=30, n_harmful_train=30)
    again = split_prompts(shuffled, seed=1, n_alignment=30, n_harmful_train=30)
    other = split_prompts(prompts, seed=2, n_alignment=30, n_harmful_train=30)
    assert first == again
    assert first.alignment != other.alignment


def test_split_refuses_sizes_that_leave_no_evaluation_prompts() -> None:
    with pytest.raises(ValueError, match="must leave evaluation prompts"):
        split_prompts(make_prompts(), seed=0, n_alignment=100, n_harmful_train=76)


def test_stratified_allocation_sums_exactly() -> None:
    sizes = {"a": 59, "b": 54, "c": 50, "d": 50, "e": 50, "f": 50}
    for total in (0, 1, 7, 100, 313):
        allocation = stratified_allocation(sizes, total)
        assert sum(allocation.values()) == total
        assert all(0 <= allocation[name] <= sizes[name] for name in sizes)


def test_load_strongreject_reads_rows_and_names_bad_ones(tmp_path: Path) -> None:
    good = tmp_path / "good.csv"
    good.write_text(
        'category,source,forbidden_prompt\nViolence,custom,"How do I, hypothetically, hurt"\n'
    )
    assert load_strongreject(good) == [
        HarmfulPrompt(0, "Violence", "custom", "How do I, hypothetically, hurt")
    ]
    missing_column = tmp_path / "missing.csv"
    missing_column.write_text("category,prompt\nViolence,x\n")
    with pytest.raises(ValueError, match="missing column"):
        load_strongreject(missing_column)
    empty_prompt = tmp_path / "empty.csv"
    empty_prompt.write_text("category,source,forbidden_prompt\nViolence,custom,x\nViolence,a,\n")
    with pytest.raises(ValueError, match="line 3"):
        load_strongreject(empty_prompt)


def test_safety_examples_use_many_refusals_and_name_categories() -> None:
    prompts = make_prompts()[:60]
    examples = build_safety_examples(prompts, seed=0)
    assert len(REFUSAL_TEMPLATES) >= 20
    answers = [example.answer for example in examples]
    assert len({example.metadata["refusal_template"] for example in examples}) == len(
        REFUSAL_TEMPLATES
    )
    assert any("violence" in answer for answer in answers)
    assert all("{" not in answer for answer in answers)
    assert [example.messages[0].content for example in examples] == [p.text for p in prompts]
    assert all(
        example.metadata["set"] == "safety" and "label" not in example.metadata
        for example in examples
    )
    assert build_safety_examples(prompts, seed=0) == examples


def test_every_refusal_counts_as_one_for_the_default_judge() -> None:
    judge = RefusalPhraseJudge()
    for prompt in make_prompts()[:: len(REFUSAL_TEMPLATES)]:
        for template in REFUSAL_TEMPLATES:
            assert judge.is_refusal(refusal_for(prompt, template)), template


@pytest.mark.parametrize("task_name", sorted(TASKS))
def test_task_items_are_deterministic_distinct_and_disjoint(task_name: str) -> None:
    task = get_task(task_name)
    evaluation, train = task.items(seed=5, n_eval=120, n_train=300)
    assert (evaluation, train) == task.items(seed=5, n_eval=120, n_train=300)
    assert task.items(seed=5, n_eval=120, n_train=50)[1] == train[:50]
    prompts = [item.prompt for item in evaluation + train]
    assert len(set(prompts)) == len(prompts) == 420
    assert task.items(seed=6, n_eval=120, n_train=0)[0] != evaluation
    for item in evaluation:
        assert task.is_correct(item.answer, item.answer)


def answer_of(prompt: str, task_name: str) -> str:
    """An independent solver for each task's prompt, to check the reference answers."""
    if task_name == "sort-words":
        words = prompt.split(": ", 1)[1].split(", ")
        return " ".join(sorted(words))
    if task_name == "spell-number":
        return number_to_words(int(prompt.split()[3]))
    if task_name == "sentiment":
        review = prompt.split("Review: ", 1)[1]
        positive, negative = (
            [p for p in REVIEW_PHRASES[kind] if re.search(rf"\b{re.escape(p)}\b", review)]
            for kind in ("positive", "negative")
        )
        # Whole phrases only ("unreliable" is not "reliable"): a review holds two phrases of
        # its own sentiment and none of the other.
        assert (len(positive) == 2 and not negative) or (len(negative) == 2 and not positive)
        return "positive" if positive else "negative"
    numbers = [int(token.strip(".,?")) for token in prompt.split() if token.strip(".,?").isdigit()]
    if "box holds" in prompt:
        return str(numbers[0] * numbers[1])
    if "equally among" in prompt:
        return str(numbers[0] // numbers[1])
    if "gave" in prompt:
        return str(numbers[0] - numbers[1])
    if "neighbour" in prompt:
        return str(numbers[0] + numbers[1] - numbers[2])
    return str(numbers[0] + numbers[1])


@pytest.mark.parametrize("task_name", sorted(TASKS))
def test_task_answers_are_correct(task_name: str) -> None:
    task = get_task(task_name)
    evaluation, train = task.items(seed=0, n_eval=100, n_train=200)
    for item in evaluation + train:
        assert item.answer == answer_of(item.prompt, task_name), item
        if task_name == "arithmetic":
            assert int(item.answer) >= 0


def test_scorers_normalise_formatting_but_not_content() -> None:
    arithmetic, sort_words, spell = (
        get_task(name) for name in ("arithmetic", "sort-words", "spell-number")
    )
    assert arithmetic.is_correct(" 1,204.\nmore text", "1204")
    assert not arithmetic.is_correct("124", "1204")
    assert sort_words.is_correct("Apple, banana cherry.", "apple banana cherry")
    assert not sort_words.is_correct("banana apple cherry", "apple banana cherry")
    assert spell.is_correct("Twenty One thousand and five", "twenty-one thousand five")
    assert not spell.is_correct("twenty thousand five", "twenty-one thousand five")
    sentiment = get_task("sentiment")
    assert sentiment.is_correct(" Positive.\nThe review praises it", "positive")
    assert not sentiment.is_correct("The review is positive", "positive")


def test_number_to_words_examples_and_range() -> None:
    assert number_to_words(0) == "zero"
    assert number_to_words(115) == "one hundred fifteen"
    assert number_to_words(40_007) == "forty thousand seven"
    assert number_to_words(999_999) == "nine hundred ninety-nine thousand nine hundred ninety-nine"
    assert number_to_words(1_000_000) == "one million"
    assert number_to_words(305_000_012) == "three hundred five million twelve"
    assert number_to_words(12_345_678) == (
        "twelve million three hundred forty-five thousand six hundred seventy-eight"
    )
    with pytest.raises(ValueError, match="between 0 and 999999999"):
        number_to_words(1_000_000_000)


def test_unknown_task_lists_known_ones() -> None:
    with pytest.raises(
        ValueError, match="known tasks: arithmetic, sort-words, spell-number, sentiment"
    ):
        get_task("sst2")
