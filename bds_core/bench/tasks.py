"""Synthetic benign tasks with exactly scorable answers, generated deterministically from a seed.

- ``arithmetic``: one- or two-step word problems; the answer is a whole number (short answers).
- ``sort-words``: sort 9-15 words alphabetically; the answer is the sorted words separated by
  spaces (long answers, about 10-30 tokens), where a scheduler ranking raw loss goes wrong.
- ``spell-number``: write a number of 5 to 9 digits in English words (long answers).
- ``sentiment``: say whether a short review is positive or negative, in one word (short answers;
  unlike arithmetic, one SmolLM2-135M learns in a few dozen steps).

Each task's items come from one seeded stream of distinct prompts: the first ``n_eval`` are the
held-out evaluation items and the next ``n_train`` the training items, so the evaluation set does
not depend on how many training items are asked for and never overlaps them.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from bds_core.data import Example

ANSWER_INSTRUCTION = "Answer with the number only."


@dataclass(frozen=True)
class TaskItem:
    """One task question and its reference answer."""

    prompt: str
    answer: str


def _first_line(text: str) -> str:
    for line in text.strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


def _collapse(text: str) -> str:
    return " ".join(text.split())


def normalise_number_answer(text: str) -> str:
    """First non-empty line, without spaces, thousands separators or a trailing period."""
    line = _first_line(text).replace(",", "").replace(" ", "")
    return line.rstrip(".")


def normalise_word_list(text: str) -> str:
    """First non-empty line in lower case, commas as spaces, single spaces, no final period."""
    line = _first_line(text).lower().replace(",", " ").rstrip(".")
    return _collapse(line)


def normalise_number_words(text: str) -> str:
    """First non-empty line in lower case, hyphens as spaces, no "and", no final period."""
    line = _first_line(text).lower().replace("-", " ").replace(",", " ").rstrip(".")
    return " ".join(word for word in line.split() if word != "and")


NAMES = (
    "Anna", "Ben", "Carla", "David", "Emma", "Farid", "Grace", "Hugo", "Ines", "Jamal",
    "Kira", "Leo", "Maya", "Noah", "Olga", "Pedro", "Quinn", "Rosa", "Sam", "Tara",
)  # fmt: skip
ITEMS = (
    "apples", "books", "marbles", "pencils", "stickers", "cookies", "stamps", "shells",
    "cards", "balloons", "coins", "oranges", "buttons", "candles", "toy cars", "flowers",
)  # fmt: skip


def _arithmetic_item(rng: random.Random) -> TaskItem:
    name = rng.choice(NAMES)
    items = rng.choice(ITEMS)
    kind = rng.randrange(5)
    if kind == 0:
        a, b = rng.randint(2, 60), rng.randint(2, 40)
        question = (
            f"{name} has {a} {items} and gets {b} more. How many {items} does {name} have now?"
        )
        answer = a + b
    elif kind == 1:
        a = rng.randint(10, 90)
        b = rng.randint(1, a - 1)
        question = f"{name} had {a} {items} and gave {b} of them away. How many {items} are left?"
        answer = a - b
    elif kind == 2:
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        question = f"A box holds {a} {items}. How many {items} are in {b} boxes?"
        answer = a * b
    elif kind == 3:
        each, friends = rng.randint(2, 12), rng.randint(2, 9)
        question = (
            f"{name} shares {each * friends} {items} equally among {friends} friends. "
            f"How many {items} does each friend get?"
        )
        answer = each
    else:
        a, b = rng.randint(5, 50), rng.randint(2, 30)
        c = rng.randint(1, a + b - 1)
        question = (
            f"{name} has {a} {items}, buys {b} more and then gives {c} to a neighbour. "
            f"How many {items} does {name} have left?"
        )
        answer = a + b - c
    return TaskItem(prompt=f"{question} {ANSWER_INSTRUCTION}", answer=str(answer))


WORDS = (
    "apple", "bridge", "candle", "desert", "engine", "forest", "garden", "harbor", "island",
    "jacket", "kitten", "ladder", "mirror", "needle", "orange", "pencil", "quartz", "rabbit",
    "saddle", "tunnel", "umbrella", "valley", "window", "yellow", "zebra", "anchor", "basket",
    "castle", "dragon", "feather", "glacier", "hammer", "iceberg", "jungle", "kettle", "lantern",
    "meadow", "nutmeg", "oyster", "parrot", "quiver", "rocket", "silver", "teapot", "velvet",
    "walnut", "blanket", "cactus", "dolphin", "falcon", "giraffe", "helmet", "insect", "jigsaw",
    "koala", "lemon", "magnet", "napkin", "octopus", "pepper", "raisin", "spider", "tomato",
    "violin", "wizard", "bicycle", "compass", "diamond", "eclipse", "fountain", "granite",
    "horizon", "lobster", "mustard", "notebook", "orchard", "pumpkin", "saturn", "thunder",
    "volcano", "whistle", "biscuit", "cherry", "donkey", "emerald", "frog", "gravel", "honey",
    "ink", "jelly", "kayak", "lizard", "marble", "noodle", "olive", "pillow", "river", "salmon",
    "tiger", "walrus", "xylophone", "quokka", "marmalade", "labyrinth", "pomegranate",
    "hippopotamus", "accordion", "kaleidoscope", "tambourine", "archipelago", "cinnamon",
    "rhubarb", "saxophone", "flamingo", "porcupine", "asparagus", "avalanche", "barnacle",
    "cauliflower", "dandelion", "escalator", "gondola", "harmonica", "igloo", "jellyfish",
    "kangaroo", "lighthouse", "mandolin", "nectarine", "origami", "pelican", "raccoon",
    "scarecrow", "trampoline", "unicorn", "vinegar", "wheelbarrow", "yogurt", "zucchini",
)  # fmt: skip


SORT_WORDS_MIN, SORT_WORDS_MAX = 9, 15
"""Words per sort-words item; with SmolLM2's tokenizer the answers are about 10-30 tokens."""


def _sort_words_item(rng: random.Random) -> TaskItem:
    words = rng.sample(WORDS, rng.randint(SORT_WORDS_MIN, SORT_WORDS_MAX))
    prompt = (
        "Sort these words in alphabetical order and write them separated by spaces: "
        + ", ".join(words)
    )
    return TaskItem(prompt=prompt, answer=" ".join(sorted(words)))


_ONES = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
    "nineteen",
)  # fmt: skip
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")


def _below_thousand(number: int) -> list[str]:
    words: list[str] = []
    hundreds, rest = divmod(number, 100)
    if hundreds:
        words += [_ONES[hundreds], "hundred"]
    if rest >= 20:
        tens, ones = divmod(rest, 10)
        words.append(_TENS[tens] + (f"-{_ONES[ones]}" if ones else ""))
    elif rest:
        words.append(_ONES[rest])
    return words


_SCALES = ((1_000_000, "million"), (1000, "thousand"))
SPELL_NUMBER_LIMIT = 1_000_000_000
"""spell-number numbers are below this (up to nine digits)."""


def number_to_words(number: int) -> str:
    """English words for 0 <= number < 1,000,000,000, US style: 21 -> "twenty-one", no "and"."""
    if not 0 <= number < SPELL_NUMBER_LIMIT:
        raise ValueError(f"number must be between 0 and {SPELL_NUMBER_LIMIT - 1}, got {number}")
    if number == 0:
        return "zero"
    words: list[str] = []
    rest = number
    for scale, name in _SCALES:
        count, rest = divmod(rest, scale)
        if count:
            words += [*_below_thousand(count), name]
    return " ".join(words + _below_thousand(rest))


def _spell_number_item(rng: random.Random) -> TaskItem:
    # Five to nine digits: answers of about 10-25 tokens, the long-answer regime.
    digits = rng.randint(5, 9)
    number = rng.randint(10 ** (digits - 1), 10**digits - 1)
    return TaskItem(
        prompt=f"Write the number {number} in English words.", answer=number_to_words(number)
    )


SENTIMENT_INSTRUCTION = "Is this review positive or negative? Answer with one word."
REVIEW_SUBJECTS: tuple[str, ...] = (
    "the hotel room",
    "the film",
    "the battery life",
    "the customer service",
    "the concert",
    "this phone",
    "the delivery",
    "the novel",
    "the museum tour",
    "the running shoes",
    "the train journey",
    "the new update",
    "the cooking class",
    "the headphones",
    "the rental car",
    "the guided hike",
)
REVIEW_PHRASES: dict[str, tuple[str, ...]] = {
    "positive": (
        "wonderful",
        "excellent",
        "a real pleasure",
        "better than I expected",
        "great value for money",
        "friendly and quick",
        "beautifully made",
        "comfortable",
        "worth every penny",
        "a delight",
        "superb",
        "reliable",
        "well organised",
        "fun from start to finish",
    ),
    "negative": (
        "terrible",
        "a huge disappointment",
        "worse than I expected",
        "overpriced",
        "slow and rude",
        "badly made",
        "uncomfortable",
        "a waste of money",
        "awful",
        "broken after a week",
        "unreliable",
        "badly organised",
        "boring from start to finish",
        "noisy and dirty",
    ),
}
REVIEW_TEMPLATES: tuple[str, ...] = (
    "{Subject} was {first} and {second}.",
    "Honestly, {subject} was {first}. Also {second}.",
    "{Subject}: {first}, {second}.",
    "I thought {subject} was {first}, and my friend found it {second}.",
)


def review_text(rng: random.Random, sentiment: str) -> str:
    """A short synthetic review of the given sentiment ("positive" or "negative")."""
    first, second = rng.sample(REVIEW_PHRASES[sentiment], 2)
    subject = rng.choice(REVIEW_SUBJECTS)
    return rng.choice(REVIEW_TEMPLATES).format(
        Subject=subject.capitalize(), subject=subject, first=first, second=second
    )


def sentiment_prompt(review: str) -> str:
    """The sentiment task's question about ``review``."""
    return f"{SENTIMENT_INSTRUCTION}\nReview: {review}"


def _sentiment_item(rng: random.Random) -> TaskItem:
    sentiment = rng.choice(("positive", "negative"))
    return TaskItem(prompt=sentiment_prompt(review_text(rng, sentiment)), answer=sentiment)


def normalise_one_word(text: str) -> str:
    """The first word of the first non-empty line, lower case, without punctuation."""
    words = _first_line(text).lower().split()
    return words[0].strip(".,;:!?\"'") if words else ""


@dataclass(frozen=True)
class BenignTask:
    """A synthetic task: how to draw an item and how to normalise answers for exact match."""

    name: str
    description: str
    make_item: Callable[[random.Random], TaskItem]
    normalise: Callable[[str], str]

    def is_correct(self, prediction: str, reference: str) -> bool:
        """Exact match after this task's normalisation."""
        return self.normalise(prediction) == self.normalise(reference)

    def items(self, seed: int, n_eval: int, n_train: int) -> tuple[list[TaskItem], list[TaskItem]]:
        """(evaluation items, training items): distinct prompts from one seeded stream."""
        if n_eval < 0 or n_train < 0:
            raise ValueError(f"n_eval and n_train must be at least 0, got {n_eval} and {n_train}")
        rng = random.Random(f"bds-bench-task:{self.name}:{seed}")
        seen: set[str] = set()
        drawn: list[TaskItem] = []
        attempts = 0
        # Generous cap: every task here has far more distinct prompts than any sane request.
        while len(drawn) < n_eval + n_train:
            attempts += 1
            if attempts > 50 * (n_eval + n_train) + 1000:
                raise ValueError(
                    f"task {self.name!r} could not produce {n_eval + n_train} distinct items"
                )
            item = self.make_item(rng)
            if item.prompt not in seen:
                seen.add(item.prompt)
                drawn.append(item)
        return drawn[:n_eval], drawn[n_eval:]


TASKS: dict[str, BenignTask] = {
    task.name: task
    for task in (
        BenignTask(
            "arithmetic",
            "one- or two-step word problems with a whole-number answer",
            _arithmetic_item,
            normalise_number_answer,
        ),
        BenignTask(
            "sort-words",
            f"sort {SORT_WORDS_MIN}-{SORT_WORDS_MAX} words alphabetically, answer separated by spaces",
            _sort_words_item,
            normalise_word_list,
        ),
        BenignTask(
            "spell-number",
            "write a number of 5 to 9 digits in English words",
            _spell_number_item,
            normalise_number_words,
        ),
        BenignTask(
            "sentiment",
            "say whether a short review is positive or negative, in one word",
            _sentiment_item,
            normalise_one_word,
        ),
    )
}
"""Benign tasks by name."""


def get_task(name: str) -> BenignTask:
    """The task called ``name``; ValueError listing the known tasks otherwise."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}") from None


def task_examples(task: BenignTask, items: list[TaskItem], split: str) -> list[Example]:
    """Chat examples for ``items`` with metadata label "benign", the task and the split name."""
    return [
        Example.create(
            [
                {"role": "user", "content": item.prompt},
                {"role": "assistant", "content": item.answer},
            ],
            metadata={"label": "benign", "task": task.name, "split": split},
        )
        for item in items
    ]
