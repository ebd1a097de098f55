"""The `filter` baseline: drop what a pretrained amortized scheduler flags, then plain sft.

Before training, the pretrained scheduler (the BDS-pretrained MiniLM one shipped in
`bds_core/assets/schedulers/default`, whose digest the bench records for filter cells, unless
the config's `scheduler.init_path` names another; not the static scoring default of safety
reports) scores every customer example; the trainer then runs
`sft` on the examples it does not flag. The run's `weights.jsonl` still lists every uploaded
example, the dropped ones with weight 0, so the filter's detection compares with BDS's weights.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from bds_core.data import Example
from bds_core.training.config import TrainConfig


def drop_flagged(config: TrainConfig) -> Callable[[Sequence[Example]], list[Example]]:
    """The trainer's `select_examples` for method `filter`: the examples left unflagged.

    Raises ValueError (at setup) when the scheduler flags every example.
    """

    def select(examples: Sequence[Example]) -> list[Example]:
        from bds_core.scoring import default_scheduler_path, filter_examples

        kept, _ = filter_examples(examples, config.scheduler.init_path or default_scheduler_path())
        if not kept:
            raise ValueError(f"the filter dropped every example of {config.train_file}")
        return kept

    return select


__all__ = ["drop_flagged"]
