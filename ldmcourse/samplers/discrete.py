"""DDIM (Song, Meng & Ermon 2021) and PLMS / PNDM (Liu et al. 2022).

Both walk the timesteps *downwards* from x_T at ``timesteps[0]`` (the seed post's DDIM loop runs
``linspace(1, 999)`` upwards, i.e. it adds noise back in).
"""

from __future__ import annotations

import torch

from .. import conversions as conv
from .grid import ddim_step, make_grid, randn, run_callback


@torch.no_grad()
def ddim(eps_model, x_T: torch.Tensor, schedule, steps: int | None = None, generator=None, timesteps=None,
         spacing: str = "leading", callback=None, final_step: bool = True, eta: float = 0.0,
         clip_x0: float | None = None) -> torch.Tensor:
    """DDIM, from the non-Markovian forward process q_σ (DDIM eq. 12), from point t to the next point s:

        x̂_0 = (x_t - σ_t ε_θ) / α_t                                               "predicted x_0"
        σ_η² = η² (σ_s²/σ_t²)(σ_t² - (α_t/α_s)² σ_s²)   (= η² (1-ᾱ_s)/(1-ᾱ_t) (1-ᾱ_t/ᾱ_s), eq. 16)
        x_s = α_s x̂_0 + √(σ_s² - σ_η²) ε_θ + σ_η z                               "direction to x_t" + noise

    η = 0 is deterministic (the probability-flow ODE's first-order solver); η = 1 has DDPM's
    posterior variance β̃ (ancestral sampling with σ² = β̃ on the strided chain).
    """
    if eta < 0:
        raise ValueError(f"eta={eta} must be >= 0")
    grid = make_grid(schedule, steps, timesteps, spacing, final_step)
    x = x_T
    for k in range(grid.n_steps):
        eps = grid.eps(eps_model, x, k)
        x0 = grid.x0(x, eps, k)
        if clip_x0 is not None:
            x0 = x0.clamp(-clip_x0, clip_x0)
            eps = conv.eps_from_x0(x, x0, grid.alpha[k], grid.sigma[k])  # keep ε consistent with the clipped x̂_0
        a_t, s_t, a_s, s_s = grid.alpha[k], grid.sigma[k], grid.alpha[k + 1], grid.sigma[k + 1]
        std = conv.ddim_noise_std(eta, a_t, s_t, a_s, s_s)  # σ_η; 0 at the clean point
        x = conv.ddim_step(x0, eps, a_s, s_s, std, randn(x, generator) if std > 0 else None)
        x = run_callback(callback, k, grid, x, x0)
    return x


@torch.no_grad()
def plms(eps_model, x_T: torch.Tensor, schedule, steps: int | None = None, generator=None, timesteps=None,
         spacing: str = "leading", callback=None, final_step: bool = True, warmup: str = "prk") -> torch.Tensor:
    """Pseudo linear multistep (PNDM, Liu et al. 2022): a linear-multistep combination of past ε's,
    pushed through the DDIM transfer map φ (their eq. 11; :func:`~.grid.ddim_step`):

        ε' = (55 ε_t - 59 ε_{t+1} + 37 ε_{t+2} - 9 ε_{t+3}) / 24        (4th-order Adams–Bashforth, eq. 12)
        x_s = φ(x_t, ε', t -> s)

    (The seed post's "PLMS" averages the last two ε: that is not a multistep method of any order.)
    The first three steps have no history. ``warmup="prk"`` (the paper's, diffusers' default): pseudo
    Runge–Kutta 4 through the midpoint m of each step, 4 model calls per step (eq. 13):

        e1 = ε(x, t); e2 = ε(φ(x, e1, t->m), m); e3 = ε(φ(x, e2, t->m), m); e4 = ε(φ(x, e3, t->s), s)
        x_s = φ(x, (e1 + 2e2 + 2e3 + e4)/6, t -> s)

    ``warmup="heun"`` (latent-diffusion's PLMS, diffusers' ``skip_prk_steps``): one pseudo-Heun step
    (ε' = (ε(x,t) + ε(φ(x,ε,t->s), s))/2), then Adams–Bashforth of order 2 and 3 until 4 ε's exist.
    NFE: steps + 9 (prk) or steps + 1 (heun), with ``final_step``.
    """
    if warmup not in ("prk", "heun"):
        raise ValueError(f"warmup={warmup!r}: choose 'prk' or 'heun'")
    grid = make_grid(schedule, steps, timesteps, spacing, final_step)
    process = grid.process
    x, history = x_T, []  # history: ε at the start of each past step, newest last
    for k in range(grid.n_steps):
        eps = grid.eps(eps_model, x, k)
        if len(history) < 3 and warmup == "prk" and k + 1 < len(grid.times):
            # pseudo Runge–Kutta through the midpoint time m (a training index for discrete schedules)
            t, s = grid.times[k], grid.times[k + 1]
            m = s + (t - s) // 2 if not process.continuous else (t + s) / 2
            a_m, s_m = (float(v) for v in process.marginal(torch.tensor(float(m), dtype=torch.float64)))
            mid = _Point(grid, a_m, s_m)
            model_m = lambda z: grid_eps_at(eps_model, z, process, m)  # noqa: E731
            e1 = eps
            e2 = model_m(mid.step(x, e1, k))
            e3 = model_m(mid.step(x, e2, k))
            e4 = grid.eps(eps_model, ddim_step(x, e3, grid, k, k + 1), k + 1)
            eps_prime = (e1 + 2 * e2 + 2 * e3 + e4) / 6
        elif len(history) == 0:
            if warmup == "heun" and grid.sigma[k + 1] > 0:  # pseudo improved Euler
                e2 = grid.eps(eps_model, ddim_step(x, eps, grid, k, k + 1), k + 1)
                eps_prime = (eps + e2) / 2
            else:
                eps_prime = eps
        elif len(history) == 1:
            eps_prime = (3 * eps - history[-1]) / 2
        elif len(history) == 2:
            eps_prime = (23 * eps - 16 * history[-1] + 5 * history[-2]) / 12
        else:
            eps_prime = (55 * eps - 59 * history[-1] + 37 * history[-2] - 9 * history[-3]) / 24
        history = (history + [eps])[-3:]
        x0 = grid.x0(x, eps_prime, k)
        x = ddim_step(x, eps_prime, grid, k, k + 1)
        x = run_callback(callback, k, grid, x, x0)
    return x


class _Point:
    """An off-grid point (α, σ) to which a DDIM step from grid point k can be taken."""

    def __init__(self, grid, alpha, sigma):
        self.grid, self.alpha, self.sigma = grid, alpha, sigma

    def step(self, x, eps, k):
        return conv.ddim_step(self.grid.x0(x, eps, k), eps, self.alpha, self.sigma)


def grid_eps_at(eps_model, x, process, t):
    return eps_model(x, process.model_time(t, x.shape[0], x.device)).to(x.dtype)
