"""The scalar scheduler: one safety logit per customer example (the paper's main method)."""

from __future__ import annotations

import torch
from torch import nn

from bds_core.schedulers.base import (
    DataScheduler,
    SchedulerContext,
    SchedulerSettings,
    initial_logit,
)
from bds_core.schedulers.registry import scheduler_builder


class ScalarScheduler(DataScheduler):
    """Free logits a_i, one per example; w = transform(a)."""

    def __init__(
        self,
        num_examples: int,
        settings: SchedulerSettings,
        initial_logits: torch.Tensor | None = None,
    ) -> None:
        super().__init__(num_examples, settings)
        if initial_logits is None:
            initial_logits = torch.full((num_examples,), initial_logit(settings.transform))
        if initial_logits.shape != (num_examples,):
            raise ValueError(
                f"initial_logits must have shape ({num_examples},), got {tuple(initial_logits.shape)}"
            )
        self.scheduler_logits = nn.Parameter(initial_logits.detach().clone().float())

    def logits_for(self, indices: torch.Tensor) -> torch.Tensor:
        return self.scheduler_logits[indices]

    def all_logits(self) -> torch.Tensor:
        return self.scheduler_logits


def build_scalar(settings: SchedulerSettings, context: SchedulerContext) -> DataScheduler:
    """Scalar scheduler; logits start at 'all weights 1' unless a pretrained scorer seeds them."""
    initial = None
    if settings.init_path:
        neural_settings = SchedulerSettings(
            kind="neural",
            transform=settings.transform,
            init_path=settings.init_path,
            options=settings.options,
        )
        pretrained = scheduler_builder("neural")(neural_settings, context)
        with torch.no_grad():
            initial = pretrained.all_logits().detach().cpu().float()
        if settings.transform == "softmax":
            initial = initial - initial.mean()
    return ScalarScheduler(context.num_examples, settings, initial).to(context.device)
