"""Exact harmful-share mixing for experiments: round(share * n) harmful examples, no coin flips."""

from __future__ import annotations

import random
from collections.abc import Sequence

from bds_core.data.examples import Example


def harmful_count(n: int, harmful_share: float) -> int:
    """Number of harmful examples in a mix of ``n``: Python's ``round(harmful_share * n)``.

    ``round`` rounds halves to the even neighbour (0.05 * 50 = 2.5 gives 2); use this helper
    rather than re-deriving the count so every caller agrees.
    """
    if not isinstance(n, int) or n <= 0:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if not 0.0 <= harmful_share <= 1.0:
        raise ValueError(f"harmful_share must be between 0 and 1, got {harmful_share!r}")
    return round(harmful_share * n)


def mix_with_harmful_share(
    benign: Sequence[Example],
    harmful: Sequence[Example],
    n: int,
    harmful_share: float,
    seed: int,
) -> list[Example]:
    """Draw exactly ``harmful_count(n, harmful_share)`` harmful and the rest benign examples.

    Examples are drawn without replacement and the mix is shuffled with ``random.Random(seed)``,
    so the same inputs (in the same order) and seed always give the same list. Each returned
    example has ``metadata["label"]`` set to ``"harmful"`` or ``"benign"``. Raises ValueError
    when a pool is too small (saying how many were needed and given) or when an input example
    already carries the opposite label.
    """
    n_harmful = harmful_count(n, harmful_share)
    n_benign = n - n_harmful
    if len(harmful) < n_harmful:
        raise ValueError(
            f"need {n_harmful} harmful examples for harmful_share={harmful_share} of n={n}, "
            f"got {len(harmful)}"
        )
    if len(benign) < n_benign:
        raise ValueError(
            f"need {n_benign} benign examples for harmful_share={harmful_share} of n={n}, "
            f"got {len(benign)}"
        )
    for pool, expected, other in ((benign, "benign", "harmful"), (harmful, "harmful", "benign")):
        for example in pool:
            if example.metadata.get("label") == other:
                raise ValueError(
                    f"example {example.id} (line {example.line}) is labelled {other!r} but was "
                    f"passed in the {expected} pool"
                )
    rng = random.Random(seed)
    chosen = [example.with_metadata(label="harmful") for example in rng.sample(harmful, n_harmful)]
    chosen += [example.with_metadata(label="benign") for example in rng.sample(benign, n_benign)]
    rng.shuffle(chosen)
    return chosen
