"""Length bucketing: which rows of a micro-batch go through the model together.

A forward pass over rows of different lengths pads every row to the longest one, so short rows
pay for long ones. `plan_buckets` sorts the rows by length and cuts the sorted list into
contiguous groups (one forward and backward pass each) that minimise the padded tokens the
passes compute plus a fixed cost per pass, optionally with a cap on the padded tokens of one
pass (which bounds the activation memory of a step). Splitting rows between passes leaves the
step's gradient unchanged: every row's loss enters the loss with the same coefficient, and the
gradients of the passes add up (tested in tests/bds_core/training/test_buckets.py).
"""

from __future__ import annotations

from collections.abc import Sequence

PASS_OVERHEAD_TOKENS = 32
"""Fixed cost of one more forward and backward pass, in padded tokens. Measured on
SmolLM2-135M-Instruct with LoRA, 1 CPU thread on a shared 2-core machine (docs/performance.md):
a pass costs about 17 ms per token plus 0.15-0.5 s, i.e. 10-30 tokens' worth; 32 errs towards
fewer passes."""


def plan_buckets(
    lengths: Sequence[int],
    max_tokens: int | None = None,
    pass_overhead: int = PASS_OVERHEAD_TOKENS,
) -> list[list[int]]:
    """Positions of `lengths` grouped into passes, each group sorted by length.

    Minimises sum over passes of (rows x longest row) + `pass_overhead` per pass, exactly
    (dynamic programming over the rows sorted by length; for sorted rows the best grouping
    is contiguous). A pass holds at most `max_tokens` padded tokens, except a single row longer
    than that, which goes alone. Deterministic: ties keep the rows' original order.
    """
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}")
    if pass_overhead < 0:
        raise ValueError(f"pass_overhead must be >= 0, got {pass_overhead}")
    order = sorted(range(len(lengths)), key=lambda k: (lengths[k], k))
    n = len(order)
    if n == 0:
        return []
    sorted_lengths = [max(1, int(lengths[k])) for k in order]
    # best[j]: least cost of the first j sorted rows; cut[j]: start of the last group.
    best = [0.0] + [float("inf")] * n
    cut = [0] * (n + 1)
    for end in range(1, n + 1):
        longest = sorted_lengths[end - 1]
        for start in range(end - 1, -1, -1):
            padded = (end - start) * longest
            if max_tokens is not None and padded > max_tokens and end - start > 1:
                break
            cost = best[start] + padded + pass_overhead
            if cost < best[end]:
                best[end] = cost
                cut[end] = start
    groups: list[list[int]] = []
    end = n
    while end > 0:
        start = cut[end]
        groups.append([order[k] for k in range(start, end)])
        end = start
    groups.reverse()
    return groups


def padded_tokens(lengths: Sequence[int], groups: Sequence[Sequence[int]]) -> int:
    """Tokens the passes of `groups` compute, padding included."""
    return sum(len(group) * max(lengths[k] for k in group) for group in groups if group)


__all__ = ["PASS_OVERHEAD_TOKENS", "padded_tokens", "plan_buckets"]
