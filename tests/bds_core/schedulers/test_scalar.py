"""The scalar scheduler: transforms, the two update rules, SGLD and posterior summaries."""

from __future__ import annotations

import pytest
import torch

from bds_core.schedulers import ScalarScheduler, SchedulerSettings, transform_logits


def _scheduler(n: int = 10, **settings: object) -> ScalarScheduler:
    return ScalarScheduler(n, SchedulerSettings(**settings))  # type: ignore[arg-type]


def test_softmax_weights_sum_to_n_and_start_at_one() -> None:
    scheduler = _scheduler(10)
    assert torch.allclose(scheduler.all_weights(), torch.ones(10))
    with torch.no_grad():
        scheduler.scheduler_logits.copy_(torch.randn(10))
    assert scheduler.all_weights().sum().item() == pytest.approx(10.0, rel=1e-5)


@pytest.mark.parametrize("transform", ["sigmoid", "identity"])
def test_other_transforms_start_at_weight_one(transform: str) -> None:
    assert torch.allclose(_scheduler(5, transform=transform).all_weights(), torch.ones(5))


def test_transform_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match="unknown weight transform"):
        transform_logits(torch.zeros(3), "tanh")


def test_settings_name_the_bad_field() -> None:
    with pytest.raises(ValueError, match="reference must be one of"):
        SchedulerSettings(reference="oracle")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="learning_rate"):
        SchedulerSettings(learning_rate=-1.0)


def _one_step(scheduler: ScalarScheduler, losses: list[float]) -> torch.Tensor:
    indices = torch.arange(len(losses))
    loss = scheduler.scheduler_loss(indices, torch.tensor(losses), torch.zeros(len(losses)))
    loss.backward()
    assert scheduler.scheduler_logits.grad is not None
    return scheduler.scheduler_logits.grad.clone()


def test_batch_update_lowers_high_loss_and_raises_low_loss_examples() -> None:
    grad = _one_step(_scheduler(4, update="batch"), [3.0, 1.0, 1.0, 1.0])
    # Gradient descent moves the logit against the gradient.
    assert grad[0] > 0  # high loss: weight goes down
    assert (grad[1:] < 0).all()  # low loss: weight goes up


def test_release_update_lowers_every_visited_example() -> None:
    scheduler = _scheduler(20, update="global")
    grad = _one_step(scheduler, [3.0, 1.0, 1.0, 1.0])
    assert (grad[:4] > 0).all()  # every visited example loses weight (bds-method.md)
    assert (grad[4:] < 0).all()  # unvisited ones gain through the normaliser


def test_reference_removes_per_example_difficulty() -> None:
    scheduler = _scheduler(2, update="batch")
    indices = torch.arange(2)
    loss = scheduler.scheduler_loss(indices, torch.tensor([5.0, 1.0]), torch.tensor([4.0, 0.0]))
    loss.backward()
    assert scheduler.scheduler_logits.grad is not None
    assert torch.allclose(scheduler.scheduler_logits.grad, torch.zeros(2), atol=1e-7)


def test_entropy_prior_pulls_towards_uniform() -> None:
    scheduler = _scheduler(3, entropy_weight=1.0)
    with torch.no_grad():
        scheduler.scheduler_logits.copy_(torch.tensor([2.0, 0.0, -2.0]))
    assert scheduler.collapse_penalty().item() > 0
    loss = scheduler.scheduler_loss(torch.arange(3), torch.zeros(3), torch.zeros(3))
    loss.backward()
    assert scheduler.scheduler_logits.grad is not None
    assert scheduler.scheduler_logits.grad[0] > 0 > scheduler.scheduler_logits.grad[2]


@pytest.mark.parametrize("transform", ["softmax", "sigmoid", "identity"])
def test_every_transform_gives_non_negative_weights(transform: str) -> None:
    """A negative weight would be gradient ascent on its example: every transform clamps."""
    logits = torch.linspace(-5.0, 5.0, 11)
    assert (transform_logits(logits, transform) >= 0).all()
    scheduler = _scheduler(11, transform=transform)
    with torch.no_grad():
        scheduler.scheduler_logits.copy_(logits)
    assert (scheduler.all_weights() >= 0).all()
    assert (scheduler.batch_weights(torch.arange(11)) >= 0).all()


def test_weight_summary_over_recorded_iterates() -> None:
    scheduler = _scheduler(3, record_last=2)
    mean, std = scheduler.weight_summary()
    assert torch.allclose(mean, torch.ones(3)) and torch.equal(std, torch.zeros(3))
    for logits in ([0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [2.0, 0.0, 0.0]):
        with torch.no_grad():
            scheduler.scheduler_logits.copy_(torch.tensor(logits))
        scheduler.after_update()
    w1 = transform_logits(torch.tensor([1.0, 0.0, 0.0]), "softmax")
    w2 = transform_logits(torch.tensor([2.0, 0.0, 0.0]), "softmax")
    mean, std = scheduler.weight_summary()  # only the last two iterates are kept
    assert torch.allclose(mean, (w1 + w2) / 2)
    assert torch.allclose(std, (w1 - w2).abs() / 2)
