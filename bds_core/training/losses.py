"""Loss helpers for weighted fine-tuning."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def per_example_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each sequence, averaged over its answer tokens only.

    logits: (B, T, V) next-token logits; labels: (B, T) token ids with IGNORE_INDEX on every
    position that is not an answer token (prompt, padding). Returns (B,) float losses. A row
    without answer tokens gets loss 0 (and contributes no gradient).
    """
    shifted_logits = logits[:, :-1, :].float()
    shifted_labels = labels[:, 1:]
    token_losses = F.cross_entropy(
        shifted_logits.reshape(-1, shifted_logits.shape[-1]),
        shifted_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view(shifted_labels.shape)
    mask = (shifted_labels != IGNORE_INDEX).float()
    counts = mask.sum(dim=1)
    return (token_losses * mask).sum(dim=1) / counts.clamp_min(1.0)


def per_example_loss_from_hidden(
    hidden: torch.Tensor, labels: torch.Tensor, output_head: torch.nn.Module
) -> torch.Tensor:
    """Same result as `per_example_loss`, projecting only the answer positions to the vocabulary.

    hidden: (B, T, H) last hidden states; labels: (B, T) as in `per_example_loss`; output_head:
    the model's vocabulary projection (lm_head). Prompt and padding positions never reach the
    (often 50k-wide) output layer, which saves most of its compute and the (B, T, V) logits.
    """
    shifted_labels = labels[:, 1:]
    answer_mask = shifted_labels != IGNORE_INDEX
    rows = answer_mask.nonzero(as_tuple=True)[0]
    logits = output_head(hidden[:, :-1, :][answer_mask]).float()
    token_losses = F.cross_entropy(logits, shifted_labels[answer_mask], reduction="none")
    batch_size = labels.shape[0]
    sums = torch.zeros(batch_size, device=hidden.device, dtype=token_losses.dtype)
    sums = sums.index_add(0, rows, token_losses)
    counts = answer_mask.sum(dim=1).to(token_losses.dtype)
    return sums / counts.clamp_min(1.0)


def weighted_loss_sum(losses: torch.Tensor, weights: torch.Tensor, normaliser: int) -> torch.Tensor:
    """sum_i w_i * l_i / normaliser.

    `normaliser` is the number of examples in the whole (accumulated) batch, not in this
    micro-batch, so splitting a batch into micro-batches leaves the gradient unchanged.
    """
    if normaliser < 1:
        raise ValueError(f"normaliser must be a positive example count, got {normaliser}")
    return (weights.detach() * losses).sum() / normaliser
