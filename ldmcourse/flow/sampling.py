"""ODE samplers for a velocity field, as plain functions (k-diffusion style), and model adapters.

``velocity_model(x, t)``: x (B, …), t (B,) float path times; returns dx/dt. Every sampler takes a
time grid ``times`` (any strictly monotone sequence in [0, 1]: from 1 to 0 generates, from 0 to 1
encodes) and integrates dx/dt = v(x, t) along it, one update per interval, h = t_{i+1} - t_i:

    euler     x ← x + h v(x, t)                                                       NFE = steps
    midpoint  x ← x + h v(x + ½h v(x, t), t + ½h)                                     NFE = 2·steps
    heun      x̃ = x + h v(x, t);  x ← x + ½h (v(x, t) + v(x̃, t + h))  (trapezoid)     NFE = 2·steps

On the linear path Euler is DDIM (both are exact for a velocity constant along the step); see the tests.
``callback(i, t, t_next, x, v)`` runs after every step (v: the velocity used at its start).
Classifier-free guidance of a velocity model: :func:`ldmcourse.guidance.guided_velocity`.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..conversions import eps_to_velocity, velocity_to_eps
from .paths import make_path

VelocityModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def time_grid(steps: int, t_max: float = 1.0, t_min: float = 0.0, shift: float = 1.0) -> list[float]:
    """``steps + 1`` times from t_max to t_min, uniform, then shifted t ↦ s t / (1 + (s - 1) t)
    (Esser et al. 2024 eq. 23, diffusers' ``shift``; s > 1 spends more steps near the noise)."""
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps={steps}: need at least one step (NFE >= 1)")
    t = torch.linspace(t_max, t_min, int(steps) + 1, dtype=torch.float64)
    return (shift * t / (1 + (shift - 1) * t)).tolist()


def check_times(times) -> list[float]:
    ts = [float(v) for v in torch.as_tensor(times, dtype=torch.float64).flatten().tolist()]
    if len(ts) < 2:
        raise ValueError(f"a time grid needs at least 2 points (one step, NFE >= 1), got {ts}")
    d = [b - a for a, b in zip(ts, ts[1:])]
    if not (all(v < 0 for v in d) or all(v > 0 for v in d)) or min(ts) < 0 or max(ts) > 1:
        raise ValueError(f"times must be strictly monotone in [0, 1], got {ts[:4]}…")
    return ts


def _v(model: VelocityModel, x: torch.Tensor, t: float) -> torch.Tensor:
    return model(x, torch.full((x.shape[0],), t, device=x.device, dtype=x.dtype)).to(x.dtype)


@torch.no_grad()
def euler(velocity_model: VelocityModel, x: torch.Tensor, times, callback=None) -> torch.Tensor:
    ts = check_times(times)
    for i in range(len(ts) - 1):
        t, s = ts[i], ts[i + 1]
        v = _v(velocity_model, x, t)
        x = x + (s - t) * v
        if callback is not None:
            callback(i, t, s, x, v)
    return x


@torch.no_grad()
def midpoint(velocity_model: VelocityModel, x: torch.Tensor, times, callback=None) -> torch.Tensor:
    ts = check_times(times)
    for i in range(len(ts) - 1):
        t, s = ts[i], ts[i + 1]
        h = s - t
        v = _v(velocity_model, x, t)
        x = x + h * _v(velocity_model, x + 0.5 * h * v, t + 0.5 * h)
        if callback is not None:
            callback(i, t, s, x, v)
    return x


@torch.no_grad()
def heun(velocity_model: VelocityModel, x: torch.Tensor, times, callback=None) -> torch.Tensor:
    ts = check_times(times)
    for i in range(len(ts) - 1):
        t, s = ts[i], ts[i + 1]
        h = s - t
        v = _v(velocity_model, x, t)
        x_pred = x + h * v
        x = x + 0.5 * h * (v + _v(velocity_model, x_pred, s))
        if callback is not None:
            callback(i, t, s, x, v)
    return x


FLOW_SAMPLERS = {"euler": euler, "heun": heun, "midpoint": midpoint}
NFE_PER_STEP = {"euler": 1, "heun": 2, "midpoint": 2}


def get_flow_sampler(name: str):
    if name not in FLOW_SAMPLERS:
        raise ValueError(f"unknown flow sampler {name!r}; choose one of {', '.join(FLOW_SAMPLERS)}")
    return FLOW_SAMPLERS[name]


# ------------------------------------------------------------------------------------------------
# model adapters: one network, seen as a velocity field or as an ε-model
# ------------------------------------------------------------------------------------------------

def velocity_from_eps(eps_model, path) -> VelocityModel:
    """``v(x, t)`` from an ε-model on ``path``: u = (α'/α) x + (σ' - α' σ/α) ε_θ. The ε-model is called
    with ``path.network_time(t)`` (e.g. the DDPM index u = tT - 1 for a schedule path). Needs α_t > 0."""
    path = make_path(path)

    def velocity(x, t):
        eps = eps_model(x, path.network_time(t)).to(x.dtype)
        return eps_to_velocity(eps, x, *path.coefficients_like(t, x))

    return velocity


def eps_from_velocity(velocity_model: VelocityModel, path):
    """An ε-model ``eps(x, t)`` (t: path times, as the ε-samplers pass on a path) from a velocity model:
    ε = (α v - α' x)/(α σ' - σ α'). Lets DDIM / DPM-Solver of :mod:`ldmcourse.samplers` run a flow model."""
    path = make_path(path)

    def eps(x, t):  # t: float64 from the path's model_time, so the coefficients near α = 0 are exact
        v = velocity_model(x, t.to(x.dtype)).to(x.dtype)
        return velocity_to_eps(v, x, *path.coefficients_like(t, x))

    return eps


__all__ = ["time_grid", "check_times", "euler", "heun", "midpoint", "FLOW_SAMPLERS", "NFE_PER_STEP", "get_flow_sampler",
           "velocity_from_eps", "eps_from_velocity"]
