"""diffusion.py: q_sample moments, prediction conversions, losses/weights, DDPM sampling against
closed forms (Ho et al. eq. 11, Gaussian-data oracle), the VLB terms against Monte Carlo."""

import math
from functools import partial

import pytest
import torch

from ldmcourse.diffusion import (as_eps_model, ddpm_sample, diffusion_loss, discretized_gaussian_log_likelihood,
                                 loss_weight, normal_kl, q_sample, target_for, to_eps, to_x0, vlb_bpd, vlb_terms)
from ldmcourse.schedules import make_schedule

SCHED = make_schedule("linear", 1000)


def test_q_sample_mean_and_variance():
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((200_000, 1), 0.7)
    for t in (0, 250, 999):
        tt = torch.full((len(x0),), t)
        xt = q_sample(x0, tt, SCHED, generator=g)
        ac = float(SCHED.alphas_cumprod[t])
        assert abs(float(xt.mean()) - math.sqrt(ac) * 0.7) < 5e-3
        assert abs(float(xt.var()) - (1 - ac)) < 0.01 * (1 - ac) + 1e-6


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_conversions_round_trip(name):
    s = make_schedule(name, 1000)
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(8, 2, 4, 4, generator=g, dtype=torch.float64), torch.randn(8, 2, 4, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 1, 10, 100, 500, 900, 990, 998])
    xt = q_sample(x0, t, s, eps)
    for p in ("eps", "x0", "v"):
        target = target_for(p, x0, eps, t, s)
        torch.testing.assert_close(to_eps(target, p, xt, t, s), eps, atol=1e-7, rtol=1e-6)
        torch.testing.assert_close(to_x0(target, p, xt, t, s), x0, atol=1e-7, rtol=1e-6)
        oracle = lambda x, tt, tgt=target: tgt  # noqa: E731
        torch.testing.assert_close(as_eps_model(oracle, s, p)(xt, t), eps, atol=1e-7, rtol=1e-6)
    # v = √ᾱ ε − √(1−ᾱ) x0 written out
    a = s.alphas_cumprod[t].sqrt().reshape(-1, 1, 1, 1)
    torch.testing.assert_close(target_for("v", x0, eps, t, s), a * eps - (1 - a**2).sqrt() * x0)
    with pytest.raises(ValueError, match="prediction"):
        to_eps(eps, "score", xt, t, s)


def test_min_snr_weight_is_the_same_objective_in_every_space():
    t = torch.arange(0, 1000, 37)
    snr = SCHED.snr[t]
    w = {p: loss_weight("min_snr", t, SCHED, p, gamma=5.0) for p in ("eps", "x0", "v")}
    # ||ε̂−ε||² = SNR·||x̂0−x0||² and ||ε̂−ε||² = SNR/(1+SNR)·||v̂−v||²
    torch.testing.assert_close(w["x0"], w["eps"] * snr)
    torch.testing.assert_close(w["v"] * (1 + snr) / snr, w["eps"])
    torch.testing.assert_close(loss_weight("sigma2", t, SCHED), 1 - SCHED.alphas_cumprod[t])


def test_loss_values_and_label_dropout():
    x0 = torch.randn(4, 1, 4, 4)
    t = torch.tensor([1, 2, 3, 4])
    noise = torch.randn_like(x0)
    zero = lambda x, tt: torch.zeros_like(x)  # noqa: E731
    l2, logs = diffusion_loss(zero, (x0, None), schedule=SCHED, t=t, noise=noise)
    torch.testing.assert_close(l2, (noise**2).mean())
    l1, _ = diffusion_loss(zero, x0, schedule=SCHED, t=t, noise=noise, loss="l1")
    torch.testing.assert_close(l1, noise.abs().mean())
    hub, _ = diffusion_loss(zero, x0, schedule=SCHED, t=t, noise=noise, loss="huber")
    torch.testing.assert_close(hub, torch.nn.functional.smooth_l1_loss(torch.zeros_like(noise), noise))
    seen = []

    def cond(x, tt, y):
        seen.append(y)
        return torch.zeros_like(x)

    g = torch.Generator().manual_seed(0)
    y = torch.zeros(4000, dtype=torch.long)
    diffusion_loss(cond, (torch.zeros(4000, 1, 1, 1), y), g, schedule=SCHED, num_classes=10, p_uncond=0.25)
    frac = float((seen[0] == 10).float().mean())
    assert 0.22 < frac < 0.28 and set(seen[0].tolist()) == {0, 10}
    with pytest.raises(ValueError, match="class-conditional"):
        diffusion_loss(zero, x0, schedule=SCHED, p_uncond=0.1)


def test_ddpm_step_is_ho_eq_11():
    """One full-chain step equals x_{t-1} = (x_t − β_t/√(1−ᾱ_t) ε)/√α_t + σ_t z (eq. 11): α_t, not ᾱ_t."""
    eps_model = lambda x, t: 0.3 * x + 0.1  # noqa: E731
    x = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    for t, var in ((500, "beta"), (500, "beta_tilde"), (1, "beta")):
        g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
        out = ddpm_sample(eps_model, x, SCHED, timesteps=[t, t - 1], final_step=False, generator=g1, variance=var)
        b, a, ac = (float(getattr(SCHED, n)[t]) for n in ("betas", "alphas", "alphas_cumprod"))
        sigma2 = b if var == "beta" else float(SCHED.posterior_variance[t])
        expect = (x - b / math.sqrt(1 - ac) * eps_model(x, t)) / math.sqrt(a) + math.sqrt(sigma2) * torch.randn(x.shape, generator=g2, dtype=x.dtype)
        torch.testing.assert_close(out, expect)
    # the final step to clean data returns x̂0 with no noise
    out = ddpm_sample(eps_model, x, SCHED, timesteps=[0], generator=torch.Generator().manual_seed(0))
    ac0 = float(SCHED.alphas_cumprod[0])
    torch.testing.assert_close(out, (x - math.sqrt(1 - ac0) * eps_model(x, 0)) / math.sqrt(ac0))


def _gaussian_oracle(mu, s2, schedule):
    """E[ε | x_t] for data x0 ~ N(mu, s2) elementwise: √(1−ᾱ)(x_t − √ᾱ μ)/(ᾱ s² + 1 − ᾱ)."""
    def eps_model(x, t):
        ac = schedule.at("alphas_cumprod", t, x)
        return (1 - ac).sqrt() * (x - ac.sqrt() * mu) / (ac * s2 + 1 - ac)
    return eps_model


def _exact_chain_moments(mu, s2, schedule, ts, variance):
    """Mean and variance of the DDPM output for Gaussian data, propagated exactly: with the oracle every
    step is affine in x plus Gaussian noise, x_s = A x + c + σ z, so m ← A m + c and v ← A² v + σ²."""
    ac = schedule.alphas_cumprod.tolist()
    m, v = torch.zeros_like(mu, dtype=torch.float64), torch.ones_like(s2, dtype=torch.float64)
    for t, s in zip(ts, ts[1:] + [-1]):
        a, a_s = ac[t], (ac[s] if s >= 0 else 1.0)
        k = math.sqrt(1 - a) / (a * s2.double() + 1 - a)  # ε = k (x − √a μ)
        beta = 1 - a / a_s
        c1, c2 = math.sqrt(a_s) * beta / (1 - a), math.sqrt(1 - beta) * (1 - a_s) / (1 - a)
        A = c1 * (1 - math.sqrt(1 - a) * k) / math.sqrt(a) + c2
        c = c1 * math.sqrt(1 - a) * k * mu.double()
        var = 0.0 if s < 0 else (beta if variance == "beta" else (1 - a_s) / (1 - a) * beta)
        m, v = A * m + c, A**2 * v + var
    return m, v


@pytest.mark.parametrize("schedule,steps,variance", [
    ("linear", None, "beta_tilde"), ("linear", None, "beta"), ("cosine", 100, "beta_tilde"), ("cosine", 20, "beta"),
])
def test_ddpm_reproduces_gaussian_data(schedule, steps, variance):
    """Oracle ε for Gaussian data: samples match the exact chain moments (Monte-Carlo tolerance), and on the
    full 1000-step chain those moments are the data's up to DDPM's own discretisation error (β̃ ignores
    Var(x_0|x_t) and under-estimates the variance, β over-estimates it; with 20-100 steps both grow)."""
    from ldmcourse.schedules import make_timesteps

    s = make_schedule(schedule, 1000)
    mu = torch.tensor([0.5, -0.3, 0.0, 0.8]).reshape(1, 4, 1, 1)
    s2 = torch.tensor([0.04, 0.25, 0.01, 0.5]).reshape(1, 4, 1, 1)
    g = torch.Generator().manual_seed(0)
    n = 20_000
    xT = torch.randn(n, 4, 1, 1, generator=g)
    x = ddpm_sample(_gaussian_oracle(mu, s2, s), xT, s, steps=steps, generator=g, variance=variance, spacing="trailing")
    m, v = _exact_chain_moments(mu, s2, s, make_timesteps(1000, steps or 1000, "trailing").tolist(), variance)
    se_mean, se_var = (v / n).sqrt(), v * math.sqrt(2 / n)  # standard errors
    assert bool(((x.mean(0, keepdim=True) - m).abs() < 4 * se_mean).all())
    assert bool(((x.var(0, keepdim=True) - v).abs() < 4 * se_var).all())
    if steps is None:  # exact chain variance / data variance at T=1000: β 1.003-1.015, β̃ 0.928-0.988
        torch.testing.assert_close(m.float(), mu, atol=1e-4, rtol=0)
        torch.testing.assert_close(v.float(), s2, atol=0, rtol=0.02 if variance == "beta" else 0.08)
        torch.testing.assert_close(x.var(0, keepdim=True), s2, atol=0, rtol=0.1)


def test_wrong_step_with_alpha_bar_fails_oracle():
    """The seed's update (ᾱ_t in place of α_t) does not reproduce the data: a guard that the test can fail."""
    s = SCHED
    mu, s2 = 0.5, 0.04
    oracle = _gaussian_oracle(mu, s2, s)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5000, 1, generator=g)
    for t in range(999, -1, -1):
        tt = torch.full((len(x),), t)
        ab = float(s.alphas_cumprod[t])
        alpha, beta = ab, 1 - ab  # the seed's bug
        x = (x - beta / math.sqrt(1 - ab) * oracle(x, tt)) / math.sqrt(alpha)
        if t > 0:
            x = x + math.sqrt(beta) * torch.randn(x.shape, generator=g)
    assert abs(float(x.var()) - s2) > 0.25 * s2  # 0.023 instead of 0.04


def test_callback_replaces_x_and_final_step_false_stops_early():
    calls = []
    eps_model = lambda x, t: torch.zeros_like(x)  # noqa: E731

    def cb(i, t, t_next, x, x0):
        calls.append((i, t, t_next))
        return torch.zeros_like(x)

    out = ddpm_sample(eps_model, torch.ones(2, 1, 2, 2), SCHED, steps=10, callback=cb, final_step=False)
    assert [c[1] for c in calls] == [900, 800, 700, 600, 500, 400, 300, 200, 100]
    assert calls[-1][2] == 0 and torch.count_nonzero(out) == 0
    calls.clear()
    ddpm_sample(eps_model, torch.ones(2, 1, 2, 2), SCHED, steps=10, callback=cb)
    assert len(calls) == 10 and calls[-1][2] == -1


def test_kl_term_matches_monte_carlo():
    """L_{t-1} = E_{x_t} KL(q(x_{t-1}|x_t,x0) || p(x_{t-1}|x_t)) against E[log q − log p] by sampling."""
    s = make_schedule("linear", 100)
    eps_model = lambda x, t: 0.5 * x  # noqa: E731 (any fixed model)
    t = 40
    x0 = torch.full((40_000, 1, 1, 2), 0.3, dtype=torch.float64)
    x0[..., 1] = -0.6
    for variance in ("beta", "beta_tilde"):
        g = torch.Generator().manual_seed(0)
        kl = vlb_terms(eps_model, x0, s, variance, [t], g)["kl"][:, 0].mean()
        # Monte Carlo
        tt = torch.full((len(x0),), t)
        xt = q_sample(x0, tt, s, generator=g)
        qm = s.at("posterior_mean_coef1", tt, xt) * x0 + s.at("posterior_mean_coef2", tt, xt) * xt
        qv = float(s.posterior_variance[t])
        x0h = (xt - s.at("sqrt_one_minus_alphas_cumprod", tt, xt) * eps_model(xt, tt)) / s.at("sqrt_alphas_cumprod", tt, xt)
        pm = s.at("posterior_mean_coef1", tt, xt) * x0h + s.at("posterior_mean_coef2", tt, xt) * xt
        pv = float(s.betas[t]) if variance == "beta" else qv
        xprev = qm + math.sqrt(qv) * torch.randn(xt.shape, generator=g, dtype=xt.dtype)
        logq = -0.5 * ((xprev - qm) ** 2 / qv + math.log(2 * math.pi * qv))
        logp = -0.5 * ((xprev - pm) ** 2 / pv + math.log(2 * math.pi * pv))
        mc = (logq - logp).flatten(1).sum(1).mean()
        assert abs(float(kl) - float(mc)) < 0.03 * float(kl) + 0.01, (variance, float(kl), float(mc))


def test_normal_kl_and_decoder_likelihood():
    torch.testing.assert_close(normal_kl(torch.tensor(1.0), torch.tensor(0.0), torch.tensor(0.0), torch.tensor(0.0)), torch.tensor(0.5))
    # the discretised Gaussian sums to one over the 256 levels
    x = torch.linspace(-1, 1, 256, dtype=torch.float64)
    for mean, log_scale in ((0.1, -2.0), (-0.95, -4.0), (0.0, 1.0)):
        p = discretized_gaussian_log_likelihood(x, torch.full_like(x, mean), torch.full_like(x, log_scale)).exp()
        torch.testing.assert_close(p.sum(), torch.tensor(1.0, dtype=torch.float64))


def test_bpd_perfect_prior_terms_and_unbiased_subsampling():
    """Near-Gaussian data with the Gaussian oracle: L_T ≈ 0, the stratified estimate is unbiased, a useless model is worse."""
    s = make_schedule("linear", 200)
    mu, s2 = 0.0, 0.25
    oracle = _gaussian_oracle(mu, s2, s)
    g = torch.Generator().manual_seed(0)
    data = (torch.randn(256, 1, 2, 2, generator=g) * 0.5).clamp(-1, 1)
    data = torch.round((data + 1) * 127.5) / 127.5 - 1  # 256 levels
    full = vlb_bpd(oracle, data, s, generator=torch.Generator().manual_seed(1))
    est = torch.tensor([vlb_bpd(oracle, data, s, n_t=20, generator=torch.Generator().manual_seed(k))["bpd"] for k in range(30)])
    assert abs(float(est.mean()) - full["bpd"]) < 3 * float(est.std()) / 30**0.5 + 1e-3  # unbiased
    assert float(est.std()) < 0.05 * full["bpd"]  # and useful
    assert full["prior_bpd"] < 1e-3 and full["kl_bpd"] > 0 and full["n_t"] == 199
    # a useless ε-model has a much worse bound than the oracle
    bad = vlb_bpd(lambda x, t: torch.zeros_like(x), data, s, generator=torch.Generator().manual_seed(1))
    assert bad["bpd"] > full["bpd"] + 1


def test_fit_loss_fn_signature():
    from ldmcourse.unet import UNet, UNetConfig

    m = UNet(UNetConfig(in_channels=1, base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention=(), mid_attention=False))
    loss_fn = partial(diffusion_loss, schedule=SCHED, prediction="v", loss="huber", weighting="min_snr")
    loss, logs = loss_fn(m, (torch.randn(2, 1, 8, 8), torch.tensor([0, 1])), torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and set(logs) == {"loss", "mse_eps"}


def test_cli_train_sample_eval_ddpm(tmp_path, monkeypatch, capsys):
    """`ldmcourse train ddpm` (smoke sizes, 3 steps) -> checkpoint; `sample` and `eval --metric bpd` read it."""
    import json

    from ldmcourse.cli import main

    monkeypatch.setenv("LDMCOURSE_OFFLINE", "1")
    out = tmp_path / "run"
    assert main(["train", "ddpm", "--profile", "smoke", "--out", str(out), "--steps", "3", "--n-train", "64",
                 "--prediction", "v", "--loss", "huber", "--schedule", "sigmoid", "--progress", "false"]) == 0
    meta = json.loads((out / "metrics.json").read_text())
    assert meta["model_config"]["prediction"] == "v" and meta["model_config"]["schedule"] == "sigmoid"
    assert 0 < meta["eval"]["bpd"]["bpd"] < 100
    assert main(["sample", "--ckpt", str(out / "checkpoint.pt"), "--sampler", "ddpm", "--steps", "3", "--n", "4",
                 "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").exists()
    capsys.readouterr()
    assert main(["eval", "--ckpt", str(out / "checkpoint.pt"), "--metric", "bpd", "--n", "8", "--option", "n_t=3"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["n"] == 8 and res["n_t"] == 3 and res["bpd"] > 0
    assert main(["train", "ddpm", "--profile", "smoke", "--out", str(tmp_path / "bad"), "--prediction", "score"]) == 2
    assert "choose one of eps, x0, v" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# DiffusionConfig, the previous config layout, and the sample/inpaint options (issue 12)
# ----------------------------------------------------------------------------------------------

def test_diffusion_config_validates_and_is_shared_by_ddpm_and_ldm():
    from ldmcourse.diffusion import DiffusionConfig
    from ldmcourse.recipes.ddpm import DDPMConfig
    from ldmcourse.recipes.ldm import LDMConfig

    names = set(DiffusionConfig.__dataclass_fields__)
    assert names <= set(DDPMConfig.__dataclass_fields__) and names <= set(LDMConfig.__dataclass_fields__)
    assert LDMConfig(weighting="min_snr", gamma=5.0).loss_kwargs()["weighting"] == "min_snr"  # ldm: loss options too
    for bad, match in ((dict(T=1), "--T 1"), (dict(sample_steps=0), "--sample-steps 0"), (dict(sample_steps=2000), "between 1"),
                       (dict(spacing="middle"), "--spacing"), (dict(sampler="magic"), "--sampler"), (dict(p_uncond=1.0), "--p-uncond"),
                       (dict(gamma=0.0), "--gamma"), (dict(weighting="x"), "--weighting")):
        with pytest.raises(ValueError, match=match):
            DiffusionConfig(**bad)
    with pytest.raises(ValueError, match="num-classes"):
        DDPMConfig(p_uncond=0.1)


def test_previous_config_layout_loads_through_the_migration(tmp_path):
    """A checkpoint of the previous layout (LDMConfig with diffusion_steps, no loss/sampling fields) loads with
    its T, and samples exactly like the same weights saved in the current layout."""
    from ldmcourse.checkpoint import load_checkpoint, save_checkpoint
    from ldmcourse.cli import load_model, main
    from ldmcourse.recipes import get_recipe

    cfg = get_recipe("ldm").config({"first_stage": "none", "schedule": "cosine", "diffusion_steps": 200, "prediction": "v"})
    assert (cfg.T, cfg.schedule, cfg.prediction, cfg.loss, cfg.weighting) == (200, "cosine", "v", "l2", "simple")
    out = tmp_path / "ldm"
    assert main(["train", "ldm", "--first-stage", "none", "--profile", "smoke", "--steps", "2", "--n-train", "32", "--T", "200",
                 "--out", str(out), "--progress", "false", "--device", "cpu"]) == 0
    ck = load_checkpoint(out / "checkpoint.pt")
    new_fields = ("T", "loss", "weighting", "gamma", "variance", "sampler", "sample_steps", "spacing")
    ck["meta"]["model_config"] = {**{k: v for k, v in ck["meta"]["model_config"].items() if k not in new_fields},
                                  "diffusion_steps": 200}
    save_checkpoint(tmp_path / "old.pt", ck)
    old, old_meta, recipe = load_model(tmp_path / "old.pt", torch.device("cpu"))
    new, new_meta, _ = load_model(out / "checkpoint.pt", torch.device("cpu"))
    assert recipe.config(old_meta["model_config"]).T == 200
    a = recipe.sample(old, old_meta, 2, torch.Generator().manual_seed(0), "cpu", steps=3)
    b = recipe.sample(new, new_meta, 2, torch.Generator().manual_seed(0), "cpu", steps=3)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_cli_sample_and_inpaint_refuse_nonsense(tmp_path, capsys):
    """Issue 12: bad --option keys and values, zero counts and an out-of-range class are one-line errors (exit 2)."""
    from ldmcourse.cli import main

    out = tmp_path / "run"
    assert main(["train", "ddpm", "--profile", "smoke", "--out", str(out), "--steps", "2", "--n-train", "32", "--num-classes", "10",
                 "--p-uncond", "0.1", "--progress", "false", "--device", "cpu"]) == 0
    ckpt, png = str(out / "checkpoint.pt"), str(tmp_path / "s.png")
    capsys.readouterr()
    for args, msg in ((["--option", "eta=abc"], "--option eta='abc': expected a value of type float"),
                      (["--option", "etta=0.5"], "has no option 'etta'; its options are eta, clip_x0"),
                      (["--sampler", "ddpm", "--steps", "0"], "--steps 0 must be >= 1"),
                      (["--class", "10"], "this model has classes 0..9"), (["--n", "0"], "--n 0 must be >= 1"),
                      (["--spacing", "middle"], "--spacing 'middle'"), (["--guidance", "2"], "add --class C")):
        assert main(["sample", "--ckpt", ckpt, "--out", png, "--device", "cpu", *args]) == 2, args
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and msg in err and "\n" not in err, (args, err)
    assert main(["inpaint", "--ckpt", ckpt, "--image", "test:0", "--mask", "box", "--out", png, "--n", "0"]) == 2
    assert "--n 0 must be >= 1" in capsys.readouterr().err
    assert main(["eval", "--ckpt", ckpt, "--metric", "bpd", "--option", "nt=3"]) == 2
    assert "has no such option" in capsys.readouterr().err
    # what is valid runs: a class with guidance; inpainting a ddpm with another sampler
    assert main(["sample", "--ckpt", ckpt, "--out", png, "--device", "cpu", "--n", "2", "--class", "9", "--guidance", "2"]) == 0
    assert main(["inpaint", "--ckpt", ckpt, "--image", "test:0", "--mask", "half", "--out", png, "--n", "2", "--steps", "3",
                 "--sampler", "heun", "--method", "replace", "--device", "cpu"]) == 0
    # a model without a diffusion process refuses sampler flags and classes instead of echoing them
    vae = tmp_path / "vae"
    assert main(["train", "vae", "--profile", "smoke", "--out", str(vae), "--steps", "2", "--progress", "false", "--device", "cpu"]) == 0
    capsys.readouterr()
    assert main(["sample", "--ckpt", str(vae / "checkpoint.pt"), "--out", png, "--sampler", "ddim", "--steps", "5"]) == 2
    assert "one decoder pass: --sampler ddim, --steps 5 do(es) not apply" in capsys.readouterr().err
    assert main(["sample", "--ckpt", str(vae / "checkpoint.pt"), "--out", png, "--class", "1"]) == 2
    assert "takes no --class" in capsys.readouterr().err


def test_guidance_default_comes_from_the_config():
    """A class given without --guidance samples at DiffusionConfig.guidance (the ldm sizes set 3, measured)."""
    from ldmcourse.diffusion import DiffusionConfig
    from ldmcourse.recipes.ddpm import DDPMConfig, build, sample_with

    with pytest.raises(ValueError, match="guidance"):
        DiffusionConfig(guidance=-1.0)
    cfg = DDPMConfig(base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention=(), groups=4, num_classes=3,
                     p_uncond=0.1, T=50, guidance=2.5)
    torch.manual_seed(0)
    net = build(cfg).eval()
    with torch.no_grad():
        for p in net.parameters():  # random, non-zero weights so the class matters
            p.add_(0.1 * torch.randn_like(p))

    def draw(**kw):
        return sample_with(net, cfg, (1, 8, 8), 2, torch.Generator().manual_seed(0), "cpu", steps=5, y=1, **kw)

    assert torch.equal(draw(), draw(guidance=2.5))
    assert not torch.equal(draw(), draw(guidance=1.0))
