"""Posterior sampling: pSGLD lands on known Gaussian posteriors, through the scheduler too."""

from __future__ import annotations

import pytest
import torch

from bds_core.schedulers import ScalarScheduler, SchedulerSettings
from bds_core.schedulers.base import make_scheduler_optimizer
from bds_core.schedulers.sampling import PreconditionedSGLD


def test_psgld_samples_a_gaussian_posterior_from_mini_batches() -> None:
    """Conjugate Gaussian mean estimation with a different noise scale per dimension.

    Data y_n ~ N(theta, s^2) per dimension (N = 200, s = 1 and 2), prior theta ~ N(0, 2^2): the
    posterior is Gaussian with precision 1/4 + N/s^2. pSGLD sees only mini-batch gradients
    (B = 20, scaled by N/B; 128 chains, each with its own batches) and must land on the exact
    mean and variance in both dimensions, whose scales differ by a factor of 4 in variance.
    """
    data_generator = torch.Generator().manual_seed(0)
    n, batch, chains = 200, 20, 128
    scales = torch.tensor([1.0, 2.0])
    data = torch.tensor([0.3, -0.4]) + scales * torch.randn(n, 2, generator=data_generator)
    prior_var = 4.0
    precision = 1.0 / prior_var + n / scales**2
    exact_mean = (data.sum(dim=0) / scales**2) / precision
    exact_var = 1.0 / precision

    theta = torch.nn.Parameter(torch.zeros(chains, 2))
    sampler = PreconditionedSGLD(
        [theta], lr=3e-3, generator=torch.Generator().manual_seed(1), adapt_steps=600
    )
    batch_generator = torch.Generator().manual_seed(2)
    kept = []
    for step in range(2000):
        y = data[torch.randint(0, n, (chains, batch), generator=batch_generator)]
        # grad U of the mini-batch estimate (N/B) sum_B (theta - y)^2 / (2 s^2) + prior.
        likelihood = ((theta.detach().unsqueeze(1) - y) / scales**2).sum(dim=1) * (n / batch)
        theta.grad = likelihood + theta.detach() / prior_var
        sampler.step()
        if step >= 600 and step % 5 == 0:
            kept.append(theta.detach().clone())
    samples = torch.cat(kept)  # (kept * chains, 2)
    mean, var = samples.mean(dim=0), samples.var(dim=0)

    assert torch.allclose(mean, exact_mean, rtol=0.15)
    # Stricter than 15% of the mean: within 15% of a posterior standard deviation.
    assert ((mean - exact_mean).abs() / exact_var.sqrt() < 0.15).all()
    assert ((var / exact_var - 1).abs() < 0.15).all(), (var, exact_var)


def test_scheduler_posterior_energy_is_sampled_exactly() -> None:
    """The scalar scheduler with identity weights (w = a) and fixed losses d_i.

    U(a) = sum_i a_i d_i + sum_i (a_i - 1)^2 / (2 sigma^2), estimated from batches of 50 of 200
    examples by `posterior_energy`, so each a_i's posterior is N(1 - sigma^2 d_i, sigma^2).
    Five loss levels, 40 examples each: the kept samples (after burn-in, thinned) must give
    each level's mean within 15% of a standard deviation and the variance within 15%, and
    every example's 90% interval must hold its exact mean.
    """
    n, batch, sigma, steps = 200, 50, 0.25, 2500
    settings = SchedulerSettings(
        transform="identity",
        update="global",
        sgld=True,
        learning_rate=1e-2,
        sgld_burn_in=0.2,
        prior_std=sigma,
        record_last=400,
        record_every=5,
    )
    scheduler = ScalarScheduler(n, settings)
    scheduler.set_prior_centre()
    scheduler.total_updates = steps
    sampler = make_scheduler_optimizer(scheduler, torch.Generator().manual_seed(3))
    assert isinstance(sampler, PreconditionedSGLD)
    levels = torch.tensor([-4.0, -2.0, 0.0, 2.0, 4.0])
    advantage = levels.repeat_interleave(n // len(levels))
    exact_mean = 1.0 - sigma**2 * advantage
    batches = torch.Generator().manual_seed(4)
    for _ in range(steps):
        indices = torch.randperm(n, generator=batches)[:batch]
        sampler.zero_grad()
        energy = scheduler.posterior_energy(indices, advantage[indices], torch.zeros(batch))
        energy.backward()
        sampler.step()
        scheduler.after_update()

    summary = scheduler.summarise_weights(0.9)
    assert summary.kind == "posterior"
    assert summary.n_samples == 400
    group_mean = summary.mean.view(len(levels), -1).mean(dim=1)
    group_exact = 1.0 - sigma**2 * levels
    assert ((group_mean - group_exact).abs() < 0.15 * sigma).all(), group_mean
    assert torch.allclose(group_mean, group_exact, rtol=0.15)
    group_var = (summary.std**2).view(len(levels), -1).mean(dim=1)
    assert ((group_var / sigma**2 - 1).abs() < 0.15).all(), group_var / sigma**2
    assert ((summary.low < exact_mean) & (exact_mean < summary.high)).all()


def test_temperature_scales_the_sampled_variance() -> None:
    """T multiplies the variance of exp(-U/T); T = 1 is the posterior."""

    def sampled_variance(temperature: float) -> float:
        theta = torch.nn.Parameter(torch.zeros(256))
        sampler = PreconditionedSGLD(
            [theta],
            lr=0.02,
            generator=torch.Generator().manual_seed(5),
            temperature=temperature,
            adapt_steps=500,
        )
        kept = []
        for step in range(1500):
            sampler.zero_grad()
            (theta**2 / 2).sum().backward()  # U = theta^2 / 2: N(0, 1) at T = 1
            sampler.step()
            if step >= 500 and step % 5 == 0:
                kept.append(theta.detach().clone())
        return torch.stack(kept).var().item()

    assert sampled_variance(1.0) == pytest.approx(1.0, rel=0.15)
    assert sampled_variance(0.25) == pytest.approx(0.25, rel=0.15)


def test_optimising_keeps_iterates_without_burn_in_and_names_them() -> None:
    scheduler = ScalarScheduler(3, SchedulerSettings(record_last=2))
    scheduler.set_prior_centre()
    scheduler.total_updates = 10
    scheduler.after_update()
    summary = scheduler.summarise_weights()
    assert summary.kind == "optimisation" and summary.n_samples == 1


def test_sampling_discards_burn_in_and_thins() -> None:
    settings = SchedulerSettings(sgld=True, sgld_burn_in=0.5, record_every=2, record_last=50)
    scheduler = ScalarScheduler(3, settings)
    scheduler.total_updates = 20
    for _ in range(20):
        scheduler.after_update()
    # Updates 11-20 are past burn-in; every second one is kept.
    assert int(scheduler.n_recorded) == 5


def test_sampling_settings_name_the_bad_field() -> None:
    with pytest.raises(ValueError, match="sgld_burn_in"):
        SchedulerSettings(sgld_burn_in=1.0)
    with pytest.raises(ValueError, match="prior_std"):
        SchedulerSettings(prior_std=0.0)
    with pytest.raises(ValueError, match="sgld_step_decay"):
        SchedulerSettings(sgld_step_decay=2.0)
