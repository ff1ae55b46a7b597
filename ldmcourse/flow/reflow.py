"""Reflow, straightness and one-step distillation (Liu, Gong & Liu 2022, "Flow Straight and Fast").

1. Train v on independent (x_0, ε) pairs (:func:`~.loss.flow_loss`): its ODE maps noise z to data
   x = Φ(z), but the paths cross in expectation, so they are curved and few-step Euler is poor.
2. **Reflow**: draw z, solve x = Φ(z) with the trained model (:func:`generate_pairs`) and retrain
   on the *coupled* pairs (x, z) with the same loss: the new flow's paths are straighter (their
   Theorem 3.3: the transport cost does not increase; straightness improves with each reflow).
3. **Distillation**: regress the one-step map z ↦ z - v(z, 1) on the pairs, i.e. train only at
   t = 1 (their §2.3: the k = 1 case of the distillation objective).

Straightness of a flow (their Definition 2.2, eq. 5, in our time direction):

    S(Z) = ∫_0^1 E ‖(Z_1 - Z_0) - v(Z_t, t)‖² dt

zero exactly when every path is a straight line traversed at constant speed. :func:`straightness`
estimates it along Euler trajectories on a fine grid, per dimension (the squared norm divided by D).
"""

from __future__ import annotations

import torch

from ..utils import randn_like
from .loss import flow_loss
from .sampling import check_times, get_flow_sampler, time_grid


@torch.no_grad()
def generate_pairs(velocity_model, noise: torch.Tensor, steps: int = 32, sampler: str = "heun",
                   batch_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, z): samples x = Φ(z) of the model's ODE from t = 1 to 0, and the noise z they came from."""
    fn, times = get_flow_sampler(sampler), time_grid(steps)
    xs = [fn(velocity_model, z, times) for z in noise.split(batch_size)]
    return torch.cat(xs), noise


@torch.no_grad()
def straightness(velocity_model, z: torch.Tensor, times=None, steps: int = 100) -> float:
    """S = Σ_k |h_k| E‖(z - x̂_0) - v(x_k, t_k)‖² / D along Euler trajectories from z (t = 1) to x̂_0 (t = 0).

    One pass with running sums: ‖d - v_k‖² = ‖d‖² - 2 d·v_k + ‖v_k‖², d = z - x̂_0 known at the end."""
    ts = check_times(times if times is not None else time_grid(steps))
    x, sum_v, sum_v2, total = z, torch.zeros_like(z), torch.zeros(z.shape[0], dtype=torch.float64, device=z.device), 0.0
    for i in range(len(ts) - 1):
        t, s = ts[i], ts[i + 1]
        v = velocity_model(x, torch.full((x.shape[0],), t, device=x.device, dtype=x.dtype)).to(x.dtype)
        w = abs(s - t)
        sum_v, sum_v2, total = sum_v + w * v, sum_v2 + w * (v.double().flatten(1) ** 2).sum(1), total + w
        x = x + (s - t) * v
    d = (z - x).double().flatten(1)  # Z_1 - Z_0: the straight line's constant velocity in our direction (t: 1 -> 0)
    per = total * (d**2).sum(1) - 2 * (d * sum_v.double().flatten(1)).sum(1) + sum_v2
    return float(per.mean() / total / d.shape[1])


def reflow_loss(model, batch, generator: torch.Generator | None = None, *, one_step: bool = False, **flow_kwargs):
    """Flow matching on coupled pairs: ``batch`` = (x, z) or (x, z, y) from :func:`generate_pairs`.
    ``one_step=True``: distillation, t = 1 only (the model learns z ↦ v(z, 1) with z - v(z, 1) ≈ x).
    Other keywords go to :func:`~.loss.flow_loss` (path must be ``linear`` for reflow's straightening)."""
    x, z = batch[0], batch[1]
    y = batch[2] if len(batch) > 2 else None
    t = torch.ones(x.shape[0], device=x.device) if one_step else None
    return flow_loss(model, (x, y) if y is not None else x, generator, noise=z, t=t, **flow_kwargs)


def fit_pairs(model: torch.nn.Module, x: torch.Tensor, z: torch.Tensor, steps: int, lr: float = 1e-3,
              batch_size: int = 256, generator: torch.Generator | None = None, one_step: bool = False,
              y: torch.Tensor | None = None, **flow_kwargs) -> list[float]:
    """A small Adam loop of :func:`reflow_loss` over the pairs (for notebooks and tests; ``ldmcourse.train.fit``
    does the same with EMA, logging and checkpoints given a dataset of pairs). Returns the losses."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (min(batch_size, x.shape[0]),), generator=generator, device="cpu")
        batch = (x[idx], z[idx]) if y is None else (x[idx], z[idx], y[idx])
        loss, _ = reflow_loss(model, batch, generator, one_step=one_step, **flow_kwargs)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses


def fresh_noise(like: torch.Tensor, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """n noise draws shaped like ``like[0]`` (the z of new pairs)."""
    return randn_like(like.new_empty((n, *like.shape[1:])), generator)


__all__ = ["generate_pairs", "straightness", "reflow_loss", "fit_pairs", "fresh_noise"]
