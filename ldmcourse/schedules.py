"""Noise schedules as data: small pure functions that return β_t and everything derived from it.

Discrete time (DDPM, Ho et al. 2020), t = 0 … T-1 (index t stands for the paper's t+1):

    q(x_t | x_0) = N(√ᾱ_t x_0, (1 - ᾱ_t) I),   α_t = 1 - β_t,   ᾱ_t = ∏_{s<=t} α_s          (eq. 4)
    q(x_{t-1} | x_t, x_0) = N(μ̃_t, β̃_t I)                                                   (eq. 6, 7)
    μ̃_t = [√ᾱ_{t-1} β_t / (1-ᾱ_t)] x_0 + [√α_t (1-ᾱ_{t-1}) / (1-ᾱ_t)] x_t,  β̃_t = (1-ᾱ_{t-1})/(1-ᾱ_t) β_t

A :class:`Schedule` is passed *into* losses and samplers; nothing builds its own. Tensors are
float64 on the CPU (exact enough for the 1e-4-sized β's); :meth:`Schedule.at` gathers values for a
batch of timesteps and broadcasts them to an (B, C, H, W) tensor on its device and dtype.

Continuous time (Song et al. 2021), t ∈ [0, 1]: :func:`vp_marginal` and :func:`ve_sigma` give the
marginal mean coefficient and standard deviation of the VP and VE SDEs; :func:`karras_sigmas` the
EDM noise levels.

Where the seed posts go wrong (taught in notebook 04): their "quadratic" schedule squares
``linspace(1e-4, 0.02)`` (β ≤ 4e-4: almost no noise is ever added) instead of squaring a linspace of
√β; their "cosine" comparison curve ``0.008·(1 - cos(tπ/2))`` is not Nichol & Dhariwal's schedule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .conversions import posterior_coefficients, posterior_variance

SCHEDULES = ("linear", "cosine", "quadratic", "sigmoid")


@dataclass(frozen=True)
class Schedule:
    """β_t and the quantities derived from it; every tensor has shape (T,) and dtype float64."""

    name: str
    betas: torch.Tensor
    alphas: torch.Tensor  # α_t = 1 - β_t
    alphas_cumprod: torch.Tensor  # ᾱ_t
    alphas_cumprod_prev: torch.Tensor  # ᾱ_{t-1}, with ᾱ_{-1} = 1
    sqrt_alphas_cumprod: torch.Tensor  # √ᾱ_t: signal scale
    sqrt_one_minus_alphas_cumprod: torch.Tensor  # √(1-ᾱ_t): noise level
    snr: torch.Tensor  # ᾱ_t / (1-ᾱ_t)
    log_snr: torch.Tensor  # λ_t = log SNR_t
    posterior_variance: torch.Tensor  # β̃_t (eq. 7); β̃_0 = 0
    posterior_log_variance_clipped: torch.Tensor  # log β̃_t with β̃_0 replaced by β̃_1 (finite)
    posterior_mean_coef1: torch.Tensor  # coefficient of x_0 in μ̃_t
    posterior_mean_coef2: torch.Tensor  # coefficient of x_t in μ̃_t

    @property
    def T(self) -> int:
        return len(self.betas)

    def at(self, name: str, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``getattr(self, name)[t]`` for a (B,) LongTensor ``t``, shaped (B, 1, 1, ...) like ``like``."""
        values = getattr(self, name)[t.detach().cpu().long()]
        return values.to(device=like.device, dtype=like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


def betas_for(name: str, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """β_1 … β_T (float64) for schedule ``name``.

    - ``linear`` (Ho et al.): linspace(β_start, β_end), rescaled by 1000/T so the curve keeps its
      shape for other T (as improved-diffusion does; identical at T=1000).
    - ``cosine`` (Nichol & Dhariwal 2021, eq. 17): ᾱ(t) = f(t)/f(0), f(t) = cos²((t/T + s)/(1 + s)·π/2),
      s = 0.008; β_t = 1 - ᾱ_t/ᾱ_{t-1} clipped to 0.999 to avoid a singularity at t = T.
    - ``quadratic`` (latent-diffusion's "scaled linear"): linspace(√β_start, √β_end)².
    - ``sigmoid`` (GeoDiff; diffusers' "sigmoid"): sigmoid(linspace(-6, 6)) rescaled to [β_start, β_end].
    """
    if T < 2:
        raise ValueError(f"T={T}: need at least 2 timesteps")
    if name == "linear":
        scale = 1000 / T
        return torch.linspace(scale * beta_start, scale * beta_end, T, dtype=torch.float64)
    if name == "cosine":
        s = 0.008
        steps = torch.arange(T + 1, dtype=torch.float64) / T
        f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        alpha_bar = f / f[0]
        return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=0.999)
    if name == "quadratic":
        return torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float64) ** 2
    if name == "sigmoid":
        return torch.sigmoid(torch.linspace(-6, 6, T, dtype=torch.float64)) * (beta_end - beta_start) + beta_start
    raise ValueError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")


def schedule_from_betas(betas: torch.Tensor, name: str = "custom") -> Schedule:
    """Derive every quantity of :class:`Schedule` from β (any 1-D tensor with 0 < β < 1)."""
    betas = betas.detach().to(torch.float64).cpu()
    if betas.ndim != 1 or not bool(((betas > 0) & (betas < 1)).all()):
        raise ValueError("betas must be a 1-D tensor with every value in (0, 1)")
    alphas = 1.0 - betas
    ac = torch.cumprod(alphas, 0)
    ac_prev = torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
    a, s, a_prev, s_prev = ac.sqrt(), (1.0 - ac).sqrt(), ac_prev.sqrt(), (1.0 - ac_prev).sqrt()
    post_var = posterior_variance(a, s, a_prev, s_prev)  # β̃_t for the step t -> t-1
    coef_x0, coef_xt = posterior_coefficients(a, s, a_prev, s_prev)
    return Schedule(
        name=name,
        betas=betas,
        alphas=alphas,
        alphas_cumprod=ac,
        alphas_cumprod_prev=ac_prev,
        sqrt_alphas_cumprod=ac.sqrt(),
        sqrt_one_minus_alphas_cumprod=(1.0 - ac).sqrt(),
        snr=ac / (1.0 - ac),
        log_snr=torch.log(ac) - torch.log1p(-ac),
        posterior_variance=post_var,
        posterior_log_variance_clipped=torch.log(torch.cat([post_var[1:2], post_var[1:]])),
        posterior_mean_coef1=coef_x0,
        posterior_mean_coef2=coef_xt,
    )


def make_schedule(name: str, T: int = 1000, **kwargs) -> Schedule:
    """The schedule called ``name`` with ``T`` steps (see :func:`betas_for` for the definitions)."""
    return schedule_from_betas(betas_for(name, T, **kwargs), name=name)


SPACINGS = ("leading", "trailing", "linspace")


def make_timesteps(T: int, steps: int, spacing: str = "leading") -> torch.Tensor:
    """A descending LongTensor of ``steps`` training indices in [0, T) for a sampler to visit.

    Conventions of diffusers / "Common Diffusion Noise Schedules are Flawed" (Lin et al. 2024, Table 2):
    - ``leading``: 0, k, 2k, … with k = T // steps (DDIM's original choice; never visits T-1);
    - ``trailing``: round(T, T - T/steps, …) - 1 (always starts at T-1; better at few steps);
    - ``linspace``: round(linspace(0, T-1, steps)) (visits both ends).
    """
    if not 1 <= steps <= T:
        raise ValueError(f"steps={steps} must be between 1 and T={T}")
    if spacing == "leading":
        ts = torch.arange(steps, dtype=torch.float64) * (T // steps)
    elif spacing == "trailing":
        ts = torch.round(torch.arange(T, 0, -T / steps, dtype=torch.float64)) - 1
        ts = ts.flip(0)
    elif spacing == "linspace":
        ts = torch.round(torch.linspace(0, T - 1, steps, dtype=torch.float64))
    else:
        raise ValueError(f"unknown spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")
    return ts.long().flip(0)


# ----------------------------------------------------------------------------------------------
# continuous time
# ----------------------------------------------------------------------------------------------

def vp_marginal(t: torch.Tensor, beta_min: float = 0.1, beta_max: float = 20.0) -> tuple[torch.Tensor, torch.Tensor]:
    """VP SDE dx = -½β(t)x dt + √β(t) dw with β(t) = β_min + t(β_max - β_min), t ∈ [0, 1].

    Returns (mean coefficient, std) of p_t(x | x_0) = N(m(t) x_0, s(t)² I), with
    log m(t) = -¼t²(β_max - β_min) - ½tβ_min and s(t)² = 1 - m(t)² (Song et al. 2021, eq. 29).
    The discrete DDPM linear schedule is its Euler discretisation with β_i = β(t)/T.
    """
    log_mean = -0.25 * t**2 * (beta_max - beta_min) - 0.5 * t * beta_min
    return torch.exp(log_mean), torch.sqrt(-torch.expm1(2.0 * log_mean))


def ve_sigma(t: torch.Tensor, sigma_min: float = 0.01, sigma_max: float = 50.0) -> torch.Tensor:
    """VE SDE noise level σ(t) = σ_min (σ_max/σ_min)^t, t ∈ [0, 1] (Song et al. 2021, eq. 30)."""
    return sigma_min * (sigma_max / sigma_min) ** t


def karras_sigmas(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> torch.Tensor:
    """EDM noise levels (Karras et al. 2022, eq. 5), descending, length n (no trailing zero)."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    inv_rho_min, inv_rho_max = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (inv_rho_max + ramp * (inv_rho_min - inv_rho_max)) ** rho


def sigmas_from_schedule(schedule: Schedule) -> torch.Tensor:
    """σ_t = √((1-ᾱ_t)/ᾱ_t): the VE-equivalent noise level of each discrete step (x/√ᾱ = x_0 + σε)."""
    return ((1 - schedule.alphas_cumprod) / schedule.alphas_cumprod).sqrt()


__all__ = ["SCHEDULES", "SPACINGS", "make_timesteps", "Schedule", "betas_for", "schedule_from_betas", "make_schedule", "vp_marginal",
           "ve_sigma", "karras_sigmas", "sigmas_from_schedule"]
