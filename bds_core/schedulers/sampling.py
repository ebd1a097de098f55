"""Posterior sampling of the scheduler parameters: preconditioned SGLD (Li et al., 2016).

The target is p(a | D) ∝ exp(-U(a) / T), where U is the N-scaled negative log posterior of the
scheduler parameters: the batch's scheduler loss times N (an unbiased estimate of the full-data
term) plus the negative log prior (`DataScheduler.posterior_energy`). T = 1 samples the
posterior; T < 1 sharpens it (a "cold" posterior), T > 1 flattens it.

One step, with the gradient g = grad U of a mini-batch (Li et al., arXiv 1512.07666, Alg. 1):

    V <- alpha V + (1 - alpha) g * g                    (RMSprop estimate of E[g^2];
                                                         V_0 = the tensor's mean g^2)
    G  = 1 / (lambda + sqrt(V))                         (diagonal preconditioner)
    a <- a - eps_t G g + sqrt(2 eps_t T G) xi,  xi ~ N(0, I)

Drift and noise share the preconditioner G, so the chain's stationary law is exp(-U/T) up to
the step's discretisation error and the omitted Gamma (derivative of G) term, which Li et al.
show is negligible when G changes slowly. Here G adapts only for the first `adapt_steps`
steps (the trainer passes the burn-in) and is frozen afterwards, so the kept samples come
from a chain with a constant preconditioner and the Gamma term is exactly zero: a G that
kept tracking the recent g^2 couples to the trajectory and widens the sampled law (by about
18% on a standard normal without mini-batch noise). The step size decays as
eps_t = eps_0 (1 + t)^(-gamma); gamma in (0.5, 1] gives the decreasing-step guarantees of
Welling and Teh (2011), gamma = 0 a constant step (a small, documented bias, the common practice).
There is no gradient clipping: clipping changes the drift without changing the noise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch


class PreconditionedSGLD(torch.optim.Optimizer):
    """pSGLD: each `step()` draws the next sample from the gradients in `.grad` (= grad U).

    `generator` is a CPU generator that supplies all noise, so a run is reproducible from its
    seed and resumable from the generator's state (the trainer checkpoints it).
    """

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        lr: float,
        generator: torch.Generator,
        temperature: float = 1.0,
        decay: float = 0.0,
        alpha: float = 0.99,
        eps: float = 1e-5,
        adapt_steps: int | None = None,
    ) -> None:
        if not (lr > 0 and math.isfinite(lr)):
            raise ValueError(f"pSGLD step size must be a positive number, got {lr}")
        if not temperature > 0:
            raise ValueError(f"pSGLD temperature must be positive, got {temperature}")
        if not 0 <= decay <= 1:
            raise ValueError(f"pSGLD step decay must lie in [0, 1], got {decay}")
        if not 0 <= alpha < 1:
            raise ValueError(f"pSGLD alpha must lie in [0, 1), got {alpha}")
        if not eps > 0:
            raise ValueError(f"pSGLD eps must be positive, got {eps}")
        if adapt_steps is not None and adapt_steps < 0:
            raise ValueError(f"pSGLD adapt_steps must be >= 0, got {adapt_steps}")
        defaults = {
            "lr": lr,
            "temperature": temperature,
            "decay": decay,
            "alpha": alpha,
            "eps": eps,
            "adapt_steps": adapt_steps,
        }
        super().__init__(params, defaults)
        self.generator = generator

    def step_size(self, group: dict[str, Any], t: int) -> float:
        """eps_t of a group at (zero-based) step t."""
        return float(group["lr"]) * (1.0 + t) ** (-float(group["decay"]))

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            alpha, eps, temperature = group["alpha"], group["eps"], group["temperature"]
            for param in group["params"]:
                if not param.requires_grad:
                    continue
                grad = (param.grad if param.grad is not None else torch.zeros_like(param)).float()
                state = self.state[param]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.long)
                    # V starts at the tensor's mean squared gradient (1 if that is 0), not at
                    # zero: a coordinate whose first gradient is 0 (a scalar logit outside the
                    # first batch) would otherwise get a huge preconditioner and huge noise.
                    start = float((grad * grad).mean())
                    state["square_avg"] = torch.full_like(grad, start if start > 0 else 1.0)
                elif group["adapt_steps"] is None or int(state["step"]) < group["adapt_steps"]:
                    state["square_avg"].mul_(alpha).addcmul_(grad, grad, value=1 - alpha)
                t = int(state["step"])
                step = self.step_size(group, t)
                precondition = 1.0 / (eps + state["square_avg"].sqrt())
                noise = torch.randn(param.shape, generator=self.generator, dtype=torch.float32)
                noise = noise.to(param.device) * (2.0 * step * temperature * precondition).sqrt()
                update = -step * precondition * grad + noise
                param.add_(update.to(param.dtype))
                state["step"] += 1
        return loss


__all__ = ["PreconditionedSGLD"]
