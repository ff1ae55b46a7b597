"""DPM-Solver (Lu et al. 2022) and DPM-Solver++(2M) (Lu et al. 2022b): exponential integrators.

The probability-flow ODE of x_t = α_t x_0 + σ_t ε has a linear part that can be integrated exactly.
In λ = log(α/σ), its solution from t to s (h = λ_s - λ_t > 0) is (DPM-Solver eq. 3.4)

    x_s = (α_s/α_t) x_t - α_s ∫_{λ_t}^{λ_s} e^{-λ} ε_θ(x_λ, λ) dλ,

and the solvers Taylor-expand only ε_θ in λ:
  order 1:  x_s = (α_s/α_t) x_t - σ_s (e^h - 1) ε_t                         (= DDIM with η = 0)
  order k:  add terms in ε's derivatives, estimated from intermediate (singlestep) or past
            (multistep) evaluations.

Singlestep DPM-Solver-k here takes its intermediate points *from the grid* (as diffusers'
DPMSolverSinglestepScheduler does): the grid's points are grouped k at a time, so NFE = steps and
the model is only ever called at training indices. The ratios r_i = (λ_{s_i} - λ_t)/h come from
the grid (the paper's r1 = 1/2, or 1/3 and 2/3, for a grid uniform in λ).
The step into clean data (σ = 0, λ = ∞, h = ∞) is always first order, x_0 = x̂_0: a higher-order
correction diverges there (diffusers uses the same "lower order final" step).
"""

from __future__ import annotations

import math

import torch

from .grid import Grid, make_grid, run_callback


def _first_order(x, eps, grid: Grid, k: int, j: int):
    """DPM-Solver-1 from grid point k to point j; at σ_j = 0 the limit σ_j(e^h - 1) -> α_j σ_k/α_k."""
    if grid.sigma[j] == 0:
        return grid.alpha[j] / grid.alpha[k] * x - grid.alpha[j] * grid.sbar(k) * eps
    h = grid.lam(j) - grid.lam(k)
    return grid.alpha[j] / grid.alpha[k] * x - grid.sigma[j] * math.expm1(h) * eps


def _orders(n_inner: int, order: int) -> list[int]:
    """Split ``n_inner`` grid intervals into steps of ``order`` intervals; the remainder at the end."""
    out = [order] * (n_inner // order)
    return out + ([n_inner % order] if n_inner % order else [])


@torch.no_grad()
def _singlestep(order: int, eps_model, x_T, schedule, steps, timesteps, spacing, callback, final_step):
    grid = make_grid(schedule, steps, timesteps, spacing, final_step)
    n_inner = len(grid.times) - 1  # intervals between evaluated points
    x, k, i = x_T, 0, 0
    plan = _orders(n_inner, order) + ([1] if grid.final else [])
    for o in plan:
        j = k + o  # this step goes from point k to point j, through points k+1 … j-1
        e_k = grid.eps(eps_model, x, k)
        x0 = grid.x0(x, e_k, k)
        if o == 1:
            x = _first_order(x, e_k, grid, k, j)
        else:
            lam_k = grid.lam(k)
            h = grid.lam(j) - lam_k
            r1 = (grid.lam(k + 1) - lam_k) / h
            # stage 1: first-order step to s1 = point k+1, then D1 = ε(u1, s1) - ε_k ≈ r1 h ε' + ½(r1 h)² ε''
            u1 = _first_order(x, e_k, grid, k, k + 1)
            D1 = grid.eps(eps_model, u1, k + 1) - e_k
            if o == 2:
                # DPM-Solver-2 (Algorithm 1, general r1): x_s = (α_s/α_t)x - σ_s(e^h-1)ε_t - σ_s/(2r1) (e^h-1) D1
                x = grid.alpha[j] / grid.alpha[k] * x - grid.sigma[j] * math.expm1(h) * (e_k + D1 / (2 * r1))
            else:
                # DPM-Solver-3 (Algorithm 2): second-order stage to s2 using D1, then a third-order step.
                r2 = (grid.lam(k + 2) - lam_k) / h
                h2 = r2 * h
                u2 = (grid.alpha[k + 2] / grid.alpha[k] * x - grid.sigma[k + 2] * math.expm1(h2) * e_k
                      - grid.sigma[k + 2] * (math.expm1(h2) - h2) / (r1 * h) * D1)
                D2 = grid.eps(eps_model, u2, k + 2) - e_k
                # ε(λ_k + r h) - ε_k ≈ r h ε' + ½ r² h² ε'': solve the 2×2 system for h ε' and h² ε''
                det = r1 * r2 * (r2 - r1) / 2
                d1 = (D1 * r2**2 / 2 - D2 * r1**2 / 2) / det  # ≈ h ε'
                d2 = (D2 * r1 - D1 * r2) / det  # ≈ h² ε''
                phi1, phi2, phi3 = math.expm1(h), (math.expm1(h) - h) / h, (math.expm1(h) - h - h**2 / 2) / h**2
                x = grid.alpha[j] / grid.alpha[k] * x - grid.sigma[j] * (phi1 * e_k + phi2 * d1 + phi3 * d2)
        x = run_callback(callback, i, grid, x, x0, k, j)  # a multi-interval step reports once
        k, i = j, i + 1
    return x


def dpm_solver_1(eps_model, x_T, schedule, steps=None, generator=None, timesteps=None, spacing="leading",
                 callback=None, final_step=True):
    """DPM-Solver-1 (deterministic; equal to DDIM η=0 up to float rounding). NFE = steps."""
    return _singlestep(1, eps_model, x_T, schedule, steps, timesteps, spacing, callback, final_step)


def dpm_solver_2(eps_model, x_T, schedule, steps=None, generator=None, timesteps=None, spacing="leading",
                 callback=None, final_step=True):
    """Singlestep DPM-Solver-2 over pairs of grid intervals. NFE = steps; global order 2."""
    return _singlestep(2, eps_model, x_T, schedule, steps, timesteps, spacing, callback, final_step)


def dpm_solver_3(eps_model, x_T, schedule, steps=None, generator=None, timesteps=None, spacing="leading",
                 callback=None, final_step=True):
    """Singlestep DPM-Solver-3 over triples of grid intervals. NFE = steps; global order 3."""
    return _singlestep(3, eps_model, x_T, schedule, steps, timesteps, spacing, callback, final_step)


@torch.no_grad()
def dpm_solver_pp_2m(eps_model, x_T, schedule, steps=None, generator=None, timesteps=None, spacing="leading",
                     callback=None, final_step=True):
    """DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2): multistep, in data prediction x̂_0 = D.

        x_s = (σ_s/σ_t) x_t - α_s (e^{-h} - 1) D',
        D'  = (1 + 1/(2r)) D_t - 1/(2r) D_{t_prev},  r = h_prev/h   (D' = D_t on the first step)

    One model call per step (NFE = steps); the step into σ = 0 is first order (x = D_t), as in
    diffusers' ``final_sigmas_type="zero"``.
    """
    grid = make_grid(schedule, steps, timesteps, spacing, final_step)
    x, prev = x_T, None  # prev: (D, h) of the previous step
    for k in range(grid.n_steps):
        eps = grid.eps(eps_model, x, k)
        D = grid.x0(x, eps, k)
        if grid.sigma[k + 1] == 0:
            x = grid.alpha[k + 1] * D
        else:
            h = grid.lam(k + 1) - grid.lam(k)
            Dp = D if prev is None else (1 + 1 / (2 * prev[1] / h)) * D - (1 / (2 * prev[1] / h)) * prev[0]
            x = grid.sigma[k + 1] / grid.sigma[k] * x - grid.alpha[k + 1] * math.expm1(-h) * Dp
            prev = (D, h)
        x = run_callback(callback, k, grid, x, D)
    return x
