"""The (conditional) flow-matching loss and the distribution of training times.

    L(θ) = E_{t, x_0, ε} ‖v_θ(x_t, t) - u_t(x_t | x_0, ε)‖²,   x_t = α_t x_0 + σ_t ε,   u_t = α'_t x_0 + σ'_t ε

(Lipman et al. 2023, eq. 9 and 23; Liu et al. 2022, eq. 1). Its minimiser is the marginal velocity
E[u_t | x_t], so the loss never reaches zero: what is left is the conditional variance of u_t.

Time sampling (Esser et al. 2024, "Scaling Rectified Flow Transformers", §3.1):
- ``uniform``: t ~ U(0, 1).
- ``logit_normal``: t = sigmoid(n), n ~ N(m, s²) (their eq. 19; ``rf/lognorm(0.00, 1.00)`` ranked best):
  more weight in the middle of the path, where the velocity is hardest to predict.
Both are mapped affinely onto the path's ``t_range`` (the VP path avoids t = 0, where σ' → ∞).
"""

from __future__ import annotations

import torch

from ..diffusion import call_with_labels
from ..utils import randn_like
from .paths import GaussianPath, make_path

T_SAMPLINGS = ("uniform", "logit_normal")


def sample_t(n: int, kind: str = "uniform", loc: float = 0.0, scale: float = 1.0, t_range=(0.0, 1.0),
             generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """n training times (n,) float32 in ``t_range``."""
    if kind == "uniform":
        u = torch.rand(n, generator=generator, device=device)
    elif kind == "logit_normal":
        u = torch.sigmoid(loc + scale * torch.randn(n, generator=generator, device=device))  # Esser et al. eq. 19
    else:
        raise ValueError(f"unknown t sampling {kind!r}; choose one of {', '.join(T_SAMPLINGS)}")
    lo, hi = t_range
    return lo + (hi - lo) * u


def flow_loss(model, batch, generator: torch.Generator | None = None, *, path: GaussianPath | str = "linear",
              t_sampling: str = "uniform", loc: float = 0.0, scale: float = 1.0, p_uncond: float = 0.0,
              num_classes: int | None = None, time_scale: float = 1.0, t: torch.Tensor | None = None,
              noise: torch.Tensor | None = None):
    """The flow-matching loss as a ``fit`` loss_fn (``functools.partial(flow_loss, path="linear")``).

    ``batch``: ``x0`` or ``(x0, y)``. The network is called as ``model(x_t, time_scale·t[, y])``
    (the course U-Net's sinusoidal embedding wants times of order 1000, as SD3 feeds 1000·t).
    A class-conditional model (``num_classes`` or ``model.config.num_classes``) gets its labels, each
    replaced by the null class K with probability ``p_uncond`` (classifier-free guidance training).
    ``noise``: the ε to pair with each x0 (reflow trains on fixed (sample, noise) pairs); ``t``: fixed
    times (one-step distillation uses t = 1). Returns (loss, {"loss"}).
    """
    path = make_path(path)
    x0, y = (batch[0], batch[1]) if isinstance(batch, (tuple, list)) else (batch, None)
    B = x0.shape[0]
    if t is None:
        t = sample_t(B, t_sampling, loc, scale, path.t_range, generator, x0.device)
    t = t.to(device=x0.device, dtype=torch.float32)
    if noise is None:
        noise = randn_like(x0, generator)
    x_t, u_t = path.sample(x0, noise, t)

    K = num_classes if num_classes is not None else getattr(getattr(model, "config", None), "num_classes", None)
    pred = call_with_labels(model, x_t, time_scale * t, y, K, p_uncond, generator)
    loss = ((pred.float() - u_t.float()) ** 2).mean()
    return loss, {"loss": float(loss.detach())}


__all__ = ["T_SAMPLINGS", "sample_t", "flow_loss"]
