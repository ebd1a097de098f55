"""RepNoise: representation noising (Rosati et al., arXiv 2405.14577, NeurIPS 2024).

An alignment-stage defence that uses harmful data at alignment. Its loss (the paper's Eq. 3,
with the layer-wise noise term of its Section 4) over a harmless batch (here: the alignment
set D_safe with the retention rows, so the model keeps refusing and keeps answering) and a
harmful batch (harmful prompts with compliant answers) is

    L = l(harmless) - beta * l(harmful) + alpha * sum_layers MMD(e_l(harmful), N(0, I)) / L

- ``l(harmless)``: the usual answer cross-entropy (stability: keep what should stay);
- ``- beta * l(harmful)``: gradient ascent on the harmful answers;
- ``MMD``: the maximum mean discrepancy between the harmful answers' hidden states at every
  decoder layer and samples of standard Gaussian noise of the same shape, so harmful
  representations carry no information a later fine-tune could recover ("noising").

MMD uses a Gaussian kernel whose bandwidth is the median pairwise distance of the pooled
samples (the median heuristic; the paper leaves the kernel width open). Hyperparameters: the
paper's defaults, ``alpha = 1`` and ``beta = 0.001``. The user's fine-tune afterwards is plain
sft on D_ft.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from bds_core.bench.baselines.common import Batch, answer_loss, answer_mask
from bds_core.training.losses import per_example_loss


@dataclass(frozen=True)
class RepNoiseSettings:
    """RepNoise's two loss weights (the paper's defaults)."""

    noise_weight: float = field(default=1.0, metadata={"help": "alpha: weight of the MMD term"})
    ascent_weight: float = field(
        default=0.001, metadata={"help": "beta: weight of gradient ascent on harmful answers"}
    )
    max_tokens: int = field(
        default=256,
        metadata={"help": "most harmful answer tokens per layer entering the MMD (memory bound)"},
    )

    def __post_init__(self) -> None:
        for name in ("noise_weight", "ascent_weight"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"repnoise {name} must be a number >= 0, got {value}")
        if self.max_tokens < 2:
            raise ValueError(f"repnoise max_tokens must be at least 2, got {self.max_tokens}")


@dataclass(frozen=True)
class RepNoiseStep:
    """What one RepNoise step measured."""

    harmless_loss: float
    harmful_loss: float
    mmd: float
    loss: float


def gaussian_mmd(samples: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Squared MMD between two (N, D) sample sets under a Gaussian kernel (biased estimate).

    The bandwidth is the median pairwise distance of the pooled samples, detached, so the
    kernel neither vanishes nor saturates whatever the hidden states' scale.
    """
    pooled = torch.cat([samples, noise]).float()
    distances = torch.cdist(pooled, pooled) ** 2
    off_diagonal = distances[~torch.eye(len(pooled), dtype=torch.bool, device=pooled.device)]
    bandwidth = off_diagonal.detach().median().clamp_min(1e-6)
    kernel = torch.exp(-distances / bandwidth)
    n = len(samples)
    return kernel[:n, :n].mean() + kernel[n:, n:].mean() - 2 * kernel[:n, n:].mean()


def noise_term(
    model: nn.Module, harmful_batch: Batch, generator: torch.Generator, max_tokens: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean over layers of MMD(harmful answer hidden states, N(0, I)), harmful answer loss)."""
    output = model(
        input_ids=harmful_batch["input_ids"],
        attention_mask=harmful_batch["attention_mask"],
        output_hidden_states=True,
    )
    harmful_loss = per_example_loss(output.logits, harmful_batch["labels"]).mean()
    mask = answer_mask(harmful_batch)
    layers = output.hidden_states[1:]  # every decoder layer's output (index 0: the embeddings)
    terms = []
    for hidden in layers:
        states = hidden[mask][:max_tokens]
        noise = torch.randn(states.shape, generator=generator).to(states.device, states.dtype)
        terms.append(gaussian_mmd(states, noise))
    return torch.stack(terms).mean(), harmful_loss


def repnoise_step(
    model: nn.Module,
    harmless_batch: Batch,
    harmful_batch: Batch,
    optimizer: torch.optim.Optimizer,
    settings: RepNoiseSettings,
    generator: torch.Generator,
) -> RepNoiseStep:
    """One RepNoise alignment step; returns its loss terms."""
    optimizer.zero_grad(set_to_none=True)
    harmless = answer_loss(model, harmless_batch)
    mmd, harmful = noise_term(model, harmful_batch, generator, settings.max_tokens)
    loss = harmless - settings.ascent_weight * harmful + settings.noise_weight * mmd
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return RepNoiseStep(harmless.item(), harmful.item(), mmd.item(), loss.item())
