"""Deterministic data order: the position in the data is all a checkpoint needs to resume it."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class EpochSampler:
    """Shuffled batches of indices, a fresh permutation per pass, seeded by (seed, pass).

    The position (`passes`, `offset`) fully determines what comes next, so saving it in a
    checkpoint resumes the exact same order. A batch that would run past the end of a pass
    takes the rest from the next pass (no short batches, every example seen once per pass).
    """

    num_examples: int
    batch_size: int
    seed: int
    passes: int = 0
    offset: int = 0

    def __post_init__(self) -> None:
        if self.num_examples < 1:
            raise ValueError("cannot sample from an empty dataset")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}")
        self._cached_pass = -1
        self._permutation = torch.empty(0, dtype=torch.long)

    def _order(self, pass_index: int) -> torch.Tensor:
        if pass_index != self._cached_pass:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + pass_index)
            self._permutation = torch.randperm(self.num_examples, generator=generator)
            self._cached_pass = pass_index
        return self._permutation

    def next_batch(self) -> torch.Tensor:
        """The next `batch_size` example indices."""
        taken: list[torch.Tensor] = []
        needed = self.batch_size
        while needed > 0:
            order = self._order(self.passes)
            chunk = order[self.offset : self.offset + needed]
            taken.append(chunk)
            needed -= len(chunk)
            self.offset += len(chunk)
            if self.offset >= self.num_examples:
                self.passes += 1
                self.offset = 0
        return torch.cat(taken)

    def state_dict(self) -> dict[str, int]:
        return {"passes": self.passes, "offset": self.offset}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.passes = int(state["passes"])
        self.offset = int(state["offset"])
