"""Per-example answer losses of a run's rows: the forward (and backward) passes of a step.

Customer rows are addressed by their index in the run's encoded training file, alignment rows
by theirs in the encoded alignment file. Rows of one call go through the model padded
together; with length bucketing a micro-batch's backward is split into the passes that compute
the least padding (`plan_buckets`), with the same gradients as one padded pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import torch

from bds_core.data import collate
from bds_core.data.tokenize import EncodedExample
from bds_core.training.buckets import plan_buckets
from bds_core.training.config import TrainConfig
from bds_core.training.losses import per_example_loss, per_example_loss_from_hidden


def adapter_parameters(model: Any, adapter: str) -> list[torch.nn.Parameter]:
    """The LoRA parameters of `adapter` in the PEFT `model`, made trainable.

    PEFT's `set_adapter` freezes the adapters it leaves, so switching back calls this again.
    """
    marker = f".{adapter}."
    params = [p for name, p in model.named_parameters() if "lora_" in name and marker in name]
    for param in params:
        param.requires_grad_(True)
    if not params:
        raise RuntimeError(f"no LoRA parameters found for adapter {adapter!r}")
    return params


class RowLosses:
    """Per-example losses (mean cross-entropy over answer tokens) of customer and alignment rows."""

    def __init__(
        self,
        model: Any,
        train_encoded: Sequence[EncodedExample],
        safety_encoded: Sequence[EncodedExample],
        pad_token_id: int,
        config: TrainConfig,
        device: torch.device,
        autocast_dtype: torch.dtype | None,
    ) -> None:
        self.model = model
        self.train_encoded = train_encoded
        self.safety_encoded = safety_encoded
        self.pad_token_id = pad_token_id
        self.config = config
        self.device = device
        self.autocast_dtype = autocast_dtype
        # The decoder stack (with the LoRA layers injected) and the vocabulary projection, so
        # only answer positions are projected to the vocabulary (per_example_loss_from_hidden).
        causal_lm: Any = model.get_base_model()
        self.decoder: Any = causal_lm.get_decoder() if hasattr(causal_lm, "get_decoder") else None
        self.output_head: Any = causal_lm.get_output_embeddings()

    def _autocast(self) -> Any:
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def _rows(
        self, train_indices: torch.Tensor, safety_indices: torch.Tensor | None
    ) -> list[EncodedExample]:
        encoded = [self.train_encoded[i] for i in train_indices.tolist()]
        if safety_indices is not None:
            encoded += [self.safety_encoded[i] for i in safety_indices.tolist()]
        return encoded

    def rows(self, encoded: Sequence[EncodedExample]) -> torch.Tensor:
        """Per-example losses of `encoded`, padded together into one forward pass."""
        batch = {k: v.to(self.device) for k, v in collate(encoded, self.pad_token_id).items()}
        if self.decoder is not None and self.output_head is not None:
            with self._autocast():
                hidden = self.decoder(
                    input_ids=batch["input_ids"],
                    attention_mask=batch["attention_mask"],
                    use_cache=False,
                ).last_hidden_state
            # The vocabulary projection and the cross-entropy stay in float32 under bf16: the
            # scheduler's signal is a small difference of two per-example losses.
            return per_example_loss_from_hidden(hidden.float(), batch["labels"], self.output_head)
        with self._autocast():
            logits = self.model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits
        return per_example_loss(logits, batch["labels"])

    def batch(
        self, train_indices: torch.Tensor, safety_indices: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-example losses of one micro-batch (customer and alignment rows in one forward)."""
        losses = self.rows(self._rows(train_indices, safety_indices))
        n_train = len(train_indices)
        return losses[:n_train], (losses[n_train:] if safety_indices is not None else None)

    def token_count(self, train_indices: torch.Tensor, safety_indices: torch.Tensor | None) -> int:
        """Tokens (without padding) of the rows of one forward pass."""
        return sum(len(row.input_ids) for row in self._rows(train_indices, safety_indices))

    @torch.no_grad()
    def customer_no_grad(self, indices: torch.Tensor) -> torch.Tensor:
        """Losses of the customer rows at `indices` without gradients, in eval mode (no
        dropout: the reference cache and the scheduler's signal stay exact); the model's
        mode is restored afterwards."""
        chunks = torch.chunk(indices, self.config.gradient_accumulation_steps)
        was_training = self.model.training
        self.model.eval()
        try:
            return torch.cat([self.batch(chunk, None)[0].detach() for chunk in chunks])
        finally:
            self.model.train(was_training)

    def backward(
        self,
        train_indices: torch.Tensor,
        weights: torch.Tensor,
        safety_indices: torch.Tensor | None,
        train_normaliser: int,
        safety_normaliser: int,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Forward and backward over one micro-batch's customer and alignment rows together.

        The rows are grouped by length into passes (`plan_buckets`; one pass without length
        bucketing); each pass backpropagates sum w_i l_i / B over its customer rows plus
        sum l_j / B_s over its alignment rows, so the gradients add up to the micro-batch's.
        Returns the detached per-example losses of the customer and the alignment rows, in
        the order of the indices: the losses the scheduler step reuses (loss timing `before`).
        """
        config = self.config
        encoded = self._rows(train_indices, safety_indices)
        n_train = len(train_indices)
        coefficients = torch.cat(
            [
                weights.detach().to(self.device) / train_normaliser,
                torch.full((len(encoded) - n_train,), 1.0 / safety_normaliser, device=self.device),
            ]
        )
        lengths = [len(row.input_ids) for row in encoded]
        groups = (
            plan_buckets(lengths, config.max_batch_tokens)
            if config.length_bucketing
            else [list(range(len(encoded)))]
        )
        losses = torch.zeros(len(encoded), device=self.device)
        for group in groups:
            positions = torch.tensor(group, device=self.device)
            group_losses = self.rows([encoded[k] for k in group])
            (coefficients[positions] * group_losses).sum().backward()
            losses[positions] = group_losses.detach()
        return losses[:n_train], (losses[n_train:] if safety_indices is not None else None)


__all__ = ["RowLosses", "adapter_parameters"]
