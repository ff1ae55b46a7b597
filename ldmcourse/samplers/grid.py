"""What every sampler shares: the grid of noise levels it visits, the model call, noise, the callback.

A sampler visits times t_0 > t_1 > … > t_{K-1} (training indices for a :class:`Schedule`, float times
for an SDE) and, with ``final_step=True``, one more point: clean data, α = 1, σ = 0 (reported to the
callback as t_next = -1 for a discrete schedule, 0.0 for an SDE). At each point k the grid holds

    α_k, σ_k  (x_t = α x_0 + σ ε),   σ̄_k = σ_k/α_k  (the VE / Karras noise level),   λ_k = log α_k/σ_k.

Every update below is written in terms of these numbers only, so the same sampler runs on a DDPM
schedule and on the VP, sub-VP and VE SDEs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from .. import conversions as conv
from ..sde import _Process, as_process
from ..utils import randn_like as randn  # noqa: F401  (per-sample generators; used by the samplers)


@dataclass
class Grid:
    process: _Process
    times: list  # K model times, descending
    alpha: list[float]  # K (+1 with the final clean point)
    sigma: list[float]
    final: bool

    @property
    def n_steps(self) -> int:  # number of updates
        return len(self.alpha) - 1

    def t_next(self, k: int):
        return self.times[k + 1] if k + 1 < len(self.times) else self.process.clean_time

    def sbar(self, k: int) -> float:
        return self.sigma[k] / self.alpha[k]

    def lam(self, k: int) -> float:  # +inf at the clean point
        return math.log(self.alpha[k] / self.sigma[k]) if self.sigma[k] > 0 else math.inf

    def eps(self, eps_model: Callable, x: torch.Tensor, k: int, counter: list | None = None) -> torch.Tensor:
        return call(eps_model, x, self.process.model_time(self.times[k], x.shape[0], x.device), counter)

    def x0(self, x: torch.Tensor, eps: torch.Tensor, k: int) -> torch.Tensor:
        """x̂_0 = (x - σ_k ε) / α_k   (DDPM eq. 15 / DDIM eq. 9)."""
        return conv.x0_from_eps(x, eps, self.alpha[k], self.sigma[k])


def call(eps_model: Callable, x: torch.Tensor, t: torch.Tensor, counter: list | None = None) -> torch.Tensor:
    if counter is not None:
        counter[0] += 1
    return eps_model(x, t).to(x.dtype)


def make_grid(schedule, steps: int | None, timesteps, spacing: str, final_step: bool) -> Grid:
    """The grid for ``schedule`` (Schedule or SDE): ``timesteps`` if given, else ``steps`` of ``spacing``."""
    process = as_process(schedule)
    if timesteps is not None:
        times = process.check_times(timesteps)
    else:
        if steps is None:
            raise ValueError("give steps=N (or an explicit timesteps= list)")
        times = process.default_times(int(steps), spacing)
    a, s = process.marginal(torch.tensor(times, dtype=torch.float64))
    alpha, sigma = a.tolist(), s.tolist()
    if final_step:
        alpha, sigma = alpha + [1.0], sigma + [0.0]
    if len(alpha) < 2:
        raise ValueError("a single timestep with final_step=False leaves nothing to do")
    return Grid(process, times, alpha, sigma, final_step)


def ddim_step(x: torch.Tensor, eps: torch.Tensor, grid: Grid, k: int, j: int) -> torch.Tensor:
    """Deterministic DDIM step from point k to point j (DDIM eq. 12 with σ = 0):
    x_j = α_j x̂_0 + σ_j ε = (α_j/α_k) x + (σ_j - α_j σ_k/α_k) ε.
    (PNDM's transfer φ, eq. 11 of Liu et al., is the same map when α² + σ² = 1.)"""
    return conv.ddim_step(grid.x0(x, eps, k), eps, grid.alpha[j], grid.sigma[j])


def run_callback(callback, i: int, grid: Grid, x: torch.Tensor, x0: torch.Tensor, k: int | None = None,
                 j: int | None = None) -> torch.Tensor:
    """After step i (from grid point k = i to j = i + 1 unless given): ``callback(i, t, t_next, x, x0_pred)``;
    a returned tensor replaces x."""
    if callback is None:
        return x
    k = i if k is None else k
    j = k + 1 if j is None else j
    out = callback(i, grid.times[k], grid.t_next(j - 1), x, x0)
    return x if out is None else out
