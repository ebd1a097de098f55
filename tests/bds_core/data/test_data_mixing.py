"""mix_with_harmful_share: exact counts, determinism, labels, clear errors."""

from __future__ import annotations

import pytest

from bds_core.data import Example, Message, harmful_count, mix_with_harmful_share


def pool(prefix: str, size: int) -> list[Example]:
    return [
        Example.create([Message("user", f"{prefix} {k}"), Message("assistant", "ok")], line=k + 1)
        for k in range(size)
    ]


BENIGN = pool("benign", 300)
HARMFUL = pool("harmful", 120)


@pytest.mark.parametrize(
    ("n", "share", "expected_harmful"),
    [
        (200, 0.0, 0),
        (200, 0.05, 10),
        (200, 0.2, 40),
        (200, 0.5, 100),
        (100, 1.0, 100),
        (30, 0.1, 3),
        (7, 0.3, 2),
        (50, 0.05, 2),
        (70, 0.05, 4),
    ],
)
def test_exactly_round_share_times_n_harmful(n: int, share: float, expected_harmful: int) -> None:
    mixed = mix_with_harmful_share(BENIGN, HARMFUL, n=n, harmful_share=share, seed=0)
    labels = [example.metadata["label"] for example in mixed]
    assert len(mixed) == n
    assert labels.count("harmful") == expected_harmful == harmful_count(n, share)
    assert labels.count("benign") == n - expected_harmful
    harmful_ids = {example.id for example in HARMFUL}
    assert all((example.id in harmful_ids) == example.is_harmful for example in mixed)
    assert len({example.id for example in mixed}) == n  # drawn without replacement


def test_same_seed_same_mix_other_seed_other_mix() -> None:
    first = mix_with_harmful_share(BENIGN, HARMFUL, n=100, harmful_share=0.2, seed=7)
    again = mix_with_harmful_share(BENIGN, HARMFUL, n=100, harmful_share=0.2, seed=7)
    other = mix_with_harmful_share(BENIGN, HARMFUL, n=100, harmful_share=0.2, seed=8)
    assert [example.id for example in first] == [example.id for example in again]
    assert [example.id for example in first] != [example.id for example in other]


def test_harmful_examples_are_spread_not_grouped() -> None:
    mixed = mix_with_harmful_share(BENIGN, HARMFUL, n=200, harmful_share=0.5, seed=1)
    first_half = sum(1 for example in mixed[:100] if example.is_harmful)
    assert 30 < first_half < 70


def test_inputs_are_not_modified() -> None:
    mix_with_harmful_share(BENIGN, HARMFUL, n=10, harmful_share=0.5, seed=0)
    assert all("label" not in example.metadata for example in BENIGN + HARMFUL)


def test_too_few_harmful_says_how_many_were_needed_and_given() -> None:
    with pytest.raises(ValueError, match=r"need 150 harmful examples .* got 120"):
        mix_with_harmful_share(BENIGN, HARMFUL, n=300, harmful_share=0.5, seed=0)


def test_too_few_benign_says_how_many_were_needed_and_given() -> None:
    with pytest.raises(ValueError, match=r"need 360 benign examples .* got 300"):
        mix_with_harmful_share(BENIGN, HARMFUL, n=400, harmful_share=0.1, seed=0)


def test_a_harmful_labelled_example_in_the_benign_pool_is_refused() -> None:
    mislabelled = [BENIGN[0].with_metadata(label="harmful"), *BENIGN[1:]]
    with pytest.raises(ValueError, match=rf"{BENIGN[0].id}.*benign pool"):
        mix_with_harmful_share(mislabelled, HARMFUL, n=10, harmful_share=0.1, seed=0)


@pytest.mark.parametrize(("n", "share"), [(0, 0.1), (10, -0.1), (10, 1.5)])
def test_invalid_arguments(n: int, share: float) -> None:
    with pytest.raises(ValueError, match=r"n must|harmful_share must"):
        mix_with_harmful_share(BENIGN, HARMFUL, n=n, harmful_share=share, seed=0)
