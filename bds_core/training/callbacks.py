"""Progress reporting and cancellation hooks of the trainer."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bds_core.training.outputs import TrainResult


@dataclass
class ProgressEvent:
    """One optimisation step's numbers, as reported to callbacks."""

    step: int
    total_steps: int
    loss: float
    task_loss: float
    safety_loss: float | None
    elapsed_s: float
    eta_s: float
    seconds_per_step: float
    weight_stats: dict[str, float] = field(default_factory=dict)
    tokens: int = 0  # tokens (without padding) the step's model update trained on, all ranks

    @property
    def percent(self) -> float:
        return 100.0 * self.step / max(self.total_steps, 1)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["percent"] = self.percent
        return data


class TrainerCallback:
    """Override what you need; every hook is optional."""

    def on_start(self, info: dict[str, Any]) -> None:
        """Called once before the first step, with the run's size and settings."""

    def on_step(self, event: ProgressEvent) -> None:
        """Called after every optimisation step."""

    def on_checkpoint(self, step: int, path: Path) -> None:
        """Called after a checkpoint has been written and verified."""

    def on_resume(self, step: int, path: Path) -> None:
        """Called when the run continues from a checkpoint."""

    def on_end(self, result: TrainResult) -> None:
        """Called once after the run ended (finished or cancelled)."""
