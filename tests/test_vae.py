"""VAE maths: closed-form KL, reparameterisation, likelihoods, ELBO/IWAE bounds on a model with a known p(x)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn as nn

from ldmcourse.autoencoders.vae import (
    VAE, ConvVAE, MLPVAE, VAEConfig, elbo, interpolate, iwae_nll, kl_standard_normal, kl_weight, log_likelihood,
    log_normal, reparameterize, vae_loss,
)
from ldmcourse.train import FitConfig, fit


def test_kl_closed_form_matches_monte_carlo():
    g = torch.Generator().manual_seed(0)
    mu = torch.tensor([[0.5, -1.0, 0.0]])
    logvar = torch.tensor([[-1.0, 0.3, 0.0]])
    z = reparameterize(mu.expand(200_000, 3), logvar.expand(200_000, 3), g)
    mc = (log_normal(z, mu, logvar) - log_normal(z)).mean()  # E_q[log q - log p]
    closed = kl_standard_normal(mu, logvar)[0]
    # analytic value by hand: 0.5 * sum(mu^2 + e^lv - 1 - lv)
    by_hand = 0.5 * sum(m * m + math.exp(v) - 1 - v for m, v in zip(mu[0].tolist(), logvar[0].tolist()))
    assert closed.item() == pytest.approx(by_hand, rel=1e-6)
    assert mc.item() == pytest.approx(closed.item(), abs=0.02)
    assert kl_standard_normal(torch.zeros(2, 5), torch.zeros(2, 5)).abs().max() == 0


def test_kl_matches_torch_distributions():
    mu, logvar = torch.randn(4, 6), torch.randn(4, 6)
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros(4, 6), torch.ones(4, 6))
    torch.testing.assert_close(kl_standard_normal(mu, logvar), torch.distributions.kl_divergence(q, p).sum(1))


def test_reparameterised_sample_mean_variance_and_gradient():
    g = torch.Generator().manual_seed(1)
    mu = torch.full((100_000, 2), 1.5, requires_grad=True)
    logvar = torch.full((100_000, 2), math.log(0.25), requires_grad=True)
    z = reparameterize(mu, logvar, g)
    assert z.mean().item() == pytest.approx(1.5, abs=0.01)
    assert z.var().item() == pytest.approx(0.25, rel=0.02)
    z.sum().backward()  # dz/dmu = 1, dz/dlogvar = 0.5 * sigma * eps = 0.5 * (z - mu)
    torch.testing.assert_close(mu.grad, torch.ones_like(mu))
    torch.testing.assert_close(logvar.grad, 0.5 * (z - mu).detach())


def test_log_likelihoods_match_torch_distributions():
    logits = torch.randn(3, 1, 4, 4)
    x = torch.randint(0, 2, (3, 1, 4, 4)).float() * 2 - 1
    ref = torch.distributions.Bernoulli(logits=logits).log_prob((x + 1) / 2).flatten(1).sum(1)
    torch.testing.assert_close(log_likelihood(logits, x, "bernoulli"), ref)
    mean, xg = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4)
    ref = torch.distributions.Normal(mean, 0.3).log_prob(xg).flatten(1).sum(1)
    torch.testing.assert_close(log_likelihood(mean, xg, "gaussian", 0.3), ref)
    torch.testing.assert_close(log_normal(xg.flatten(1)), torch.distributions.Normal(0, 1).log_prob(xg.flatten(1)).sum(1))


class LinearGaussianVAE(VAE):
    """p(z) = N(0, I), p(x|z) = N(Wz + b, s² I): log p(x) = log N(x; b, W Wᵀ + s² I) in closed form.

    The encoder is the exact posterior N(Σ Wᵀ(x - b)/s², Σ), Σ = (I + WᵀW/s²)⁻¹, optionally corrupted."""

    def __init__(self, d_side=2, latent=2, s=0.5, shift=0.0, var_scale=1.0, seed=0):
        super().__init__(VAEConfig(arch="mlp", image_size=d_side, latent_dim=latent, hidden=(4,),
                                   likelihood="gaussian", obs_std=s))
        g = torch.Generator().manual_seed(seed)
        d = d_side * d_side
        self.W = torch.randn(d, latent, generator=g, dtype=torch.float64).float()
        self.b = 0.1 * torch.randn(d, generator=g).float()
        self.s, self.shift, self.var_scale = s, shift, var_scale
        self.Sigma = torch.linalg.inv(torch.eye(latent) + self.W.T @ self.W / s ** 2)
        self.decoder = nn.Sequential(nn.Linear(latent, d), nn.Unflatten(1, (1, d_side, d_side)))
        with torch.no_grad():
            self.decoder[0].weight.copy_(self.W)
            self.decoder[0].bias.copy_(self.b)

    def encode(self, x):
        r = x.flatten(1) - self.b
        mu = r @ self.W @ self.Sigma / self.s ** 2 + self.shift  # Σ symmetric
        logvar = torch.log(torch.diagonal(self.Sigma) * self.var_scale).expand_as(mu)
        return mu, logvar

    def log_px(self, x):
        cov = self.W @ self.W.T + self.s ** 2 * torch.eye(self.W.shape[0])
        return torch.distributions.MultivariateNormal(self.b, cov).log_prob(x.flatten(1))


def test_exact_posterior_makes_elbo_and_iwae_exact():
    # with latent_dim=1 the exact posterior is a 1-D Gaussian, which the diagonal encoder represents exactly
    m = LinearGaussianVAE(latent=1).eval()
    x = torch.randn(8, 1, 2, 2)
    g = torch.Generator().manual_seed(0)
    exact = -m.log_px(x)
    # every importance weight p(x, z)/q(z|x) equals p(x): IWAE is exact for any k, sample by sample
    torch.testing.assert_close(iwae_nll(m, x, k=50, generator=g, chunk=7), exact, atol=1e-4, rtol=1e-4)
    # the ELBO (one-sample recon + closed-form KL) is exact in expectation
    neg_elbo = -elbo(m, x.repeat(20_000, 1, 1, 1), g).elbo.view(20_000, 8).mean(0)
    torch.testing.assert_close(neg_elbo, exact, atol=0.03, rtol=0)


def test_iwae_bound_is_above_elbo_tightens_with_k_and_reaches_log_px():
    m = LinearGaussianVAE(latent=2, shift=0.7, var_scale=3.0).eval()  # a deliberately poor q(z|x)
    x = torch.randn(64, 1, 2, 2, generator=torch.Generator().manual_seed(3))
    exact = -m.log_px(x).mean().item()
    xr = x.repeat(500, 1, 1, 1)  # many draws, so the Monte-Carlo means below are precise
    neg_elbo = -elbo(m, xr, torch.Generator().manual_seed(0)).elbo.mean().item()
    nll_1 = iwae_nll(m, xr, k=1, generator=torch.Generator().manual_seed(2)).mean().item()
    nll = {k: iwae_nll(m, x, k=k, generator=torch.Generator().manual_seed(1), chunk=64).mean().item() for k in (10, 100, 2000)}
    assert neg_elbo > nll[10] > nll[100] > nll[2000] >= exact - 1e-3  # upper bounds on -log p(x), tightening
    assert nll_1 == pytest.approx(neg_elbo, abs=0.05)  # L_1 is the ELBO (with a Monte-Carlo KL)
    assert neg_elbo - exact > 0.5  # the poor posterior leaves a visible gap for IWAE to close ...
    assert nll[2000] - exact < 0.1 * (neg_elbo - exact)  # ... and k = 2000 closes 90% of it


@pytest.mark.parametrize("arch,size,ch", [("mlp", 28, 1), ("conv", 28, 1), ("conv", 32, 3)])
def test_shapes(arch, size, ch):
    m = VAE(VAEConfig(arch=arch, image_size=size, in_channels=ch, latent_dim=5, channels=(8, 16), hidden=(32, 16)))
    x = torch.rand(3, ch, size, size) * 2 - 1
    out, mu, logvar, z = m(x)
    assert out.shape == x.shape and mu.shape == logvar.shape == z.shape == (3, 5)
    assert m.decode(z).shape == x.shape
    s = m.sample_prior(4, torch.Generator().manual_seed(0))
    assert s.shape == (4, ch, size, size) and s.min() >= -1 and s.max() <= 1
    assert interpolate(m, x[0], x[1], steps=6).shape == (6, ch, size, size)
    assert iwae_nll(m.eval(), x, k=5, chunk=2).shape == (3,)
    assert isinstance(ConvVAE(latent_dim=3), VAE) and ConvVAE(latent_dim=3).cfg.arch == "conv"
    assert MLPVAE(ConvVAE().cfg).cfg.arch == "mlp"


def test_prior_sampling_is_reproducible_with_a_generator():
    m = ConvVAE(channels=(8, 16), latent_dim=4).eval()
    a = m.sample_prior(3, torch.Generator().manual_seed(7))
    b = m.sample_prior(3, torch.Generator().manual_seed(7))
    torch.testing.assert_close(a, b)


def test_bad_input_raises_clear_error():
    m = ConvVAE(channels=(8, 16))
    with pytest.raises(ValueError, match=r"expects images of shape \(B, 1, 28, 28\).*got \(2, 3, 28, 28\)"):
        m.encode(torch.zeros(2, 3, 28, 28))
    with pytest.raises(ValueError, match=r"size=28"):
        m.encode(torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match="likelihood"):
        VAEConfig(likelihood="poisson")
    with pytest.raises(ValueError, match="divisible"):
        VAEConfig(arch="conv", image_size=28, channels=(8, 16, 32))
    with pytest.raises(ValueError, match="k >= 1"):
        iwae_nll(m, torch.zeros(1, 1, 28, 28), k=0)


def test_kl_warmup_ramps_and_counts_only_training_steps():
    cfg = VAEConfig(beta=0.5, kl_warmup=10)
    assert [kl_weight(cfg, s) for s in (0, 4, 9, 50)] == pytest.approx([0.05, 0.25, 0.5, 0.5])
    assert kl_weight(VAEConfig(beta=4.0), 0) == 4.0
    cfg = VAEConfig(arch="mlp", hidden=(32,), latent_dim=4, kl_warmup=10)
    m, loss_fn = VAE(cfg), vae_loss(cfg)
    x = torch.rand(8, 1, 28, 28) * 2 - 1
    _, logs = loss_fn(m, (x, None), torch.Generator().manual_seed(0))
    assert logs["kl_weight"] == pytest.approx(0.1) and int(m.num_updates) == 1
    m.eval()
    loss_fn(m, (x, None), torch.Generator().manual_seed(0))
    assert int(m.num_updates) == 1


def _digits(n=512):
    from ldmcourse.data import load_dataset

    return load_dataset("mnist5k", "train", size=28, n=n)


def test_a_few_training_steps_lower_the_loss_and_raise_the_elbo():
    data = _digits()
    cfg = VAEConfig(arch="mlp", hidden=(128,), latent_dim=8, rotate_deg=5, noise_std=0.05)
    torch.manual_seed(0)
    m = VAE(cfg)
    x = data.tensors()[0][:256]
    before = elbo(m.eval(), x, torch.Generator().manual_seed(0)).elbo.mean().item()
    res = fit(m, vae_loss(cfg), data, FitConfig(steps=60, batch_size=64, lr=3e-3, warmup=5, log_every=10,
                                                ema_decay=None, progress=False))
    after = elbo(res.model.eval(), x, torch.Generator().manual_seed(0)).elbo.mean().item()
    assert res.history[-1]["loss"] < 0.9 * res.history[0]["loss"]  # logged at step 10 and 60
    assert after > before + 100  # nats per image


def test_resume_continues_the_kl_warmup_exactly(tmp_path):
    data = _digits(256)
    cfg = VAEConfig(arch="mlp", hidden=(32,), latent_dim=4, kl_warmup=20)
    # constant LR: fit's cosine depends on cfg.steps, so 6-then-resume-to-12 must not change the schedule
    fc = dict(batch_size=32, warmup=0, min_lr_ratio=1.0, log_every=5, ema_decay=None, progress=False)
    torch.manual_seed(0)
    straight = fit(VAE(cfg), vae_loss(cfg), data, FitConfig(steps=12, **fc), out_dir=tmp_path / "a").model
    torch.manual_seed(0)
    fit(VAE(cfg), vae_loss(cfg), data, FitConfig(steps=6, **fc), out_dir=tmp_path / "b")
    torch.manual_seed(0)
    resumed = fit(VAE(cfg), vae_loss(cfg), data, FitConfig(steps=12, **fc), out_dir=tmp_path / "b", resume=True).model
    assert int(resumed.num_updates) == int(straight.num_updates) == 12
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b)


def test_cli_train_and_eval_vae(tmp_path, monkeypatch, capsys):
    from ldmcourse.cli import main

    monkeypatch.setenv("LDMCOURSE_PROFILE", "smoke")
    monkeypatch.setenv("LDMCOURSE_TRACEBACK", "1")
    out = tmp_path / "vae"

    def run(*args):
        assert main(list(args)) == 0
        return json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    main(["train", "vae", "--out", str(out), "--steps", "5", "--progress", "false", "--arch", "mlp", "--hidden", "32"])
    assert (out / "samples.png").exists() and (out / "checkpoint.pt").exists()
    res = run("eval", "--ckpt", str(out / "checkpoint.pt"), "--metric", "nll", "--n", "20", "--option", "k=7")
    assert res["k"] == 7 and res["n"] == 20 and res["pixels"] == 784 and res["nll_nats"] > 0
    res = run("eval", "--ckpt", str(out / "checkpoint.pt"), "--metric", "elbo", "--n", "20")
    assert res["neg_elbo_nats"] == pytest.approx(res["recon_nats"] + res["kl_nats"], rel=1e-5)
