# --- velocity (flow matching) ---
# For a Gaussian probability path x_t = α_t x_0 + σ_t ε (t = 0 data, t = 1 noise) the conditional velocity is
#     u_t = dx_t/dt = α'_t x_0 + σ'_t ε                                        (Lipman et al. 2023, eq. 20)
# and (x_t, u_t) is an invertible linear function of (x_0, ε) with determinant
#     D_t = α_t σ'_t - σ_t α'_t       (= 1 on the linear path α = 1 - t, σ = t; > 0 on every path that moves towards noise).
# So a model of one of v, ε, x_0 or the score ∇log p_t = -ε/σ is a model of all of them:
#     v = (α'/α) x + (σ' - α' σ/α) ε          ε = (α v - α' x) / D          x_0 = (σ' x - σ v) / D
# All arguments broadcast against x: scalars, or per-sample tensors (B,) (trailing dims are appended).
# These names carry the `velocity` in them so they sit beside the ε / x_0 / v(-prediction) conversions
# without clashing. (No `from __future__` import here: this section may be appended to that module.)
import torch

from .utils import append_dims


def _bv(c, x: torch.Tensor):
    """A coefficient (float, or tensor (B,) / broadcastable) shaped to broadcast against x, in x's dtype."""
    if not isinstance(c, torch.Tensor):
        return c
    c = c.to(device=x.device, dtype=x.dtype)
    return append_dims(c, x.ndim) if c.ndim == 1 and x.ndim > 1 else c


def eps_to_velocity(eps, x, alpha, sigma, d_alpha, d_sigma):
    """u = α' x̂_0 + σ' ε with x̂_0 = (x - σ ε)/α, i.e. (α'/α) x + (σ' - α' σ/α) ε. Needs α > 0."""
    a, s, da, ds = (_bv(c, x) for c in (alpha, sigma, d_alpha, d_sigma))
    return (da / a) * x + (ds - da * s / a) * eps


def x0_to_velocity(x0, x, alpha, sigma, d_alpha, d_sigma):
    """u = α' x_0 + σ' ε̂ with ε̂ = (x - α x_0)/σ, i.e. (σ'/σ) x + (α' - σ' α/σ) x_0. Needs σ > 0."""
    a, s, da, ds = (_bv(c, x) for c in (alpha, sigma, d_alpha, d_sigma))
    return (ds / s) * x + (da - ds * a / s) * x0


def velocity_to_eps(v, x, alpha, sigma, d_alpha, d_sigma):
    """ε = (α v - α' x) / (α σ' - σ α'). On the linear path: ε = x + (1 - t) v."""
    a, s, da, ds = (_bv(c, x) for c in (alpha, sigma, d_alpha, d_sigma))
    return (a * v - da * x) / (a * ds - s * da)


def velocity_to_x0(v, x, alpha, sigma, d_alpha, d_sigma):
    """x_0 = (σ' x - σ v) / (α σ' - σ α'). On the linear path: x_0 = x - t v."""
    a, s, da, ds = (_bv(c, x) for c in (alpha, sigma, d_alpha, d_sigma))
    return (ds * x - s * v) / (a * ds - s * da)


def velocity_to_score(v, x, alpha, sigma, d_alpha, d_sigma):
    """∇ log p_t(x) = -ε/σ with ε from :func:`velocity_to_eps`. Needs σ > 0."""
    return -velocity_to_eps(v, x, alpha, sigma, d_alpha, d_sigma) / _bv(sigma, x)


def score_to_velocity(score, x, alpha, sigma, d_alpha, d_sigma):
    """The inverse of :func:`velocity_to_score`: ε = -σ s, then :func:`eps_to_velocity`."""
    return eps_to_velocity(-_bv(sigma, x) * score, x, alpha, sigma, d_alpha, d_sigma)
