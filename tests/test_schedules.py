"""Schedules: shape of ᾱ for every schedule, parity with diffusers, derived quantities, timesteps, continuous time."""

import math

import pytest
import torch

from ldmcourse.schedules import (SCHEDULES, betas_for, karras_sigmas, make_schedule, make_timesteps, schedule_from_betas,
                                 sigmas_from_schedule, ve_sigma, vp_marginal)


@pytest.mark.parametrize("name", SCHEDULES)
def test_alpha_bar_monotone_from_one_to_zero(name):
    s = make_schedule(name, 1000)
    ac = s.alphas_cumprod
    assert s.T == 1000 and ac.dtype == torch.float64
    assert bool((ac[1:] < ac[:-1]).all())  # strictly decreasing
    assert ac[0] > 0.99 and ac[-1] < 0.01  # starts near 1 (data), ends near 0 (noise)
    assert bool((s.log_snr[1:] < s.log_snr[:-1]).all())


@pytest.mark.parametrize("name,diffusers_name", [("linear", "linear"), ("cosine", "squaredcos_cap_v2"),
                                                 ("quadratic", "scaled_linear"), ("sigmoid", "sigmoid")])
def test_betas_match_diffusers(name, diffusers_name):
    DDPMScheduler = pytest.importorskip("diffusers").DDPMScheduler

    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule=diffusers_name, beta_start=1e-4, beta_end=0.02)
    torch.testing.assert_close(betas_for(name, 1000).float(), ref.betas, atol=1e-8, rtol=1e-5)
    torch.testing.assert_close(make_schedule(name).alphas_cumprod.float(), ref.alphas_cumprod, atol=1e-6, rtol=1e-4)


def test_derived_quantities():
    s = make_schedule("cosine", 50)
    torch.testing.assert_close(s.alphas_cumprod, torch.cumprod(1 - s.betas, 0))
    torch.testing.assert_close(s.snr, s.alphas_cumprod / (1 - s.alphas_cumprod))
    # β̃_t = (1-ᾱ_{t-1})/(1-ᾱ_t) β_t, β̃_0 = 0; the clipped log replaces index 0 by index 1
    t = 10
    assert math.isclose(float(s.posterior_variance[t]), (1 - float(s.alphas_cumprod[t - 1])) / (1 - float(s.alphas_cumprod[t])) * float(s.betas[t]))
    assert float(s.posterior_variance[0]) == 0.0 and math.isclose(float(s.posterior_log_variance_clipped[0]), math.log(float(s.posterior_variance[1])))
    # posterior mean of q(x_{t-1}|x_t,x_0) for x_0 = x_t = 1 equals coef1 + coef2 and is the Gaussian conditional
    ac, acp, a = (float(v[t]) for v in (s.alphas_cumprod, s.alphas_cumprod_prev, s.alphas))
    # joint of (x_{t-1}, x_t) given x_0: cov(x_{t-1}, x_t) = √α_t (1-ᾱ_{t-1}); E[x_{t-1}|x_t,x_0]
    x0, xt = 0.3, -0.7
    mean = math.sqrt(acp) * x0 + math.sqrt(a) * (1 - acp) / (1 - ac) * (xt - math.sqrt(ac) * x0)
    assert math.isclose(float(s.posterior_mean_coef1[t]) * x0 + float(s.posterior_mean_coef2[t]) * xt, mean, rel_tol=1e-9)
    with pytest.raises(ValueError, match="unknown schedule"):
        make_schedule("cosinus")
    with pytest.raises(ValueError, match="in \\(0, 1\\)"):
        schedule_from_betas(torch.tensor([0.1, 1.5]))


@pytest.mark.parametrize("name,diffusers_name", [("linear", "linear"), ("cosine", "squaredcos_cap_v2")])
def test_posterior_matches_diffusers(name, diffusers_name):
    """β̃_t and the posterior mean of q(x_{t-1} | x_t, x_0) against diffusers' DDPMScheduler (its "fixed_small"
    variance and the μ̃ of its step with the model's x̂_0 given): an implementation we did not write."""
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=diffusers_name, variance_type="fixed_small",
                                  clip_sample=False, prediction_type="sample")
    s = make_schedule(name, 1000)
    ts = [1, 2, 10, 100, 500, 998, 999]
    torch.testing.assert_close(s.posterior_variance[ts].float(), torch.stack([ref._get_variance(t) for t in ts]),
                               rtol=1e-3, atol=1e-12)  # diffusers computes in float32
    g = torch.Generator().manual_seed(0)
    x0, xt = torch.randn(2, 1, 3, 3, generator=g), torch.randn(2, 1, 3, 3, generator=g)
    ref.set_timesteps(1000)
    for t in (1, 300, 999):
        # diffusers adds σ z for t > 0: with its variance replaced by 0 its step returns μ̃
        ref._get_variance = lambda *a, **k: torch.tensor(0.0)
        mean = ref.step(x0, t, xt).prev_sample
        ours = s.posterior_mean_coef1[t].float() * x0 + s.posterior_mean_coef2[t].float() * xt
        torch.testing.assert_close(ours, mean, rtol=1e-3, atol=1e-3)  # diffusers re-derives β_t from float32 ᾱ


def test_karras_sigmas_match_diffusers():
    """EDM's σ_i = (σ_max^{1/ρ} + i/(n-1) (σ_min^{1/ρ} - σ_max^{1/ρ}))^ρ against diffusers' _convert_to_karras."""
    diffusers = pytest.importorskip("diffusers")
    sch = diffusers.EulerDiscreteScheduler(num_train_timesteps=1000)
    in_sigmas = torch.tensor([80.0, 1.0, 0.002])
    for n in (2, 10, 37):
        ref = torch.as_tensor(sch._convert_to_karras(in_sigmas=in_sigmas, num_inference_steps=n), dtype=torch.float64)
        torch.testing.assert_close(karras_sigmas(n, 0.002, 80.0), ref, rtol=1e-5, atol=1e-8)
    k = karras_sigmas(10)
    assert bool((k[1:] < k[:-1]).all())  # strictly decreasing


def test_at_broadcasts_on_device_and_dtype():
    s = make_schedule("linear", 1000)
    x = torch.zeros(3, 2, 4, 4, dtype=torch.float32)
    v = s.at("sqrt_alphas_cumprod", torch.tensor([0, 10, 999]), x)
    assert v.shape == (3, 1, 1, 1) and v.dtype == torch.float32
    assert math.isclose(float(v[1]), float(s.sqrt_alphas_cumprod[10]), rel_tol=1e-6)


def test_seed_schedules_are_not_the_usual_ones():
    """Seed 000's quadratic squares linspace(1e-4, 0.02): β ≤ 4e-4 and ᾱ_T ≈ 0.875, almost no noise."""
    seed_quadratic = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64) ** 2
    ac = torch.cumprod(1 - seed_quadratic, 0)
    assert seed_quadratic.max() < 4.01e-4 and ac[-1] > 0.85
    assert make_schedule("quadratic").alphas_cumprod[-1] < 0.01
    # seed 001's "cosine" 0.008·(1 − cos(tπ/2)) as β: ᾱ_T ≈ 0.054 (not pure noise), and its ᾱ curve is
    # up to 0.18 away from Nichol & Dhariwal's cos²((t/T + s)/(1 + s)·π/2)
    t = torch.linspace(0, 1, 1000, dtype=torch.float64)
    seed_cos = 0.008 * (1 - torch.cos(t * math.pi / 2))
    ac_seed = torch.cumprod(1 - seed_cos, 0)
    assert ac_seed[-1] > 0.05 and make_schedule("cosine").alphas_cumprod[-1] < 1e-6
    assert (ac_seed - make_schedule("cosine").alphas_cumprod).abs().max() > 0.15


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps", [1, 7, 50, 1000])
def test_timesteps_match_diffusers(spacing, steps):
    DDIMScheduler = pytest.importorskip("diffusers").DDIMScheduler

    ref = DDIMScheduler(num_train_timesteps=1000, timestep_spacing=spacing)
    ref.set_timesteps(steps)
    ts = make_timesteps(1000, steps, spacing)
    assert ts.tolist() == ref.timesteps.tolist() and bool((ts[1:] < ts[:-1]).all())


def test_continuous_time():
    # the discrete linear schedule is the Euler discretisation of the VP SDE with β_i = β(t)/T
    s = make_schedule("linear", 1000)
    t = (torch.arange(1000, dtype=torch.float64) + 1) / 1000
    mean, std = vp_marginal(t, 0.1, 20.0)
    torch.testing.assert_close(s.sqrt_alphas_cumprod, mean, atol=0.01, rtol=0.02)
    torch.testing.assert_close(mean**2 + std**2, torch.ones_like(t))
    assert math.isclose(float(ve_sigma(torch.tensor(1.0))), 50.0, rel_tol=1e-6) and math.isclose(float(ve_sigma(torch.tensor(0.0))), 0.01, rel_tol=1e-6)
    k = karras_sigmas(10)
    assert math.isclose(float(k[0]), 80.0, rel_tol=1e-9) and math.isclose(float(k[-1]), 0.002, rel_tol=1e-9)
    torch.testing.assert_close(sigmas_from_schedule(s), ((1 - s.alphas_cumprod) / s.alphas_cumprod).sqrt())
