"""Booster: attenuating harmful perturbation (Huang et al., arXiv 2409.01586, ICLR 2025).

An alignment-stage defence that uses a harmful dataset at alignment. With ``f`` the alignment
loss (refusals) and ``h`` the harmful loss (harmful prompts with compliant answers), the paper's
objective (its Eq. 1) is

    min_w  f(w) + lambda * ( h(w) - h(w - alpha * grad h(w) / ||grad h(w)||) )

the alignment loss plus the reduction of the harmful loss that one normalised harmful gradient
step (the "harmful perturbation" a later attack takes) would buy; minimising it makes the
aligned model slow to learn harmful data. The paper's update (its Eq. 2, three forward and
backward passes) treats the normalised direction as fixed, so the gradient is

    grad f(w) + lambda * ( grad h(w) - grad h(w - alpha * grad h(w) / ||grad h(w)||) ).

Hyperparameters: the paper's defaults, ``lambda = 5`` (regulariser intensity) and
``alpha = 0.1`` (step size of the simulated perturbation). The user's fine-tune afterwards is
plain sft on D_ft.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from bds_core.bench.baselines.common import (
    Batch,
    answer_loss,
    global_norm,
    trainable_parameters,
)


@dataclass(frozen=True)
class BoosterSettings:
    """Booster's two hyperparameters (the paper's defaults)."""

    regularizer_weight: float = field(
        default=5.0, metadata={"help": "lambda: weight of the harmful-perturbation term"}
    )
    perturbation_step: float = field(
        default=0.1, metadata={"help": "alpha: size of the normalised harmful gradient step"}
    )

    def __post_init__(self) -> None:
        if not (self.regularizer_weight >= 0 and math.isfinite(self.regularizer_weight)):
            raise ValueError(
                f"booster regularizer_weight must be a number >= 0, got {self.regularizer_weight}"
            )
        if not (self.perturbation_step > 0 and math.isfinite(self.perturbation_step)):
            raise ValueError(
                f"booster perturbation_step must be a positive number, got {self.perturbation_step}"
            )


@dataclass(frozen=True)
class BoosterStep:
    """What one Booster step measured: f(w), h(w) and h after the simulated perturbation."""

    alignment_loss: float
    harmful_loss: float
    perturbed_harmful_loss: float

    @property
    def harmful_loss_reduction(self) -> float:
        """h(w) - h(w - alpha * grad h / ||grad h||): the term Booster attenuates."""
        return self.harmful_loss - self.perturbed_harmful_loss


def booster_gradients(
    model: nn.Module, safe_batch: Batch, harmful_batch: Batch, settings: BoosterSettings
) -> tuple[list[torch.Tensor], BoosterStep]:
    """The Booster gradient of every trainable parameter (Eq. 2), and the three losses.

    The parameters are perturbed in place for the third pass and restored exactly after it.
    """
    params = trainable_parameters(model)
    harmful = answer_loss(model, harmful_batch)
    grad_h = torch.autograd.grad(harmful, params)
    alignment = answer_loss(model, safe_batch)
    grad_f = torch.autograd.grad(alignment, params)
    norm = global_norm(grad_h) + 1e-12
    saved = [param.detach().clone() for param in params]
    with torch.no_grad():
        for param, g in zip(params, grad_h, strict=True):
            param.sub_(settings.perturbation_step * g / norm)
    try:
        perturbed = answer_loss(model, harmful_batch)
        grad_h_perturbed = torch.autograd.grad(perturbed, params)
    finally:
        with torch.no_grad():
            for param, value in zip(params, saved, strict=True):
                param.copy_(value)
    lam = settings.regularizer_weight
    grads = [f + lam * (h - hp) for f, h, hp in zip(grad_f, grad_h, grad_h_perturbed, strict=True)]
    return grads, BoosterStep(alignment.item(), harmful.item(), perturbed.item())


def booster_step(
    model: nn.Module,
    safe_batch: Batch,
    harmful_batch: Batch,
    optimizer: torch.optim.Optimizer,
    settings: BoosterSettings,
) -> BoosterStep:
    """One Booster alignment step; returns its losses."""
    grads, step = booster_gradients(model, safe_batch, harmful_batch, settings)
    optimizer.zero_grad(set_to_none=True)
    for param, grad in zip(trainable_parameters(model), grads, strict=True):
        param.grad = grad.detach().to(param.dtype)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return step
