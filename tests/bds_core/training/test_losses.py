"""Loss helpers: answer-token averaging and accumulation-invariant weighting."""

from __future__ import annotations

import math

import pytest
import torch

from bds_core.training.losses import IGNORE_INDEX, per_example_loss, weighted_loss_sum


def test_per_example_loss_averages_answer_tokens_only() -> None:
    vocab = 3
    logits = torch.zeros(2, 4, vocab)
    logits[0, 1, 2] = math.log(3.0)  # p(token 2) = 3/5 at position 1
    labels = torch.tensor(
        [
            [IGNORE_INDEX, IGNORE_INDEX, 2, 1],  # answer tokens at positions 2 and 3
            [IGNORE_INDEX, 0, IGNORE_INDEX, IGNORE_INDEX],  # one answer token
        ]
    )
    losses = per_example_loss(logits, labels)
    # Row 0: position 1 predicts token 2 with p = 3/5, position 2 predicts token 1 with p = 1/3.
    expected_row0 = (-math.log(3 / 5) - math.log(1 / 3)) / 2
    expected_row1 = -math.log(1 / 3)
    assert losses.tolist() == pytest.approx([expected_row0, expected_row1], rel=1e-6)


def test_row_without_answer_tokens_has_zero_loss() -> None:
    logits = torch.randn(1, 3, 5)
    labels = torch.full((1, 3), IGNORE_INDEX)
    assert per_example_loss(logits, labels).item() == 0.0


def test_weighted_loss_matches_hand_computation() -> None:
    losses = torch.tensor([1.0, 2.0, 4.0])
    weights = torch.tensor([0.5, 1.0, 1.5])
    assert weighted_loss_sum(losses, weights, 3).item() == pytest.approx((0.5 + 2 + 6) / 3)


def test_micro_batches_sum_to_the_full_batch_loss() -> None:
    losses = torch.rand(8, requires_grad=True)
    weights = torch.rand(8)
    full = weighted_loss_sum(losses, weights, 8)
    (grad_full,) = torch.autograd.grad(full, losses)
    parts = sum(
        weighted_loss_sum(chunk, w, 8)
        for chunk, w in zip(torch.chunk(losses, 4), torch.chunk(weights, 4), strict=True)
    )
    assert isinstance(parts, torch.Tensor)
    (grad_parts,) = torch.autograd.grad(parts, losses)
    assert torch.allclose(full, parts)
    assert torch.allclose(grad_full, grad_parts)


def test_weights_are_not_differentiated_through_the_model_loss() -> None:
    weights = torch.ones(2, requires_grad=True)
    loss = weighted_loss_sum(torch.tensor([1.0, 2.0]), weights, 2)
    assert not loss.requires_grad


def test_normaliser_must_be_positive() -> None:
    with pytest.raises(ValueError, match="normaliser"):
        weighted_loss_sum(torch.ones(1), torch.ones(1), 0)


def test_answer_only_projection_matches_the_full_logits_loss() -> None:
    from bds_core.training.losses import per_example_loss_from_hidden

    torch.manual_seed(0)
    head = torch.nn.Linear(8, 11, bias=False)
    hidden = torch.randn(3, 6, 8)
    labels = torch.full((3, 6), IGNORE_INDEX)
    labels[0, 3:] = torch.tensor([1, 2, 3])
    labels[1, 1] = 7
    full = per_example_loss(head(hidden), labels)
    answer_only = per_example_loss_from_hidden(hidden, labels, head)
    assert torch.allclose(full, answer_only, atol=1e-6)
    assert answer_only[2].item() == 0.0
