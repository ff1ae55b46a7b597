"""Every sampling equation written once, in terms of the per-sample noise levels (α_t, σ_t).

Each process in the course has Gaussian marginals x_t = α_t x_0 + σ_t ε: a DDPM schedule
(α = √ᾱ, σ = √(1-ᾱ)), the VP, sub-VP and VE SDEs (:mod:`ldmcourse.sde`), and non-VP paths such as
rectified flow (α = 1 - t, σ = t). Nothing below assumes α² + σ² = 1, so all of them share it.
``alpha``/``sigma`` are Python floats, 0-d tensors or per-sample (B,) tensors; :func:`bcast` shapes
them to broadcast against x (B, C, H, W) (k-diffusion's ``append_dims``).

    x_t  = α x_0 + σ ε                                      marginal          (DDPM eq. 4)
    x̂_0  = (x_t - σ ε) / α,   ε = (x_t - α x_0) / σ        x0_from_eps / eps_from_x0 (DDPM eq. 15)
    v    = α ε - σ x_0                                      (Salimans & Ho 2022, §4; any α, σ below)
    x_0  = (α x_t - σ v)/(α² + σ²),   ε = (σ x_t + α v)/(α² + σ²)
    ∇ log p_t(x) = -ε / σ                                   score_from_eps    (Song et al. 2021)

A step t -> s (s < t, less noise): the transition q(x_t | x_s) = N(α_{t|s} x_s, σ²_{t|s} I) with
α_{t|s} = α_t/α_s and σ²_{t|s} = σ_t² - α_{t|s}² σ_s² (DDPM's β_t for s = t-1), and the posterior

    q(x_s | x_t, x_0) = N(μ̃, β̃ I),   μ̃ = (α_{t|s} σ_s²/σ_t²) x_t + (α_s σ²_{t|s}/σ_t²) x_0,
                                      β̃ = σ_s² σ²_{t|s} / σ_t²                       (DDPM eq. 6-7)

and the deterministic DDIM step x_s = α_s x̂_0 + σ_s ε̂ (DDIM eq. 12 with σ = 0), with
η-noise σ_η² = η² β̃ (DDIM eq. 16).
"""

from __future__ import annotations

import torch

PREDICTIONS = ("eps", "x0", "v")


def bcast(v, like: torch.Tensor) -> torch.Tensor | float:
    """A per-sample scalar (B,) tensor -> (B, 1, ..., 1) on like's device and dtype; floats pass through."""
    if isinstance(v, torch.Tensor):
        v = v.to(device=like.device, dtype=like.dtype)
        return v.reshape(-1, *([1] * (like.ndim - 1))) if v.ndim else v
    return float(v)


def _check(prediction: str) -> None:
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction {prediction!r}; choose one of {', '.join(PREDICTIONS)}")


# ----------------------------------------------------------------------------------------------
# the marginal and the prediction types
# ----------------------------------------------------------------------------------------------

def marginal(x0: torch.Tensor, eps: torch.Tensor, alpha, sigma) -> torch.Tensor:
    """x_t = α x_0 + σ ε."""
    return bcast(alpha, x0) * x0 + bcast(sigma, x0) * eps


def x0_from_eps(x: torch.Tensor, eps: torch.Tensor, alpha, sigma) -> torch.Tensor:
    """x̂_0 = (x_t - σ ε) / α."""
    return (x - bcast(sigma, x) * eps) / bcast(alpha, x)


def eps_from_x0(x: torch.Tensor, x0: torch.Tensor, alpha, sigma) -> torch.Tensor:
    """ε = (x_t - α x_0) / σ."""
    return (x - bcast(alpha, x) * x0) / bcast(sigma, x)


def v_from(x0: torch.Tensor, eps: torch.Tensor, alpha, sigma) -> torch.Tensor:
    """v = α ε - σ x_0."""
    return bcast(alpha, x0) * eps - bcast(sigma, x0) * x0


def score_from_eps(eps: torch.Tensor, sigma) -> torch.Tensor:
    """∇ log p_t(x) = -ε / σ."""
    return -eps / bcast(sigma, eps)


def eps_from_score(score: torch.Tensor, sigma) -> torch.Tensor:
    """ε = -σ ∇ log p_t(x)."""
    return -bcast(sigma, score) * score


def target(prediction: str, x0: torch.Tensor, eps: torch.Tensor, alpha, sigma) -> torch.Tensor:
    """What a network of type ``prediction`` (eps | x0 | v) should output for the pair (x_0, ε)."""
    _check(prediction)
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    return v_from(x0, eps, alpha, sigma)


def to_eps(pred: torch.Tensor, prediction: str, x: torch.Tensor, alpha, sigma) -> torch.Tensor:
    """The ε implied by a network output ``pred`` of type ``prediction`` at x_t."""
    _check(prediction)
    if prediction == "eps":
        return pred
    if prediction == "x0":
        return eps_from_x0(x, pred, alpha, sigma)
    a, s = bcast(alpha, x), bcast(sigma, x)
    return (s * x + a * pred) / (a**2 + s**2)


def to_x0(pred: torch.Tensor, prediction: str, x: torch.Tensor, alpha, sigma) -> torch.Tensor:
    """The x_0 implied by a network output ``pred`` of type ``prediction`` at x_t."""
    _check(prediction)
    if prediction == "x0":
        return pred
    if prediction == "eps":
        return x0_from_eps(x, pred, alpha, sigma)
    a, s = bcast(alpha, x), bcast(sigma, x)
    return (a * x - s * pred) / (a**2 + s**2)


# ----------------------------------------------------------------------------------------------
# one step t -> s
# ----------------------------------------------------------------------------------------------

def transition(alpha_t, sigma_t, alpha_s, sigma_s):
    """(α_{t|s}, σ²_{t|s}) of q(x_t | x_s): α_t/α_s and σ_t² - (α_t/α_s)² σ_s² (clamped at 0)."""
    a_ts = alpha_t / alpha_s
    var = sigma_t**2 - a_ts**2 * sigma_s**2
    return a_ts, (var.clamp(min=0.0) if isinstance(var, torch.Tensor) else max(var, 0.0))


def posterior_variance(alpha_t, sigma_t, alpha_s, sigma_s):
    """β̃ = σ_s² σ²_{t|s} / σ_t² of q(x_s | x_t, x_0); 0 at the clean point σ_s = 0."""
    return sigma_s**2 * transition(alpha_t, sigma_t, alpha_s, sigma_s)[1] / sigma_t**2


def posterior_coefficients(alpha_t, sigma_t, alpha_s, sigma_s):
    """(coefficient of x_0, coefficient of x_t) in μ̃: α_s σ²_{t|s}/σ_t² and α_{t|s} σ_s²/σ_t²."""
    a_ts, var_ts = transition(alpha_t, sigma_t, alpha_s, sigma_s)
    return alpha_s * var_ts / sigma_t**2, a_ts * sigma_s**2 / sigma_t**2


def posterior_mean(x0: torch.Tensor, x: torch.Tensor, alpha_t, sigma_t, alpha_s, sigma_s) -> torch.Tensor:
    """μ̃ of q(x_s | x_t, x_0) (DDPM eq. 7 for s = t-1; = x_0 at the clean point σ_s = 0)."""
    c_0, c_x = posterior_coefficients(alpha_t, sigma_t, alpha_s, sigma_s)
    return bcast(c_x, x) * x + bcast(c_0, x) * x0


def ddim_step(x0: torch.Tensor, eps: torch.Tensor, alpha_s, sigma_s, noise_std=0.0,
              noise: torch.Tensor | None = None) -> torch.Tensor:
    """x_s = α_s x̂_0 + √(σ_s² - σ_η²) ε̂ + σ_η z (DDIM eq. 12); ``noise_std`` σ_η, ``noise`` z."""
    if isinstance(noise_std, torch.Tensor) or noise_std:
        direction = (sigma_s**2 - noise_std**2)
        direction = direction.clamp(min=0.0).sqrt() if isinstance(direction, torch.Tensor) else max(direction, 0.0) ** 0.5
        out = bcast(alpha_s, x0) * x0 + bcast(direction, x0) * eps
        return out + bcast(noise_std, x0) * noise if noise is not None else out
    return bcast(alpha_s, x0) * x0 + bcast(sigma_s, x0) * eps


def ddim_noise_std(eta: float, alpha_t, sigma_t, alpha_s, sigma_s):
    """σ_η = η √β̃ (DDIM eq. 16): η = 0 deterministic, η = 1 DDPM's posterior variance."""
    var = eta**2 * posterior_variance(alpha_t, sigma_t, alpha_s, sigma_s)
    return var.sqrt() if isinstance(var, torch.Tensor) else var**0.5


# ----------------------------------------------------------------------------------------------
# velocity (flow matching)
# ----------------------------------------------------------------------------------------------
# For a Gaussian probability path x_t = α_t x_0 + σ_t ε (t = 0 data, t = 1 noise) the conditional velocity is
#     u_t = dx_t/dt = α'_t x_0 + σ'_t ε                                        (Lipman et al. 2023, eq. 20)
# and (x_t, u_t) is an invertible linear function of (x_0, ε) with determinant
#     D_t = α_t σ'_t - σ_t α'_t       (= 1 on the linear path α = 1 - t, σ = t; > 0 on every path that moves towards noise).
# So a model of one of u, ε, x_0 or the score ∇log p_t = -ε/σ is a model of all of them:
#     u = (α'/α) x + (σ' - α' σ/α) ε          ε = (α u - α' x) / D          x_0 = (σ' x - σ u) / D
# All arguments broadcast against x: scalars, or per-sample tensors (B,) (shaped by :func:`bcast`).
# These names carry `velocity` so they sit beside the ε / x_0 / v(-prediction) conversions above without
# clashing: the flow velocity u = dx_t/dt is not the v-prediction α ε - σ x_0; on a VP path (α² + σ² = 1,
# so α α' = -σ σ') the two are proportional, u = (σ'/α) v.


def eps_to_velocity(eps, x, alpha, sigma, d_alpha, d_sigma):
    """u = α' x̂_0 + σ' ε with x̂_0 = (x - σ ε)/α, i.e. (α'/α) x + (σ' - α' σ/α) ε. Needs α > 0."""
    a, s, da, ds = (bcast(c, x) for c in (alpha, sigma, d_alpha, d_sigma))
    return (da / a) * x + (ds - da * s / a) * eps


def x0_to_velocity(x0, x, alpha, sigma, d_alpha, d_sigma):
    """u = α' x_0 + σ' ε̂ with ε̂ = (x - α x_0)/σ, i.e. (σ'/σ) x + (α' - σ' α/σ) x_0. Needs σ > 0."""
    a, s, da, ds = (bcast(c, x) for c in (alpha, sigma, d_alpha, d_sigma))
    return (ds / s) * x + (da - ds * a / s) * x0


def velocity_to_eps(v, x, alpha, sigma, d_alpha, d_sigma):
    """ε = (α v - α' x) / (α σ' - σ α'). On the linear path: ε = x + (1 - t) v."""
    a, s, da, ds = (bcast(c, x) for c in (alpha, sigma, d_alpha, d_sigma))
    return (a * v - da * x) / (a * ds - s * da)


def velocity_to_x0(v, x, alpha, sigma, d_alpha, d_sigma):
    """x_0 = (σ' x - σ v) / (α σ' - σ α'). On the linear path: x_0 = x - t v."""
    a, s, da, ds = (bcast(c, x) for c in (alpha, sigma, d_alpha, d_sigma))
    return (ds * x - s * v) / (a * ds - s * da)


def velocity_to_score(v, x, alpha, sigma, d_alpha, d_sigma):
    """∇ log p_t(x) = -ε/σ with ε from :func:`velocity_to_eps`. Needs σ > 0."""
    return -velocity_to_eps(v, x, alpha, sigma, d_alpha, d_sigma) / bcast(sigma, x)


def score_to_velocity(score, x, alpha, sigma, d_alpha, d_sigma):
    """The inverse of :func:`velocity_to_score`: ε = -σ s, then :func:`eps_to_velocity`."""
    return eps_to_velocity(-bcast(sigma, x) * score, x, alpha, sigma, d_alpha, d_sigma)


__all__ = ["PREDICTIONS", "bcast", "marginal", "x0_from_eps", "eps_from_x0", "v_from", "score_from_eps", "eps_from_score",
           "target", "to_eps", "to_x0", "transition", "posterior_variance", "posterior_coefficients", "posterior_mean", "ddim_step", "ddim_noise_std",
           "eps_to_velocity", "x0_to_velocity", "velocity_to_eps", "velocity_to_x0", "velocity_to_score", "score_to_velocity"]
