"""NVAE: residual-normal KL, spectral estimate, shapes per scale, temperature, training aids, CLI."""

from __future__ import annotations

import json

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from ldmcourse.autoencoders.nvae import (
    NVAE, NVAEConfig, elbo, group_alphas, iwae_log_likelihood, kl_balance_coeffs, kl_coeff, log_weights,
    normal_log_prob, nvae_loss, readjust_bn, residual_normal_kl,
)
from ldmcourse.autoencoders.nvae_cells import (
    SE, Conv2d, DepthwiseSeparableConv, EncoderCell, GenerativeCell, power_iteration, spectral_norms,
)

TINY = dict(channels=8, expansion=2, latent_channels=4)


def tiny(**kw) -> NVAE:
    torch.manual_seed(0)
    return NVAE(NVAEConfig(**{**TINY, **kw}))


def binary_batch(b=4, seed=0):
    return torch.bernoulli(torch.full((b, 1, 28, 28), 0.3), generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_residual_normal_kl_equals_kl_of_the_two_gaussians():
    g = torch.Generator().manual_seed(0)
    mu_p, log_sig_p, d_mu, d_log_sig = (torch.randn(1000, generator=g) for _ in range(4))
    q = Normal(mu_p + d_mu, torch.exp(log_sig_p + d_log_sig))
    p = Normal(mu_p, torch.exp(log_sig_p))
    torch.testing.assert_close(residual_normal_kl(d_mu, d_log_sig, log_sig_p), kl_divergence(q, p), rtol=1e-5, atol=1e-5)
    # no shift, no rescaling: q == p, KL == 0; and it does not depend on mu_p
    torch.testing.assert_close(residual_normal_kl(torch.zeros(3), torch.zeros(3), torch.randn(3, generator=g)), torch.zeros(3))


def test_normal_log_prob_matches_torch():
    g = torch.Generator().manual_seed(1)
    z, mu, ls = (torch.randn(50, generator=g) for _ in range(3))
    torch.testing.assert_close(normal_log_prob(z, mu, ls), Normal(mu, ls.exp()).log_prob(z))


@pytest.mark.parametrize("shape", [(16, 8, 3, 3), (24, 1, 5, 5), (5, 40, 1, 1)])
def test_power_iteration_matches_matrix_2_norm(shape):
    torch.manual_seed(0)
    conv = Conv2d(shape[1] * (shape[0] if shape[1] == 1 else 1), shape[0], shape[-1], groups=shape[0] if shape[1] == 1 else 1)
    w = conv.weight.flatten(1)
    true = torch.linalg.matrix_norm(w.detach(), ord=2)
    (one,) = spectral_norms(conv, n_iter=1)
    assert one <= true * (1 + 1e-5)  # u^T W v with unit u, v never exceeds sigma_max
    (est,) = spectral_norms(conv, n_iter=200)
    torch.testing.assert_close(est.detach(), true, rtol=1e-3, atol=0)
    # the estimate is differentiable: d(u^T W v)/dW = u v^T at the fixed point
    est.backward()
    torch.testing.assert_close(conv.weight.grad.flatten(1), torch.outer(conv.sr_u, conv.sr_v), rtol=1e-4, atol=1e-6)


def test_power_iteration_state_persists_and_update_false_keeps_it():
    torch.manual_seed(0)
    conv = Conv2d(4, 6, 3)
    u0 = conv.sr_u.clone()
    spectral_norms(conv, 3, update=False)
    torch.testing.assert_close(conv.sr_u, u0)
    spectral_norms(conv, 3)
    u, _ = power_iteration(conv.weight.detach().flatten(1), u0, conv.sr_v, 0)
    assert not torch.allclose(conv.sr_u, u0) and "sr_u" in conv.state_dict()


def test_cells_shapes_and_depthwise_parameter_count():
    x = torch.randn(2, 8, 14, 14)
    assert SE(8)(x).shape == x.shape
    assert EncoderCell(8)(x).shape == x.shape
    assert EncoderCell(8, 16, stride=2)(x).shape == (2, 16, 7, 7)
    assert GenerativeCell(8, expansion=3)(x).shape == x.shape
    assert GenerativeCell(8, 4, expansion=3, upsample=True)(x).shape == (2, 4, 28, 28)
    sep = DepthwiseSeparableConv(8, 16, k=5)
    assert sep(x).shape == (2, 16, 14, 14)
    assert sum(p.numel() for p in sep.parameters()) == (5 * 5 * 8 + 8) + (8 * 16 + 16)
    # SE gate is in (0, 1) per channel: it can only rescale channels, not mix them
    se = SE(8)
    ratio = se(x.abs() + 1) / (x.abs() + 1)
    assert torch.all((ratio > 0) & (ratio < 1))
    torch.testing.assert_close(ratio.amax(dim=(2, 3)), ratio.amin(dim=(2, 3)))


def test_output_shapes_at_each_scale():
    m = tiny(groups_per_scale=(2, 3))
    assert m.latent_shapes == [(4, 7, 7)] * 2 + [(4, 14, 14)] * 3
    x = binary_batch(3)
    feats = m.encode(x)
    assert [tuple(f.shape) for f in feats] == [(3, 32, 7, 7)] * 2 + [(3, 16, 14, 14)] * 3
    out = m(x)
    assert out.logits.shape == (3, 1, 28, 28)
    assert [tuple(z.shape) for z in out.z] == [(3, *s) for s in m.latent_shapes]
    assert all(k.shape == (3,) and torch.all(k >= -1e-4) for k in out.kl)
    # three scales: 28 -> 14 -> 7 -> ... needs image 32 (32 -> 16 -> 8 -> 4)
    m3 = NVAE(NVAEConfig(**TINY, image_size=32, groups_per_scale=(1, 1, 1)))
    assert [s[1] for s in m3.latent_shapes] == [4, 8, 16]
    assert m3(torch.zeros(2, 1, 32, 32)).logits.shape == (2, 1, 32, 32)


def test_posterior_is_residual_relative_to_prior():
    """Group l >= 2: q's mean minus p's mean is what the encoder adds; zeroing that head gives q == p."""
    m = tiny().eval()
    for head in m.posterior:  # dmu = 0, log dsigma = 0 everywhere
        torch.nn.init.zeros_(head.weight)
        torch.nn.init.zeros_(head.bias)
    out = m(binary_batch(2))
    for kl, lq, lp in zip(out.kl, out.log_q, out.log_p):
        torch.testing.assert_close(kl, torch.zeros(2), atol=1e-5, rtol=0)
        torch.testing.assert_close(lq, lp)


def test_temperature_zero_gives_prior_means():
    m = tiny().eval()
    logits_a, zs, mus = m.sample(3, temperature=0.0, generator=torch.Generator().manual_seed(1), return_latents=True)
    logits_b = m.sample(3, temperature=0.0, generator=torch.Generator().manual_seed(2))
    for z, mu in zip(zs, mus):
        torch.testing.assert_close(z, mu)
    torch.testing.assert_close(zs[0], torch.zeros_like(zs[0]))  # p(z_1) = N(0, I)
    torch.testing.assert_close(logits_a, logits_b)  # no randomness left
    _, zs1, mus1 = m.sample(3, temperature=1.0, generator=torch.Generator().manual_seed(1), return_latents=True)
    assert not torch.allclose(zs1[-1], mus1[-1])
    with pytest.raises(ValueError, match="temperature"):
        m.sample(2, temperature=-1)


def test_same_seed_same_samples():
    m = tiny().eval()
    a = m.sample(2, 0.8, torch.Generator().manual_seed(5))
    b = m.sample(2, 0.8, torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b)


def test_kl_warmup_and_balancing_coefficients():
    assert kl_coeff(0, 100) == 1e-4 and kl_coeff(50, 100) == 0.5 and kl_coeff(500, 100) == 1.0 and kl_coeff(3, 0) == 1.0
    m = tiny(groups_per_scale=(2, 2))
    alpha = group_alphas(m)
    torch.testing.assert_close(alpha, torch.tensor([1.0, 1.0, 4.0, 4.0]))  # 14x14 groups hold 4x the units
    kl = torch.tensor([[1.0, 3.0, 4.0, 40.0], [1.0, 1.0, 4.0, 40.0]])  # batch means 1, 2, 4, 40
    gamma = kl_balance_coeffs(kl, alpha)
    torch.testing.assert_close(gamma.mean(), torch.tensor(1.0))
    raw = (torch.tensor([1.0, 2.0, 4.0, 40.0]) + 0.01) / alpha
    torch.testing.assert_close(gamma, raw / raw.mean())
    assert gamma[1] > gamma[0] and gamma[3] > gamma[2]  # more KL in a group -> penalised more


def test_loss_uses_balancing_only_during_warmup_and_counts_steps():
    m = tiny()
    cfg = NVAEConfig(**TINY, kl_warmup_steps=2, sr_lambda=0.0)
    loss_fn = nvae_loss(cfg)
    g = torch.Generator().manual_seed(0)
    batch = (binary_batch(4), torch.zeros(4))
    _, logs0 = loss_fn(m, batch, g)
    assert logs0["kl_coeff"] == 1e-4 and int(m.train_step) == 1
    loss_fn(m, batch, g)
    loss, logs = loss_fn(m, batch, g)
    assert logs["kl_coeff"] == 1.0 and int(m.train_step) == 3
    # beta = 1, no balancing, no SR: the loss is exactly the negative ELBO
    torch.testing.assert_close(loss.detach(), torch.tensor(-logs["elbo"]), rtol=1e-5, atol=1e-3)
    m.eval()
    loss_fn(m, batch, g)
    assert int(m.train_step) == 3  # evaluation does not advance the warm-up


def test_spectral_term_is_added():
    m = tiny()
    cfg = NVAEConfig(**TINY, kl_warmup_steps=0, sr_lambda=0.5)
    loss, logs = nvae_loss(cfg)(m, (binary_batch(4), None), torch.Generator().manual_seed(0))
    torch.testing.assert_close(loss.detach(), torch.tensor(-logs["elbo"] + 0.5 * logs["sr"]), rtol=1e-5, atol=1e-3)


def test_iwae_bound_is_at_least_the_elbo_and_k1_is_one_log_weight():
    m = tiny().eval()
    x = binary_batch(2)
    lw1 = iwae_log_likelihood(m, x, k=1, generator=torch.Generator().manual_seed(3))
    ref = log_weights(m, x[:1], torch.Generator().manual_seed(3))
    torch.testing.assert_close(lw1[0], ref[0])
    # E_q[log w] = ELBO (analytic KL vs Monte Carlo: agree on average)
    xs = x[:1].expand(400, -1, -1, -1)
    mc = log_weights(m, xs, torch.Generator().manual_seed(4)).mean()
    an = elbo(m, xs, torch.Generator().manual_seed(4)).mean()
    assert abs(float(mc - an)) < 0.02 * abs(float(an))
    ll = iwae_log_likelihood(m, x, k=64, generator=torch.Generator().manual_seed(5), chunk=20)
    assert torch.all(ll >= an - 1.0) and ll[0] > mc
    with pytest.raises(ValueError, match="eval"):
        iwae_log_likelihood(m.train(), x, k=2)


def test_readjust_bn_changes_a_copy_only():
    m = tiny().eval()
    bn = m.post[0].branch[0]
    before = bn.running_mean.clone()
    m2 = readjust_bn(m, 0.5, n_batches=2, batch_size=8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(m.post[0].branch[0].running_mean, before)
    assert not torch.allclose(m2.post[0].branch[0].running_mean, before)
    assert not m2.training and m2.enc_groups[0][0].branch[0].running_mean.equal(m.enc_groups[0][0].branch[0].running_mean)


def test_a_few_steps_lower_the_loss():
    m = tiny()
    cfg = NVAEConfig(**TINY, kl_warmup_steps=0, sr_lambda=1e-2)
    loss_fn = nvae_loss(cfg)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    x = (torch.rand(32, 1, 28, 28, generator=torch.Generator().manual_seed(0)) > 0.7).float() * 2 - 1
    losses = []
    for i in range(15):
        loss, _ = loss_fn(m, (x, None), torch.Generator().manual_seed(i))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert sum(losses[-3:]) / 3 < 0.8 * losses[0], losses


def test_bad_input_and_bad_config_raise_clear_errors():
    m = tiny()
    with pytest.raises(ValueError, match=r"\(B, 1, 28, 28\).*size=28"):
        m(torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match="divisible"):
        NVAEConfig(image_size=28, groups_per_scale=(1, 1, 1))
    with pytest.raises(ValueError, match="groups_per_scale"):
        NVAEConfig(groups_per_scale=(2, 0))


def test_cli_train_eval_sample(tmp_path, monkeypatch, capsys):
    from ldmcourse.cli import main

    monkeypatch.setenv("LDMCOURSE_PROFILE", "smoke")
    out = tmp_path / "run"
    assert main(["train", "nvae", "--out", str(out), "--steps", "2", "--n-train", "32", "--progress", "false"]) == 0
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["model_config"]["image_size"] == 28 and "kl_0" in summary["history"][-1]
    capsys.readouterr()
    assert main(["eval", "--ckpt", str(out / "checkpoint.pt"), "--metric", "nll", "--n", "3", "--option", "k=4"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["k"] == 4 and res["n"] == 3 and res["nll_nats"] > 0
    assert main(["eval", "--ckpt", str(out / "checkpoint.pt"), "--metric", "elbo", "--n", "3"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["neg_elbo_nats"] >= 0
    png = tmp_path / "s.png"
    assert main(["sample", "--ckpt", str(out / "checkpoint.pt"), "--n", "4", "--out", str(png),
                 "--option", "temperature=0.7", "--option", "readjust=false"]) == 0
    assert png.exists()
