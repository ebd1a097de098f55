"""Shared plumbing of the paper's baselines: batches, answer losses, decoder layers, hidden states.

Every baseline trains the same LoRA adapter as the other benchmark methods (same settings,
steps and seeds); only its objective differs. The helpers here keep the objectives themselves
(in ``lisa``, ``vaccine``, ``booster`` and ``repnoise``) short enough to read against the papers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from bds_core.data import Example, collate, encode_example
from bds_core.training.losses import IGNORE_INDEX, per_example_loss
from bds_core.training.sampling import EpochSampler

Batch = dict[str, torch.Tensor]


class BatchStream:
    """Endless seeded batches of one example set (a fresh shuffle per pass, no short batches)."""

    def __init__(
        self,
        examples: Sequence[Example],
        tokenizer: Any,
        batch_size: int,
        max_length: int,
        seed: int,
        device: torch.device | str = "cpu",
    ) -> None:
        if not examples:
            raise ValueError("a batch stream needs at least one example")
        self.encoded = [encode_example(example, tokenizer, max_length) for example in examples]
        self.pad_token_id = int(tokenizer.pad_token_id)
        self.sampler = EpochSampler(len(self.encoded), batch_size, seed)
        self.device = torch.device(device)

    def next(self) -> Batch:
        """The next batch: input_ids, attention_mask and labels (answer tokens only) on device."""
        indices = self.sampler.next_batch().tolist()
        batch = collate([self.encoded[i] for i in indices], self.pad_token_id)
        return {key: value.to(self.device) for key, value in batch.items()}


def answer_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Mean over the batch of each example's cross-entropy on its answer tokens (a scalar)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return per_example_loss(logits, batch["labels"]).mean()


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters the optimizer updates (the LoRA adapter's)."""
    params = [param for param in model.parameters() if param.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters (attach a LoRA adapter first)")
    return params


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks of a causal LM (LLaMA-style ``model.layers`` or GPT-style ``h``),
    found through PEFT wrappers; their outputs are the hidden states e_l the papers perturb."""
    for name, module in model.named_modules():
        last = name.rsplit(".", 1)[-1]
        if isinstance(module, nn.ModuleList) and last in ("layers", "h") and len(module) > 0:
            return list(module)
    raise ValueError(f"no decoder layer list (`layers` or `h`) found in {type(model).__name__}")


def layer_output_tensor(output: Any) -> torch.Tensor:
    """The hidden-state tensor of a decoder layer's output (a tensor, or a tuple led by one)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"unexpected decoder layer output {type(output).__name__}")


def replace_layer_output(output: Any, hidden: torch.Tensor) -> Any:
    """``output`` with its hidden-state tensor replaced by ``hidden``."""
    if isinstance(output, torch.Tensor):
        return hidden
    return (hidden, *output[1:])


def answer_mask(batch: Batch) -> torch.Tensor:
    """(B, T) bool: the positions whose hidden state predicts an answer token."""
    labels = batch["labels"]
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return mask


def parameter_vector(params: Sequence[nn.Parameter]) -> torch.Tensor:
    """The parameters flattened into one detached vector (for checkpoints and distances)."""
    return torch.cat([param.detach().reshape(-1) for param in params]).clone()


def squared_distance(params: Sequence[nn.Parameter], anchor: torch.Tensor) -> torch.Tensor:
    """||w - anchor||^2 over ``params`` flattened in order (differentiable in ``params``)."""
    current = torch.cat([param.reshape(-1) for param in params])
    return ((current - anchor.to(current.device)) ** 2).sum()


def global_norm(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """sqrt(sum ||t||^2) over ``tensors`` (in float32)."""
    return torch.sqrt(torch.stack([(tensor.float() ** 2).sum() for tensor in tensors]).sum())
