"""Reference losses r_i of the scheduler step (bds-method.md, "Reference loss").

- `none`: r_i = 0 (the official release).
- `initial`: the loss of example i under the starting model (adapters switched off), computed
  once per example and cached; the cache is part of a checkpoint.
- `agnostic`: the loss under a second LoRA adapter trained on the weighted customer data
  alone (the paper's safety-agnostic model), which takes one step per call.
"""

from __future__ import annotations

from typing import Any

import torch

from bds_core.training.config import TrainConfig
from bds_core.training.distributed import DataParallel
from bds_core.training.forward import RowLosses, adapter_parameters
from bds_core.training.losses import weighted_loss_sum
from bds_core.training.outputs import MAIN_ADAPTER

AGNOSTIC_ADAPTER = "agnostic"
"""PEFT's name of the safety-agnostic adapter (reference `agnostic`)."""


def model_is_reference(config: TrainConfig, step: int) -> bool:
    """Whether the scheduler step's losses l_i come from a model equal to the reference's.

    With loss timing `before`, the losses of the first step (`step` 0, before any model
    update) come from the starting model: the LoRA adapters start as the identity (B = 0), so
    that model is the reference of `initial`, and of `agnostic` too (its adapter has not
    trained either, and its `before` losses are taken before its own first update). Then
    l_i - r_i is pure rounding (other padding, other passes, bf16 against float32), and Adam
    would turn that noise into a full step; the trainer uses r_i = l_i instead.
    """
    settings = config.scheduler
    return step == 0 and settings.loss_timing == "before" and settings.reference != "none"


class ReferenceLosses:
    """r_i for this process's slice of each global batch, by the config's reference kind."""

    def __init__(
        self,
        config: TrainConfig,
        row_losses: RowLosses,
        parallel: DataParallel,
        agnostic_optimizer: torch.optim.Optimizer | None = None,
    ) -> None:
        """`agnostic_optimizer` steps the agnostic adapter's parameters (reference `agnostic`)."""
        self.config = config
        self.row_losses = row_losses
        self.parallel = parallel
        self.agnostic_optimizer = agnostic_optimizer
        # Reference `initial`: each customer example's loss under the starting model, once known.
        num_examples = len(row_losses.train_encoded)
        self.cache = torch.zeros(num_examples)
        self.known = torch.zeros(num_examples, dtype=torch.bool)

    @property
    def model(self) -> Any:
        return self.row_losses.model

    @property
    def device(self) -> torch.device:
        return self.row_losses.device

    def __call__(
        self, batch_indices: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor
    ) -> torch.Tensor:
        """r_i of this process's slice `indices` of the global batch `batch_indices`."""
        reference = self.config.scheduler.reference
        if reference == "none":
            return torch.zeros(len(indices), device=self.device)
        if reference == "initial":
            return self._initial(batch_indices, indices)
        return self._agnostic_step(indices, weights, len(batch_indices))

    def _initial(self, batch_indices: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        # Decided on the global batch, so every rank takes the same branch.
        batch_complete = bool(self.known[batch_indices].all())
        missing = indices[~self.known[indices]]
        if len(missing) > 0:
            # The starting model is the base model with the adapters switched off.
            with self.model.disable_adapter():
                values = self.row_losses.customer_no_grad(missing).cpu()
            self.cache[missing] = values
            self.known[missing] = True
        if self.parallel.enabled and not batch_complete:
            # Each rank computed its slice; every rank caches the whole batch, so the caches
            # (and the checkpoint rank 0 writes) stay identical.
            local = self.cache[indices]
            self.cache[batch_indices] = self.parallel.gather_shards(local, len(batch_indices))
            self.known[batch_indices] = True
        return self.cache[indices].to(self.device)

    def _agnostic_step(
        self, indices: torch.Tensor, weights: torch.Tensor, batch_size: int
    ) -> torch.Tensor:
        """Train the safety-agnostic adapter on weighted customer data; return its losses.

        `indices` and `weights` are this process's slice of a global batch of `batch_size`.
        """
        assert self.agnostic_optimizer is not None
        self.model.set_adapter(AGNOSTIC_ADAPTER)
        params = adapter_parameters(self.model, AGNOSTIC_ADAPTER)
        try:
            self.agnostic_optimizer.zero_grad(set_to_none=True)
            collected = []
            ga = self.config.gradient_accumulation_steps
            for chunk_idx, chunk_w in zip(
                torch.tensor_split(indices, ga), torch.tensor_split(weights, ga), strict=True
            ):
                losses, _ = self.row_losses.batch(chunk_idx, None)
                weighted_loss_sum(losses, chunk_w, batch_size).backward()
                collected.append(losses.detach())
            self.parallel.sum_gradients(params)
            torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip)
            self.agnostic_optimizer.step()
            if self.config.scheduler.loss_timing == "after":
                return self.row_losses.customer_no_grad(indices)
            return torch.cat(collected)
        finally:
            self.model.set_adapter(MAIN_ADAPTER)
            adapter_parameters(self.model, MAIN_ADAPTER)


__all__ = ["AGNOSTIC_ADAPTER", "ReferenceLosses", "model_is_reference"]
