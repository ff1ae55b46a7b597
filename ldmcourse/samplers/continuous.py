"""Solvers of the reverse SDE and of the probability-flow ODE (Song et al. 2021; Karras et al. 2022).

For x_t = α_t x_0 + σ_t ε with forward SDE dx = f x dt + g dw and score s = -ε/σ (:mod:`ldmcourse.sde`):

    reverse SDE        dx = [f x - g² s] dt + g dw̄        (eq. 6; dt < 0: time runs *backwards*)
    probability flow   dx = [f x - ½ g² s] dt             (eq. 13; same marginals, deterministic)

In the variables x̄ = x/α and σ̄ = σ/α (the VE / Karras parametrisation) the probability-flow ODE of
*every* such process is simply

    dx̄/dσ̄ = ε_θ(α x̄, t(σ̄))                                                     (Karras et al. eq. 4)

which is what :func:`euler`, :func:`heun` and :func:`adaptive` integrate (Euler in σ̄ is DDIM); the reverse SDE is
integrated by :func:`euler_maruyama` (strong order ½), :func:`sde_heun` (order 1) and :func:`pc`.
The seed post's ODE/SDE loops step *forwards* in time (``x + drift·dt`` with dt > 0 while t goes
1 -> 0 is right only if the drift's sign is flipped too) and plug ε_θ in where the score belongs.
"""

from __future__ import annotations

import math

import torch

from ..conversions import score_from_eps
from .grid import call, make_grid, randn, run_callback


@torch.no_grad()
def euler(eps_model, x_T, schedule, steps=None, generator=None, timesteps=None, spacing="leading",
          callback=None, final_step=True, space: str = "sigma"):
    """Euler on the probability-flow ODE. ``space="sigma"`` (default; diffusers' EulerDiscreteScheduler,
    k-diffusion's ``sample_euler``): x̄ += (σ̄_s - σ̄_t) ε, identical to DDIM η=0.
    ``space="t"``: Euler in the process's own time, x_s = x_t - [f x_t - ½ g² s_θ](t - s), with the
    exact step integrals F = ∫f, G = ∫g² of :meth:`~ldmcourse.sde._Process.increments` (first order
    too, but a much larger error constant: the linear part -f x is not integrated exactly).
    """
    if space not in ("sigma", "t"):
        raise ValueError(f"space={space!r}: choose 'sigma' or 't'")
    grid = make_grid(schedule, steps, timesteps, spacing, final_step)
    x = x_T
    for k in range(grid.n_steps):
        eps = grid.eps(eps_model, x, k)
        x0 = grid.x0(x, eps, k)
        if grid.sigma[k + 1] == 0:
            x = x0
        elif space == "sigma":
            x = grid.alpha[k + 1] * (x / grid.alpha[k] + (grid.sbar(k + 1) - grid.sbar(k)) * eps)
        else:
            F, G = grid.process.increments(grid.times[k], grid.times[k + 1])
            x = x + _drift(x, eps, F, 0.5 * G, grid.sigma[k])  # eq. 13: the reverse SDE's drift with half of g²
        x = run_callback(callback, k, grid, x, x0)
    return x


@torch.no_grad()
def heun(eps_model, x_T, schedule, steps=None, generator=None, timesteps=None, spacing="leading",
         callback=None, final_step=True):
    """Heun's 2nd-order method on dx̄/dσ̄ = ε (Karras et al. Algorithm 1 without churn; diffusers'
    HeunDiscreteScheduler): Euler predictor, then the trapezoid rule with ε at the new point. The
    step into σ̄ = 0 is a plain Euler step (ε at σ = 0 is undefined). NFE = 2·steps - 1."""
    grid = make_grid(schedule, steps, timesteps, spacing, final_step)
    x = x_T
    for k in range(grid.n_steps):
        eps = grid.eps(eps_model, x, k)
        x0 = grid.x0(x, eps, k)
        xbar, ds = x / grid.alpha[k], grid.sbar(k + 1) - grid.sbar(k)
        x_pred = grid.alpha[k + 1] * (xbar + ds * eps)
        if grid.sigma[k + 1] == 0:
            x = x_pred
        else:
            eps_next = grid.eps(eps_model, x_pred, k + 1)
            x = grid.alpha[k + 1] * (xbar + ds * (eps + eps_next) / 2)
        x = run_callback(callback, k, grid, x, x0)
    return x


def _drift(x, eps, F, G, sigma):
    """The reverse SDE's drift over one step t -> s, left-point: D(x, t) = -F x + G s_θ(x, t), s_θ = -ε/σ_t (eq. 6)."""
    return -F * x + G * score_from_eps(eps, sigma)


def _em_step(x, eps, grid, k, generator, noise: bool = True):
    """Euler–Maruyama on the reverse SDE, t -> s: x_s = x + D(x, t) + √G z."""
    F, G = grid.process.increments(grid.times[k], grid.times[k + 1])
    x = x + _drift(x, eps, F, G, grid.sigma[k])
    return x + math.sqrt(G) * randn(x, generator) if noise else x


@torch.no_grad()
def euler_maruyama(eps_model, x_T, schedule, steps=None, generator=None, timesteps=None, spacing="leading",
                   callback=None, final_step=True):
    """Euler–Maruyama on the reverse SDE (score_sde's ``EulerMaruyamaPredictor``); the step into clean
    data returns x̂_0 (Tweedie's denoising step, score_sde's ``noise_removal``). Strong order ½:
    it needs many more steps than the ODE solvers, but samples the right distribution as steps grow."""
    grid = make_grid(schedule, steps, timesteps, spacing, final_step)
    x = x_T
    for k in range(grid.n_steps):
        eps = grid.eps(eps_model, x, k)
        x0 = grid.x0(x, eps, k)
        x = x0 if grid.sigma[k + 1] == 0 else _em_step(x, eps, grid, k, generator)
        x = run_callback(callback, k, grid, x, x0)
    return x


@torch.no_grad()
def sde_heun(eps_model, x_T, schedule, steps=None, generator=None, timesteps=None, spacing="leading",
             callback=None, final_step=True):
    """Stochastic Heun on the reverse SDE (the improved Euler–Maruyama; Kloeden & Platen 1992, §11.1):
    an Euler–Maruyama predictor x' = x + D(x, t) + √G z, then the trapezoid rule on the drift with the
    *same* noise, x_s = x + ½[D(x, t) + D(x', s)] + √G z, where D(x, t) = -F x + G s_θ(x, t) is the drift's
    increment over the step (F = ∫f, G = ∫g², as in :func:`euler_maruyama`). The noise is additive (g does
    not depend on x), so Itô and Stratonovich agree and the trapezoid improves only the drift's part of the
    error. That drift is stiff at low noise (its coefficient G/σ_s² at the corrector's point grows as σ_s -> 0),
    so with few, large steps the explicit corrector over-shoots: measure before preferring it to Euler–Maruyama
    (notebook 06). The step into clean data is Tweedie's x̂_0, as in :func:`euler_maruyama`. NFE = 2·steps - 1.

    The seed post's "SDE-Heun" takes the trapezoid step deterministically and adds the noise afterwards
    (and steps forwards in time with ε as the score, see the module docstring)."""
    grid = make_grid(schedule, steps, timesteps, spacing, final_step)
    x = x_T
    for k in range(grid.n_steps):
        eps = grid.eps(eps_model, x, k)
        x0 = grid.x0(x, eps, k)
        if grid.sigma[k + 1] == 0:
            x = x0
        else:
            F, G = grid.process.increments(grid.times[k], grid.times[k + 1])
            z = math.sqrt(G) * randn(x, generator)
            drift = _drift(x, eps, F, G, grid.sigma[k])
            x_pred = x + drift + z                                          # the Euler–Maruyama predictor
            drift_pred = _drift(x_pred, grid.eps(eps_model, x_pred, k + 1), F, G, grid.sigma[k + 1])
            x = x + 0.5 * (drift + drift_pred) + z                          # trapezoid on the drift, same noise
        x = run_callback(callback, k, grid, x, x0)
    return x


@torch.no_grad()
def pc(eps_model, x_T, schedule, steps=None, generator=None, timesteps=None, spacing="leading",
       callback=None, final_step=True, snr: float = 0.16, corrector_steps: int = 1):
    """Predictor–corrector sampling (Song et al. 2021, Algorithms 2–3): at each noise level, Langevin
    corrector steps, then an Euler–Maruyama predictor step to the next level. NFE = (1 + corrector_steps)
    per step.

    Langevin: x <- x + δ s_θ + √(2δ) z. Song et al. set δ = 2a (snr ‖z‖/‖s_θ‖)² with a = α_i (1 - β_i for
    VP, 1 for VE). With s_θ = -ε_θ/σ and, in high dimension, ‖z‖ ≈ ‖ε_θ‖ ≈ √D, that is δ = 2a (snr σ)²,
    the form used here: per-sample norms explode in low dimension (‖ε_θ‖ -> 0 between modes), and
    score_sde's batch-averaged norms would make a sample depend on the rest of its batch. a = e^{2F}
    (F = ∫f over the predictor step)."""
    grid = make_grid(schedule, steps, timesteps, spacing, final_step)
    x = x_T
    for k in range(grid.n_steps):
        last = grid.sigma[k + 1] == 0
        a_L = 1.0 if last else math.exp(2 * grid.process.increments(grid.times[k], grid.times[k + 1])[0])
        delta = 2 * a_L * (snr * grid.sigma[k]) ** 2
        for _ in range(corrector_steps):
            score = score_from_eps(grid.eps(eps_model, x, k), grid.sigma[k])
            x = x + delta * score + math.sqrt(2 * delta) * randn(x, generator)
        eps = grid.eps(eps_model, x, k)
        x0 = grid.x0(x, eps, k)
        x = x0 if grid.sigma[k + 1] == 0 else _em_step(x, eps, grid, k, generator)
        x = run_callback(callback, k, grid, x, x0)
    return x


# Butcher tableaus of embedded pairs: (c, A, b (higher order), b* (lower order), lower order)
_TABLEAUS = {
    "bosh3": ([0, 1 / 2, 3 / 4, 1], [[], [1 / 2], [0, 3 / 4], [2 / 9, 1 / 3, 4 / 9]],
              [2 / 9, 1 / 3, 4 / 9, 0], [7 / 24, 1 / 4, 1 / 3, 1 / 8], 2),
    "dopri5": ([0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1, 1],
               [[], [1 / 5], [3 / 40, 9 / 40], [44 / 45, -56 / 15, 32 / 9],
                [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729],
                [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656],
                [35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84]],
               [35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0],
               [5179 / 57600, 0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40], 4),
}


@torch.no_grad()
def adaptive(eps_model, x_T, schedule, steps=None, generator=None, timesteps=None, spacing="leading",
             callback=None, final_step=True, rtol: float = 1e-3, atol: float = 1e-3, method: str = "bosh3",
             stats: dict | None = None):
    """Adaptive-step embedded Runge–Kutta on the probability-flow ODE, in s = log σ̄:
    dx̄/ds = σ̄ ε_θ(α x̄, t(σ̄)). Only the grid's first and last times are used; ``steps`` sets the
    first trial step (range/steps). A step is accepted when the RMS over pixels (worst sample) of
    α·(x̄_high - x̄_low) / (atol + rtol·|x|) is <= 1; the next step is h·clip(0.9 err^{-1/(q+1)}, 0.2, 5).
    Stage times are generally *fractional* training indices: the ε-model must accept a float t (the
    course U-Net and the analytic model do). ``method``: "bosh3" (Bogacki–Shampine 3(2)) or "dopri5"
    (Dormand–Prince 5(4)). If ``stats`` is a dict it receives nfe, accepted and rejected steps.
    The callback runs after each accepted step (t, t_next are the fractional times).
    """
    if method not in _TABLEAUS:
        raise ValueError(f"method={method!r}: choose one of {', '.join(_TABLEAUS)}")
    c, A, b, b_low, q = _TABLEAUS[method]
    grid = make_grid(schedule, steps, timesteps, spacing, final_step)
    process, counter = grid.process, [0]
    t_end_k = len(grid.times) - 1
    s0, s1 = math.log(grid.sbar(0)), math.log(grid.sbar(t_end_k))

    def f(xbar, s):  # dx̄/ds at log σ̄ = s; returns (slope, α, t)
        sbar = math.exp(s)
        t = float(process.time_of_sigmabar(torch.tensor(sbar, dtype=torch.float64)))
        a = float(process.marginal(torch.tensor(t, dtype=torch.float64))[0])
        eps = call(eps_model, a * xbar, process.model_time(t, xbar.shape[0], xbar.device), counter)
        return sbar * eps, a, t

    xbar, s = x_T / grid.alpha[0], s0
    h = (s1 - s0) / max(int(steps or 20), 1)  # negative: σ̄ decreases
    k1, a, t = f(xbar, s)
    accepted = rejected = 0
    while s > s1 + 1e-12:
        h = max(h, s1 - s)  # do not overshoot the end (h < 0)
        ks = [k1]
        for i in range(1, len(c) - 1):
            ks.append(f(xbar + h * sum(aij * kj for aij, kj in zip(A[i], ks) if aij), s + c[i] * h)[0])
        x_high = xbar + h * sum(bi * ki for bi, ki in zip(b, ks) if bi)
        k_last, a_new, t_new = f(x_high, s + h)  # both pairs are FSAL: the last stage is the next k1
        x_low = xbar + h * sum(bi * ki for bi, ki in zip(b_low, ks + [k_last]) if bi)
        scale = atol + rtol * torch.maximum((a * xbar).abs(), (a_new * x_high).abs())
        err = float(((a_new * (x_high - x_low) / scale) ** 2).flatten(1).mean(1).sqrt().max())
        if err <= 1.0:
            t_prev, (xbar, s, k1, a, t) = t, (x_high, s + h, k_last, a_new, t_new)
            accepted += 1
            if callback is not None:
                out = callback(accepted - 1, t_prev, t, a * xbar, xbar - k1)
                if out is not None:
                    xbar = out / a
                    k1 = f(xbar, s)[0]
        else:
            rejected += 1
        h = h * min(5.0, max(0.2, 0.9 * (err + 1e-10) ** (-1.0 / (q + 1))))
    x = a * xbar
    if grid.final:  # the step into clean data: x̂_0 = x̄ - σ̄ ε, with ε = k1/σ̄
        x = xbar - k1
        if callback is not None:
            out = callback(accepted, t, process.clean_time, x, x)
            x = x if out is None else out
    if stats is not None:
        stats.update(nfe=counter[0], accepted=accepted, rejected=rejected)
    return x
