"""SDEs (VP, sub-VP, VE, discrete VP), score <-> ε, the analytic mixture, and the ODE likelihood."""

from __future__ import annotations

import math

import pytest
import torch

from ldmcourse.analytic import GaussianMixture, image_mixture, ring_mixture
from ldmcourse.likelihood import ode_likelihood
from ldmcourse.schedules import make_schedule
from ldmcourse.sde import SDES, DiscreteVP, SubVPSDE, VESDE, VPSDE, as_process, eps_from_score, score_from_eps

PROCESSES = [VPSDE(), SubVPSDE(), VESDE()]


@pytest.mark.parametrize("sde", PROCESSES, ids=repr)
def test_marginal_solves_the_sde_moment_equations(sde):
    """d log α/dt = f and dσ²/dt = 2fσ² + g² (the mean/variance ODEs of a linear SDE), by finite differences."""
    t = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    h = 1e-6
    (a1, s1), (a0, s0) = sde.marginal(t + h), sde.marginal(t - h)
    f, g2 = sde.f_g2(t)
    a, s = sde.marginal(t)
    torch.testing.assert_close((torch.log(a1) - torch.log(a0)) / (2 * h), f, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close((s1**2 - s0**2) / (2 * h), 2 * f * s**2 + g2, rtol=1e-5, atol=1e-5)


def test_vp_sde_is_the_limit_of_the_ddpm_linear_schedule():
    """β_i = β(t_i)/T: ᾱ_i of the discrete chain ≈ α(t)² of the VP SDE at t = (i+1)/T."""
    sch = make_schedule("linear", 1000)
    t = (torch.arange(1000, dtype=torch.float64) + 1) / 1000
    a, _ = VPSDE().marginal(t)
    torch.testing.assert_close(a**2, sch.alphas_cumprod, rtol=0, atol=2e-3)


def test_subvp_variance_is_below_vp():
    t = torch.linspace(0.01, 1, 50, dtype=torch.float64)
    assert bool((SubVPSDE().marginal(t)[1] ** 2 <= VPSDE().marginal(t)[1] ** 2 + 1e-12).all())


@pytest.mark.parametrize("sde", PROCESSES, ids=repr)
def test_time_of_sigmabar_inverts(sde):
    t = torch.tensor([0.01, 0.3, 0.7, 1.0], dtype=torch.float64)
    a, s = sde.marginal(t)
    torch.testing.assert_close(sde.time_of_sigmabar(s / a), t, rtol=1e-7, atol=1e-7)


def test_discrete_vp_interpolates_and_inverts():
    sch = make_schedule("cosine", 1000)
    p = DiscreteVP(sch)
    torch.testing.assert_close(p.alpha_bar(torch.arange(1000)), sch.alphas_cumprod, rtol=1e-12, atol=0)
    assert float(p.alpha_bar(-1)) == 1.0
    u = torch.tensor([0.0, 3.5, 500.25, 998.0], dtype=torch.float64)
    a, s = p.marginal(u)
    torch.testing.assert_close(p.time_of_sigmabar(s / a), u, rtol=0, atol=1e-6)
    F, G = p.increments(500, 499)  # one DDPM step: ∫f = ½ log(1-β), ∫g² = β
    assert F == pytest.approx(0.5 * math.log(1 - sch.betas[500].item()), rel=1e-9)
    assert G == pytest.approx(sch.betas[500].item(), rel=1e-9)


def test_prior_sampling_and_logp():
    g = torch.Generator().manual_seed(0)
    for sde, std in ((VPSDE(), 1.0), (VESDE(sigma_max=50.0), 50.0)):
        x = sde.prior_sampling((4000, 3), generator=g, dtype=torch.float64)
        assert abs(float(x.std()) - std) < 0.03 * std
        ref = torch.distributions.Normal(0.0, sde.prior_std()).log_prob(x[:5]).sum(1)
        torch.testing.assert_close(sde.prior_logp(x[:5]), ref)


def test_as_process_errors():
    with pytest.raises(TypeError, match="Schedule"):
        as_process("linear")
    assert set(SDES) == {"vp", "subvp", "ve"}


def test_score_eps_roundtrip_and_analytic_score_is_grad_log_p():
    mix = image_mixture((1, 2, 2), k=3, std=0.3)
    x = torch.randn(5, 1, 2, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64).requires_grad_(True)
    alpha, sigma = 0.6, 0.8
    grad = torch.autograd.grad(mix.log_prob(x, alpha, sigma).sum(), x)[0]
    torch.testing.assert_close(mix.score(x.detach(), alpha, sigma), grad)
    eps = mix.eps(x.detach(), alpha, sigma)
    torch.testing.assert_close(eps_from_score(grad, sigma), eps)
    torch.testing.assert_close(score_from_eps(eps, sigma), grad)


def test_analytic_eps_is_the_posterior_mean_of_the_noise():
    """ε*(x_t) = E[ε | x_t]: regress ε on x_t by Monte Carlo in 1-D around a point."""
    mix = GaussianMixture(torch.tensor([[-1.0], [1.0]]), torch.tensor([0.2, 0.2]))
    g = torch.Generator().manual_seed(0)
    x0 = mix.sample(400_000, g, dtype=torch.float64)
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    alpha, sigma = 0.8, 0.6
    xt = alpha * x0 + sigma * eps
    for c in (-0.5, 0.1, 0.9):
        sel = (xt - c).abs() < 0.01
        assert float(eps[sel].mean()) == pytest.approx(float(mix.eps(torch.tensor([[c]], dtype=torch.float64), alpha, sigma)), abs=0.03)


def test_moments_of_mixture():
    mix = ring_mixture(8, 1.0, 0.1)
    mean, cov = mix.moments()
    x = mix.sample(100_000, torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(x.mean(0), mean, atol=0.01, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), cov, atol=0.01, rtol=0)


@pytest.mark.parametrize("process", [VPSDE(), make_schedule("linear", 1000)], ids=["vp", "discrete"])
def test_ode_likelihood_matches_exact_density(process):
    """With the exact ε*, the flow's log-likelihood is the true log density p̄_{σ̄_min}(x) (up to Heun's
    O(h²) and the prior's tiny mismatch); Hutchinson's estimate is unbiased around it."""
    mix = image_mixture((1, 2, 2), k=3, std=0.3)
    x = mix.sample(6, torch.Generator().manual_seed(0), dtype=torch.float64)
    p = as_process(process)
    a, s = (float(v) for v in p.marginal(p.t_min))
    true = mix.log_prob(x, 1.0, s / a)
    exact = ode_likelihood(mix.eps_model(process), x, process, steps=200, exact=True)
    assert float((exact["logp"] - true).abs().max()) < 0.03
    assert exact["nfe"] == 399
    hutch = ode_likelihood(mix.eps_model(process), x.repeat(50, 1, 1, 1), process, steps=100, n_probes=1,
                           generator=torch.Generator().manual_seed(0))
    assert float(hutch["logp"].mean() - true.repeat(50).mean()) == pytest.approx(0.0, abs=0.15)
    bpd = -true / (4 * math.log(2)) + math.log2(255 / 2)
    torch.testing.assert_close(exact["bpd"], bpd, atol=0.03 / (4 * math.log(2)), rtol=0)


# ------------------------------------------------------------------------------------------------
# the continuous-time ELBO (ldmcourse.likelihood.continuous_vlb_bpd)
# ------------------------------------------------------------------------------------------------

def test_continuous_vlb_is_exact_for_a_biased_model_of_a_point_mass():
    """Data = one point c, model = its exact ε* plus a constant bias b: ε - ε̂ = -b for every draw, so
    L_∞ = (λ_max - λ_min)·‖b‖² exactly, with no Monte Carlo error."""
    from ldmcourse.likelihood import continuous_vlb_bpd
    from ldmcourse.schedules import make_schedule
    from ldmcourse.sde import as_process

    sch = make_schedule("cosine", 1000)
    proc = as_process(sch)
    c = torch.linspace(-0.5, 0.5, 16, dtype=torch.float64).view(1, 1, 4, 4)
    b = 0.03

    def eps_model(x, t):
        a, s = proc.marginal(t.double())
        a, s = a.view(-1, 1, 1, 1), s.view(-1, 1, 1, 1)
        return (x.double() - a * c) / s + b

    out = continuous_vlb_bpd(eps_model, c.repeat(3, 1, 1, 1), sch, n_t=16, generator=torch.Generator().manual_seed(0))
    lam = proc.lambda_(torch.tensor([999.0, 0.0], dtype=torch.float64))
    want = float(lam[1] - lam[0]) * 16 * b**2 / (16 * math.log(2))
    assert out["diffusion_bpd"] == pytest.approx(want, rel=1e-4)
    assert out["diffusion_bpd_se"] == pytest.approx(0.0, abs=1e-6)
    assert out["bpd"] == pytest.approx(out["prior_bpd"] + out["diffusion_bpd"] + out["decoder_bpd"])


@pytest.mark.timeout(300)
def test_continuous_vlb_is_the_limit_of_the_discrete_sum():
    """With the exact ε* of a Gaussian mixture, the integral over λ agrees with the T-1 = 999 KL terms of
    vlb_bpd (estimated from 200 stratified indices) within the two estimates' noise, and the prior term is the same."""
    from ldmcourse.diffusion import vlb_bpd
    from ldmcourse.likelihood import continuous_vlb_bpd

    sch = make_schedule("linear", 1000)
    mix = image_mixture((1, 4, 4), k=3, std=0.3)
    x = mix.sample(48, torch.Generator().manual_seed(0)).clamp(-1, 1)
    model = mix.eps_model(sch)
    disc = vlb_bpd(model, x, sch, n_t=200, generator=torch.Generator().manual_seed(1))
    cont = continuous_vlb_bpd(model, x, sch, n_t=64, generator=torch.Generator().manual_seed(2))
    assert cont["prior_bpd"] == pytest.approx(disc["prior_bpd"], rel=1e-9)
    assert abs(cont["diffusion_bpd"] - disc["kl_bpd"]) < 4 * cont["diffusion_bpd_se"] + 0.05 * disc["kl_bpd"], (cont, disc["kl_bpd"])
    with pytest.raises(TypeError, match="Schedule"):
        continuous_vlb_bpd(model, x, VPSDE())
