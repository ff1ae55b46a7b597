"""ldmcourse.conversions: the sampling equations in (α, σ), checked on paths where α² + σ² ≠ 1 too
(VE: α = 1; rectified flow: α = 1 - t, σ = t), against brute-force Gaussian algebra."""

from __future__ import annotations

import math

import pytest
import torch

from ldmcourse import conversions as conv

G = torch.Generator().manual_seed(0)
X0, EPS = torch.randn(5, 2, 3, 3, generator=G, dtype=torch.float64), torch.randn(5, 2, 3, 3, generator=G, dtype=torch.float64)
# per-sample levels on three kinds of path: VP (α² + σ² = 1), VE (α = 1), rectified flow (α + σ = 1)
T = torch.tensor([0.05, 0.2, 0.5, 0.8, 0.95], dtype=torch.float64)
PATHS = {"vp": (torch.cos(T * math.pi / 2), torch.sin(T * math.pi / 2)), "ve": (torch.ones_like(T), 0.01 * 5000**T),
         "flow": (1 - T, T)}


def test_bcast_shapes_per_sample_scalars():
    x = torch.zeros(5, 2, 3, 3, dtype=torch.float32)
    assert conv.bcast(torch.arange(5.0, dtype=torch.float64), x).shape == (5, 1, 1, 1)
    assert conv.bcast(torch.arange(5.0), x).dtype == torch.float32
    assert conv.bcast(0.5, x) == 0.5 and conv.bcast(torch.tensor(2.0), x).ndim == 0


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("prediction", conv.PREDICTIONS)
def test_prediction_round_trips_on_every_path(path, prediction):
    a, s = PATHS[path]
    x = conv.marginal(X0, EPS, a, s)
    torch.testing.assert_close(x, a.view(-1, 1, 1, 1) * X0 + s.view(-1, 1, 1, 1) * EPS)
    pred = conv.target(prediction, X0, EPS, a, s)
    torch.testing.assert_close(conv.to_eps(pred, prediction, x, a, s), EPS)
    torch.testing.assert_close(conv.to_x0(pred, prediction, x, a, s), X0)
    with pytest.raises(ValueError, match="prediction"):
        conv.to_eps(pred, "score", x, a, s)


def test_v_is_salimans_and_hos_on_vp():
    a, s = PATHS["vp"]
    v = conv.v_from(X0, EPS, a, s)
    a4, s4 = a.view(-1, 1, 1, 1), s.view(-1, 1, 1, 1)
    torch.testing.assert_close(v, a4 * EPS - s4 * X0)
    x = conv.marginal(X0, EPS, a, s)
    torch.testing.assert_close(a4 * x - s4 * v, X0)  # x_0 = α x_t - σ v when α² + σ² = 1


def test_score_is_the_gradient_of_the_marginal_log_density():
    """Data = a point x_0: p_t(x) = N(α x_0, σ² I), ∇ log p_t = -(x - α x_0)/σ² = -ε/σ."""
    a, s = PATHS["flow"]
    x = conv.marginal(X0, EPS, a, s).requires_grad_(True)
    logp = (-(x - a.view(-1, 1, 1, 1) * X0) ** 2 / (2 * s.view(-1, 1, 1, 1) ** 2)).sum()
    (grad,) = torch.autograd.grad(logp, x)
    torch.testing.assert_close(conv.score_from_eps(EPS, s), grad)
    torch.testing.assert_close(conv.eps_from_score(grad, s), EPS)


@pytest.mark.parametrize("path", PATHS)
def test_posterior_is_gaussian_conditioning(path):
    """q(x_s | x_t, x_0) by brute force: (x_s, x_t) | x_0 is jointly Gaussian with x_t = α_{t|s} x_s + σ_{t|s} z,
    so E[x_s | x_t] = m_s + C_st/C_tt (x_t - m_t) and Var = C_ss - C_st²/C_tt, per pixel."""
    a, s = PATHS[path]
    t_idx, s_idx = torch.tensor([4, 3, 2]), torch.tensor([1, 0, 0])  # steps t -> s < t
    a_t, s_t, a_s, s_s = a[t_idx], s[t_idx], a[s_idx], s[s_idx]
    a_ts, var_ts = conv.transition(a_t, s_t, a_s, s_s)
    torch.testing.assert_close(a_ts**2 * s_s**2 + var_ts, s_t**2)  # the transition reproduces the marginal
    c_ss, c_st, c_tt = s_s**2, a_ts * s_s**2, s_t**2
    x0, xt = X0[:3], conv.marginal(X0[:3], EPS[:3], a_t, s_t)
    b = lambda v: v.view(-1, 1, 1, 1)  # noqa: E731
    mean = b(a_s) * x0 + b(c_st / c_tt) * (xt - b(a_t) * x0)
    torch.testing.assert_close(conv.posterior_mean(x0, xt, a_t, s_t, a_s, s_s), mean)
    torch.testing.assert_close(conv.posterior_variance(a_t, s_t, a_s, s_s), c_ss - c_st**2 / c_tt)
    # to clean data (σ_s = 0): the posterior is x_0 itself
    torch.testing.assert_close(conv.posterior_mean(x0, xt, a_t, s_t, torch.ones(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)), x0)


def test_ddpm_posterior_is_ho_eq_7():
    """On a DDPM schedule the general posterior is Ho et al.'s eq. 7 with β_t = 1 - ᾱ_t/ᾱ_{t-1}."""
    ac_t, ac_s = 0.3, 0.34
    beta = 1 - ac_t / ac_s
    args = (math.sqrt(ac_t), math.sqrt(1 - ac_t), math.sqrt(ac_s), math.sqrt(1 - ac_s))
    assert conv.transition(*args)[1] == pytest.approx(beta, rel=1e-12)
    assert conv.posterior_variance(*args) == pytest.approx((1 - ac_s) / (1 - ac_t) * beta, rel=1e-12)
    c0, cx = conv.posterior_coefficients(*args)
    assert c0 == pytest.approx(math.sqrt(ac_s) * beta / (1 - ac_t), rel=1e-12)
    assert cx == pytest.approx(math.sqrt(1 - beta) * (1 - ac_s) / (1 - ac_t), rel=1e-12)


@pytest.mark.parametrize("path", PATHS)
def test_ddim_step_at_eta_1_is_the_posterior(path):
    """DDIM with η = 1: mean α_s x̂_0 + √(σ_s² - σ_η²) ε̂ equals μ̃(x̂_0, x_t), and σ_η² equals β̃ (DDIM eq. 16)."""
    a, s = PATHS[path]
    a_t, s_t, a_s, s_s = a[4], s[4], a[2], s[2]
    x = conv.marginal(X0, EPS, a_t, s_t)
    std = conv.ddim_noise_std(1.0, a_t, s_t, a_s, s_s)
    torch.testing.assert_close(std**2, conv.posterior_variance(a_t, s_t, a_s, s_s))
    torch.testing.assert_close(conv.ddim_step(X0, EPS, a_s, s_s, std), conv.posterior_mean(X0, x, a_t, s_t, a_s, s_s))
    # η = 0: the deterministic step lands on the marginal with the same ε
    torch.testing.assert_close(conv.ddim_step(X0, EPS, a_s, s_s), conv.marginal(X0, EPS, a_s, s_s))
    z = torch.randn(X0.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.testing.assert_close(conv.ddim_step(X0, EPS, a_s, s_s, std, z) - conv.ddim_step(X0, EPS, a_s, s_s, std), std * z)
