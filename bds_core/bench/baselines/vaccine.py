"""Vaccine: perturbation-aware alignment (Huang, Hu, Liu, arXiv 2402.01109, NeurIPS 2024).

An alignment-stage defence. The paper's Algorithm 1, per alignment step:

1. forward and backward on the alignment batch; take the gradient of the loss with respect to
   every decoder layer's output hidden state, ``g_l = d L / d e_l``;
2. the perturbation of layer l is ``eps_l = rho * g_l / ||(g_1, ..., g_L)||``: the direction
   that raises the alignment loss fastest, with the norm taken jointly over all layers, so the
   whole perturbation has norm ``rho`` (the "harmful embedding drift" it simulates);
3. forward again with ``e_l + eps_l`` in place of every layer's output, backward, and step the
   optimizer with that (perturbed) gradient.

The model so aligned keeps its refusals when a later fine-tune drifts its hidden states. It
needs no harmful data. The user's fine-tune afterwards is plain sft on D_ft.

Hyperparameter: ``rho`` (perturbation intensity); the paper's default is 2 (its Section 5
setup), taken here. Learning rate, LoRA, steps and batch are the benchmark's stage 0's.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from bds_core.bench.baselines.common import (
    Batch,
    answer_loss,
    decoder_layers,
    global_norm,
    layer_output_tensor,
    replace_layer_output,
)


@dataclass(frozen=True)
class VaccineSettings:
    """Vaccine's one hyperparameter."""

    rho: float = field(
        default=2.0,
        metadata={"help": "perturbation intensity: the joint norm of every layer's perturbation"},
    )

    def __post_init__(self) -> None:
        if not (self.rho > 0 and math.isfinite(self.rho)):
            raise ValueError(f"vaccine rho must be a positive number, got {self.rho}")


@dataclass(frozen=True)
class VaccineStep:
    """What one Vaccine step measured."""

    loss: float
    perturbed_loss: float
    perturbation_norm: float


def _capture_hooks(layers: list[nn.Module], store: list[torch.Tensor]) -> list[Any]:
    def capture(_module: nn.Module, _inputs: Any, output: Any) -> Any:
        hidden = layer_output_tensor(output)
        hidden.retain_grad()
        store.append(hidden)
        return output

    return [layer.register_forward_hook(capture) for layer in layers]


def _perturb_hooks(layers: list[nn.Module], perturbations: list[torch.Tensor]) -> list[Any]:
    def make(eps: torch.Tensor) -> Callable[[nn.Module, Any, Any], Any]:
        def add(_module: nn.Module, _inputs: Any, output: Any) -> Any:
            return replace_layer_output(output, layer_output_tensor(output) + eps)

        return add

    return [
        layer.register_forward_hook(make(eps))
        for layer, eps in zip(layers, perturbations, strict=True)
    ]


def hidden_state_perturbation(model: nn.Module, batch: Batch, rho: float) -> list[torch.Tensor]:
    """Step 1-2: each decoder layer's perturbation ``rho * g_l / ||g||`` (detached)."""
    layers = decoder_layers(model)
    hidden: list[torch.Tensor] = []
    handles = _capture_hooks(layers, hidden)
    try:
        loss = answer_loss(model, batch)
        grads = torch.autograd.grad(loss, hidden, allow_unused=True)
    finally:
        for handle in handles:
            handle.remove()
    grads = tuple(
        torch.zeros_like(h) if g is None else g.detach() for h, g in zip(hidden, grads, strict=True)
    )
    norm = global_norm(grads) + 1e-12
    return [(rho * g / norm).to(h.dtype) for h, g in zip(hidden, grads, strict=True)]


def vaccine_step(
    model: nn.Module, batch: Batch, optimizer: torch.optim.Optimizer, settings: VaccineSettings
) -> VaccineStep:
    """One Vaccine alignment step on ``batch`` (Algorithm 1); returns its losses."""
    perturbations = hidden_state_perturbation(model, batch, settings.rho)
    with torch.no_grad():
        clean = float(answer_loss(model, batch))
    optimizer.zero_grad(set_to_none=True)
    layers = decoder_layers(model)
    handles = _perturb_hooks(layers, perturbations)
    try:
        perturbed = answer_loss(model, batch)
        perturbed.backward()
    finally:
        for handle in handles:
            handle.remove()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    norm = float(global_norm(perturbations))
    return VaccineStep(loss=clean, perturbed_loss=perturbed.item(), perturbation_norm=norm)
