"""Flow matching / rectified flow (ldmcourse.flow): parity with flow_matching and diffusers, analytic
mixture (orders, moments), conversions, DDIM = Euler on the linear path, reflow, training, errors, CLI."""

import copy
import math

import pytest
import torch
from torch import nn

from ldmcourse import flow
from ldmcourse.analytic import GaussianMixture
from ldmcourse.guidance import guided_velocity
from ldmcourse.conversions import (eps_to_velocity, score_to_velocity, velocity_to_eps, velocity_to_score, velocity_to_x0,
                                   x0_to_velocity)


def _mixture():
    return GaussianMixture(torch.tensor([[-1.0, 0.5], [1.0, -0.5], [0.3, 1.2]]), torch.tensor([0.3, 0.4, 0.25]),
                           torch.tensor([1.0, 2.0, 1.5]))


class MLP(nn.Module):
    """v(x, t) for 2-D points."""

    def __init__(self, d=2, h=48, num_classes=None):
        super().__init__()
        self.config = type("C", (), {"num_classes": num_classes})()
        self.emb = nn.Embedding(num_classes + 1, h) if num_classes else None
        self.inp = nn.Linear(d + 1, h)
        self.net = nn.Sequential(nn.SiLU(), nn.Linear(h, h), nn.SiLU(), nn.Linear(h, h), nn.SiLU(), nn.Linear(h, d))

    def forward(self, x, t, y=None):
        h = self.inp(torch.cat([x, t[:, None].to(x.dtype)], 1))
        if self.emb is not None:
            h = h + self.emb(y if y is not None else torch.full((x.shape[0],), self.config.num_classes, dtype=torch.long))
        return self.net(h)


# ------------------------------------------------------------------------------------------------
# paths and conversions
# ------------------------------------------------------------------------------------------------

def test_linear_path_matches_flow_matching_condot_path():
    """flow_matching's CondOTProbPath: x_t' = t' x_1 + (1 - t') x_0 (x_0 noise, x_1 data). Ours at t = 1 - t'."""
    pytest.importorskip("flow_matching")
    from flow_matching.path import CondOTProbPath

    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(6, 3, 4, 4, generator=g), torch.randn(6, 3, 4, 4, generator=g)
    t = torch.rand(6, generator=g)
    x_t, u = flow.LinearPath().sample(x0, eps, t)
    ref = CondOTProbPath().sample(x_0=eps, x_1=x0, t=1 - t)
    torch.testing.assert_close(x_t, ref.x_t, rtol=0, atol=1e-6)
    torch.testing.assert_close(u, -ref.dx_t, rtol=0, atol=1e-6)  # time reversed: the velocity changes sign
    torch.testing.assert_close(u, eps - x0)


def test_velocity_conversions_round_trip_and_closed_forms():
    g = torch.Generator().manual_seed(1)
    B = 5
    x, v = torch.randn(B, 2, 3, 3, generator=g, dtype=torch.float64), torch.randn(B, 2, 3, 3, generator=g, dtype=torch.float64)
    a, s = torch.rand(B, generator=g, dtype=torch.float64) + 0.1, torch.rand(B, generator=g, dtype=torch.float64) + 0.1
    da, ds = -torch.rand(B, generator=g, dtype=torch.float64), torch.rand(B, generator=g, dtype=torch.float64) + 0.1
    c = (a, s, da, ds)
    eps, x0 = velocity_to_eps(v, x, *c), velocity_to_x0(v, x, *c)
    bc = lambda z: z[:, None, None, None]  # noqa: E731
    torch.testing.assert_close(bc(a) * x0 + bc(s) * eps, x)  # (x̂_0, ε̂) reproduce x_t ...
    torch.testing.assert_close(bc(da) * x0 + bc(ds) * eps, v)  # ... and the velocity
    torch.testing.assert_close(eps_to_velocity(eps, x, *c), v)
    torch.testing.assert_close(x0_to_velocity(x0, x, *c), v)
    torch.testing.assert_close(score_to_velocity(velocity_to_score(v, x, *c), x, *c), v)
    # linear path: ε = x + (1 - t) v, x_0 = x - t v
    t = torch.rand(B, generator=g, dtype=torch.float64)
    lin = flow.LinearPath().coefficients_like(t, x)
    torch.testing.assert_close(velocity_to_eps(v, x, *lin), x + (1 - bc(t)) * v)
    torch.testing.assert_close(velocity_to_x0(v, x, *lin), x - bc(t) * v)


def test_vp_path_derivatives_are_the_vp_sde():
    """ProcessPath's autograd α', σ' reproduce the VP SDE's f = -β/2 and g² = β (through f_g2)."""
    from ldmcourse.sde import VPSDE

    t = torch.tensor([0.01, 0.2, 0.5, 0.9, 1.0], dtype=torch.float64)
    f, g2 = flow.ProcessPath(VPSDE()).f_g2(t)
    f_ref, g2_ref = VPSDE().f_g2(t)
    torch.testing.assert_close(f, f_ref, rtol=1e-10, atol=0)
    torch.testing.assert_close(g2, g2_ref, rtol=1e-8, atol=0)


def test_mixture_velocity_on_the_vp_path_is_the_probability_flow_drift():
    """On the VP SDE's path the marginal velocity is the probability-flow ODE's drift f x - ½ g² ∇log p_t
    (Song et al. 2021, eq. 13), and Heun on it from t = 1 reaches the VP ODE's solution by the course's sampler."""
    from ldmcourse.samplers import heun as karras_heun
    from ldmcourse.sde import VPSDE

    mix, sde = _mixture(), VPSDE()
    path = flow.ProcessPath(sde)
    v = flow.mixture_velocity(mix, path)
    x = torch.randn(32, 2, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    for t in (0.05, 0.5, 0.95):
        f, g2 = (float(c) for c in sde.f_g2(t))
        a, s = (float(c) for c in sde.marginal(t))
        torch.testing.assert_close(v(x, torch.full((32,), t, dtype=torch.float64)), f * x - 0.5 * g2 * mix.score(x, a, s), rtol=1e-9, atol=1e-9)
    times = flow.time_grid(200, 1.0, path.t_min)
    ours = flow.heun(v, x, times)
    ref = karras_heun(mix.eps_model(sde), x, sde, timesteps=times, final_step=False)
    torch.testing.assert_close(ours, ref, rtol=0, atol=2e-3)


def test_course_eps_model_is_a_velocity_on_its_schedule_path():
    """The exact ε-model of a DDPM schedule (called with indices u), converted by velocity_from_eps on the
    schedule's path (t = (u + 1)/T), equals the mixture's exact velocity on that path."""
    from ldmcourse.schedules import make_schedule

    mix, sched = _mixture(), make_schedule("cosine", 1000)
    path = flow.ProcessPath(sched, name="cosine")
    v_eps = flow.velocity_from_eps(mix.eps_model(sched), path)
    v_exact = flow.mixture_velocity(mix, path)
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for u in (10, 300, 800):
        t = torch.full((64,), (u + 1) / 1000, dtype=torch.float64)
        assert path.network_time(t).dtype == torch.long and int(path.network_time(t)[0]) == u
        torch.testing.assert_close(v_eps(x, t), v_exact(x, t), rtol=1e-9, atol=1e-9)


# ------------------------------------------------------------------------------------------------
# samplers
# ------------------------------------------------------------------------------------------------

def test_ode_solvers_match_flow_matching_odesolver():
    """flow_matching's ODESolver (torchdiffeq euler / midpoint / heun2) on the same fixed velocity field,
    with its time t' = 1 - t and velocity -v: the same points, to float64 rounding."""
    pytest.importorskip("flow_matching")
    pytest.importorskip("torchdiffeq")
    from flow_matching.solver import ODESolver

    v = flow.mixture_velocity(_mixture(), "linear")
    theirs = ODESolver(velocity_model=lambda x, t: -v(x, (1 - t).expand(x.shape[0])))
    z = torch.randn(32, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    times = flow.time_grid(7, shift=3.0)  # a non-uniform grid
    for ours, method in ((flow.euler, "euler"), (flow.midpoint, "midpoint"), (flow.heun, "heun2")):
        ref = theirs.sample(x_init=z, step_size=None, method=method, time_grid=1 - torch.tensor(times, dtype=torch.float64))
        torch.testing.assert_close(ours(v, z, times), ref, rtol=0, atol=1e-12)


def test_euler_matches_diffusers_flow_match_euler_scheduler():
    pytest.importorskip("diffusers")
    from diffusers import FlowMatchEulerDiscreteScheduler

    g = torch.Generator().manual_seed(4)
    w = torch.randn(3, 3, generator=g) * 0.5
    v = lambda x, t: torch.tanh(x @ w) * (1 + t[:, None]) - x  # noqa: E731  (a fixed nonlinear field)
    for shift in (1.0, 3.0):
        sched = FlowMatchEulerDiscreteScheduler(shift=shift)
        sched.set_timesteps(12)
        x = z = torch.randn(16, 3, generator=g)
        for ts in sched.timesteps:
            sigma = float(ts) / sched.config.num_train_timesteps
            x = sched.step(v(x, torch.full((16,), sigma)), ts, x).prev_sample
        # diffusers' grid: shift(linspace(1, σ_min, N)) + [0] with σ_min its (shifted) 1/1000 -- our time_grid
        grid = flow.time_grid(11, 1.0, sched.sigma_min, shift) + [0.0]
        torch.testing.assert_close(torch.tensor(grid, dtype=torch.float32), sched.sigmas, rtol=0, atol=1e-6)
        torch.testing.assert_close(flow.euler(v, z, sched.sigmas.tolist()), x, rtol=0, atol=1e-5)
    # its forward process is our path: scale_noise(x0, t, ε) = (1 - σ) x0 + σ ε
    x0, eps = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    sched = FlowMatchEulerDiscreteScheduler()
    sched.set_timesteps(10)
    t = sched.timesteps[3:4]
    ref = sched.scale_noise(x0, t, eps)
    torch.testing.assert_close(flow.LinearPath().sample(x0, eps, t / 1000)[0], ref, rtol=0, atol=1e-6)


def _orders(sampler, v, z, ref, ns=(16, 32, 64)):
    errs = [float((sampler(v, z, flow.time_grid(n)) - ref).norm(dim=1).mean()) for n in ns]
    return [math.log2(a / b) for a, b in zip(errs, errs[1:])], errs


def test_exact_mixture_velocity_orders_and_moments():
    """The closed-form marginal velocity of a mixture, integrated from N(0, I) at t = 1: Euler has order 1,
    Heun and midpoint order 2 (errors against Heun on 1024 steps), and the samples have the mixture's moments."""
    mix = _mixture()
    v = flow.mixture_velocity(mix, "linear")
    g = torch.Generator().manual_seed(5)
    z = torch.randn(128, 2, generator=g, dtype=torch.float64)
    ref = flow.heun(v, z, flow.time_grid(1024))
    for name, lo, hi in (("euler", 0.85, 1.15), ("heun", 1.7, 2.3), ("midpoint", 1.7, 2.3)):
        orders, errs = _orders(flow.FLOW_SAMPLERS[name], v, z, ref)
        assert all(lo < p < hi for p in orders), (name, orders, errs)
    x = flow.heun(v, torch.randn(8000, 2, generator=g, dtype=torch.float64), flow.time_grid(32))
    mean, cov = mix.moments()
    se = (cov.diagonal() / 8000).sqrt()
    assert ((x.mean(0) - mean).abs() < 4 * se).all(), (x.mean(0), mean)
    torch.testing.assert_close(torch.cov(x.T), cov, rtol=0, atol=0.04)


def test_ddim_on_linear_path_equals_euler_on_velocity():
    """x_s = α_s x̂_0 + σ_s ε̂ with (x̂_0, ε̂) from v is x_t + (s - t) v: DDIM on the path = Euler on v."""
    from ldmcourse.samplers import ddim, dpm_solver_pp_2m

    path = flow.LinearPath()
    v = flow.mixture_velocity(_mixture(), path)
    eps = flow.eps_from_velocity(v, path)
    z = torch.randn(64, 2, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    ts = flow.time_grid(9, t_max=path.T_end)[:-1]  # DDIM's grid without the clean point (final_step adds it)
    torch.testing.assert_close(ddim(eps, z, path, timesteps=ts), flow.euler(v, z, ts + [0.0]), rtol=0, atol=1e-12)
    # float32, a network: float precision
    net = MLP().eval()
    z32 = z.float()
    torch.testing.assert_close(ddim(flow.eps_from_velocity(net, path), z32, path, timesteps=ts), flow.euler(net, z32, ts + [0.0]),
                               rtol=0, atol=2e-5)
    # a second-order ε-sampler on the path converges to the velocity ODE's solution
    ref = flow.heun(v, z, flow.time_grid(1024, t_max=path.T_end))
    e10, e40 = (float((dpm_solver_pp_2m(eps, z, path, steps=n, spacing="logsnr") - ref).norm(dim=1).mean()) for n in (10, 40))
    assert e40 < e10 / 8, (e10, e40)


def test_guided_velocity_is_the_cfg_combination():
    torch.manual_seed(0)
    net = MLP(num_classes=3).eval()
    x, t = torch.randn(5, 2), torch.full((5,), 0.4)
    with torch.no_grad():
        vc, vu = net(x, t, torch.full((5,), 2)), net(x, t, torch.full((5,), 3))
        torch.testing.assert_close(guided_velocity(net, 2, 2.5)(x, t), vu + 2.5 * (vc - vu), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# training, reflow
# ------------------------------------------------------------------------------------------------

def test_logit_normal_t_quantiles():
    g = torch.Generator().manual_seed(7)
    t = flow.sample_t(40000, "logit_normal", generator=g)
    assert 0 < float(t.min()) and float(t.max()) < 1
    # P(t < sigmoid(1)) = Φ(1) = 0.8413; median 0.5
    assert abs(float((t < torch.sigmoid(torch.tensor(1.0))).float().mean()) - 0.8413) < 0.01
    assert abs(float(t.median()) - 0.5) < 0.01
    tv = flow.sample_t(1000, "uniform", t_range=(1e-3, 1.0), generator=g)
    assert float(tv.min()) >= 1e-3


def test_a_few_training_steps_lower_the_loss():
    """Fixed batch, times and noise: 30 Adam steps of the flow loss on the course U-Net lower it (both t samplings)."""
    from ldmcourse.recipes.flow import FlowConfig, build, loss

    g = torch.Generator().manual_seed(8)
    x0 = torch.rand(8, 1, 16, 16, generator=g) * 2 - 1
    t, noise = torch.rand(8, generator=g), torch.randn(8, 1, 16, 16, generator=g)
    for sampling in ("uniform", "logit_normal"):
        cfg = FlowConfig(base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention=(), head_dim=8, t_sampling=sampling,
                         image_size=16)
        torch.manual_seed(0)
        model = build(cfg)
        fn = loss(cfg)
        opt = torch.optim.Adam(model.parameters(), 2e-3)
        with torch.no_grad():
            first = float(fn(model, x0, g, t=t, noise=noise)[0])
        for _ in range(30):
            lo, _ = fn(model, x0, g)  # the recipe's own t sampling
            opt.zero_grad()
            lo.backward()
            opt.step()
        with torch.no_grad():
            assert float(fn(model, x0, g, t=t, noise=noise)[0]) < 0.8 * first


def test_reflow_straightens_and_distillation_takes_one_step():
    """Two modes in 2-D: 1-rectified flow (tiny MLP) has curved paths; reflow on its own (sample, noise)
    pairs makes them measurably straighter (Liu et al. 2022's S), and few-step Euler much better;
    one-step distillation on the pairs maps z to its sample in one call."""
    mix = GaussianMixture(torch.tensor([[-1.5, 0.0], [1.5, 0.0]]), torch.tensor([0.2, 0.2]))
    g = torch.Generator().manual_seed(9)
    torch.manual_seed(0)
    model = MLP()
    data = mix.sample(2048, generator=g)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(300):
        lo, _ = flow.flow_loss(model, data[torch.randint(0, 2048, (128,), generator=g)], g)
        opt.zero_grad()
        lo.backward()
        opt.step()
    model.eval()
    z_test = torch.randn(256, 2, generator=torch.Generator().manual_seed(10))
    S1 = flow.straightness(model, z_test, steps=50)
    x, z = flow.generate_pairs(model, torch.randn(2048, 2, generator=g), steps=16)
    reflowed = copy.deepcopy(model)
    flow.fit_pairs(reflowed, x, z, steps=200, lr=1e-3, batch_size=128, generator=g)
    S2 = flow.straightness(reflowed, z_test, steps=50)
    assert S2 < 0.3 * S1, (S1, S2)

    def two_step_error(m):
        return float((flow.euler(m, z_test, flow.time_grid(2)) - flow.euler(m, z_test, flow.time_grid(50))).norm(dim=1).mean())

    assert two_step_error(reflowed) < 0.5 * two_step_error(model)
    student = copy.deepcopy(reflowed)
    one = lambda: float((flow.euler(student, z[:256], [1.0, 0.0]) - x[:256]).norm(dim=1).mean())  # noqa: E731
    before = one()
    flow.fit_pairs(student, x, z, steps=100, lr=1e-3, batch_size=128, generator=g, one_step=True)
    assert one() < 0.7 * before, (before, one())


# ------------------------------------------------------------------------------------------------
# errors, CLI
# ------------------------------------------------------------------------------------------------

def test_bad_input_gets_clear_errors():
    from ldmcourse.recipes.flow import FlowConfig

    with pytest.raises(ValueError, match="unknown path 'straight'"):
        flow.make_path("straight")
    with pytest.raises(ValueError, match="--path 'straight' is not known"):
        FlowConfig(path="straight")
    with pytest.raises(ValueError, match="NFE >= 1"):
        flow.time_grid(0)
    with pytest.raises(ValueError, match="NFE >= 1"):
        flow.euler(MLP(), torch.zeros(1, 2), [1.0])
    with pytest.raises(ValueError, match="strictly monotone"):
        flow.heun(MLP(), torch.zeros(1, 2), [1.0, 0.5, 0.7])
    with pytest.raises(ValueError, match="class-conditional"):
        guided_velocity(MLP(), 1, 2.0)
    with pytest.raises(ValueError, match="unknown t sampling"):
        flow.sample_t(4, "beta")
    with pytest.raises(ValueError, match="unknown flow sampler"):
        flow.get_flow_sampler("rk45")
    with pytest.raises(ValueError, match="p_uncond"):
        flow.flow_loss(MLP(), torch.zeros(2, 2), p_uncond=0.1)
    with pytest.raises(ValueError, match="sample_steps=0"):
        FlowConfig(sample_steps=0)
    with pytest.raises(ValueError, match="shift=0"):
        FlowConfig(shift=0.0)
    with pytest.raises(ValueError, match="--sampler 'rk45' is not known"):
        FlowConfig(sampler="rk45")
    with pytest.raises(ValueError, match="inherits its teacher's first stage"):
        FlowConfig(reflow_from="teacher.pt", first_stage="auto")


def test_cli_train_and_sample_round_trip(tmp_path, capsys):
    import json

    from ldmcourse.cli import main

    out = tmp_path / "flow"
    base = ["train", "flow", "--dataset", "mnist5k", "--profile", "smoke", "--image-size", "16", "--progress", "false", "--out", str(out),
            "--device", "cpu"]
    assert main(base + ["--steps", "3", "--t-sampling", "uniform", "--num-classes", "10", "--p-uncond", "0.2"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 3 and metrics["model_config"]["path"] == "linear" and "sample_fd" in metrics["eval"]
    ck = str(out / "checkpoint.pt")
    for sampler, extra in (("euler", []), ("heun", ["--guidance", "2", "--class", "3"]), ("midpoint", []), ("ddim", [])):
        png = tmp_path / f"{sampler}.png"
        assert main(["sample", "--ckpt", ck, "--sampler", sampler, "--steps", "2", "--n", "4", "--out", str(png),
                     "--device", "cpu"] + extra) == 0
        assert png.exists() and png.stat().st_size > 0
    # same seed, same x_T: Euler (velocity) and DDIM (ε-model on the path) agree up to DDIM starting at T_end = 0.999
    from ldmcourse.cli import load_model
    from ldmcourse.recipes.flow import sample

    model, meta, _ = load_model(ck, torch.device("cpu"))
    a = sample(model, meta, 3, torch.Generator().manual_seed(0), "cpu", sampler="euler", steps=4, batch_size=2)
    b = sample(model, meta, 3, torch.Generator().manual_seed(0), "cpu", sampler="euler", steps=4, batch_size=3)
    torch.testing.assert_close(a, b)  # chunking changes nothing
    # reflow from it, then distil the reflowed model to one step (tiny: 16 pairs of 2 Heun steps)
    rf, one = tmp_path / "rf", tmp_path / "one"
    small = ["--profile", "smoke", "--image-size", "16", "--progress", "false", "--device", "cpu", "--steps", "2",
             "--reflow-pairs", "16", "--reflow-ode-steps", "2"]
    assert main(["train", "flow", "--reflow-from", ck, "--out", str(rf), *small]) == 0
    assert main(["train", "flow", "--reflow-from", str(rf / "checkpoint.pt"), "--one-step", "true", "--out", str(one), *small]) == 0
    from ldmcourse.checkpoint import load_checkpoint
    from ldmcourse.recipes.flow import FlowConfig, build

    student, teacher_state = build(FlowConfig(reflow_from=ck)), load_checkpoint(ck)["ema"]  # starts as the teacher
    assert all(torch.equal(v, teacher_state[k]) for k, v in student.state_dict().items())
    m1, meta1, _ = load_model(str(one / "checkpoint.pt"), torch.device("cpu"))
    assert meta1["model_config"]["num_classes"] == 10 and json.loads(meta1["model_config"]["teacher_config"])["reflow_from"] == ck
    assert sample(m1, meta1, 2, torch.Generator().manual_seed(0), "cpu", sampler="euler", steps=1, y=3).shape == (2, 1, 16, 16)
    capsys.readouterr()
    assert main(["train", "flow", "--profile", "smoke", "--out", str(tmp_path / "bad"), "--one-step", "true", "--steps", "1",
                 "--device", "cpu"]) == 2
    assert "--reflow-from" in capsys.readouterr().err
    assert main(["train", "flow", "--profile", "smoke", "--out", str(tmp_path / "bad"), "--path", "curvy", "--steps", "1",
                 "--device", "cpu"]) == 2
    assert "--path 'curvy' is not known" in capsys.readouterr().err


def test_cli_latent_flow_on_a_first_stage(tmp_path):
    """train kl-autoencoder -> train flow --first-stage on its latents -> sample (decoded images)."""
    from ldmcourse.cli import load_model, main
    from ldmcourse.recipes.flow import sample

    kl, fl = tmp_path / "kl", tmp_path / "flow"
    common = ["--profile", "smoke", "--n-train", "64", "--steps", "3", "--progress", "false", "--device", "cpu"]
    assert main(["train", "kl-autoencoder", "--out", str(kl), *common]) == 0
    assert main(["train", "flow", "--first-stage", str(kl / "checkpoint.pt"), "--out", str(fl), *common]) == 0
    model, meta, _ = load_model(fl / "checkpoint.pt", torch.device("cpu"))
    assert model.scale_is_set and meta["model_config"]["in_channels"] == 4 and model.latent_shape != (1, 32, 32)
    x = sample(model, meta, 2, torch.Generator().manual_seed(0), "cpu", sampler="heun", steps=2)
    assert x.shape == (2, 1, 32, 32) and x.abs().max() <= 1
    assert main(["sample", "--ckpt", str(fl / "checkpoint.pt"), "--sampler", "dpm_solver++_2m", "--steps", "3", "--n", "2",
                 "--out", str(tmp_path / "s.png"), "--device", "cpu"]) == 0


def test_reflow_pairs_follow_the_guided_teacher(monkeypatch):
    """``reflow_guidance`` s: the pairs are Heun solutions of the teacher's guided velocity v_u + s (v_c - v_u) with the
    drawn labels (the student learns the guided map); s = 1 is the plain conditional teacher; an unconditional teacher refuses s."""
    import ldmcourse.run as run
    from ldmcourse.recipes.flow import FlowConfig, teacher_pairs

    torch.manual_seed(0)
    net = MLP(num_classes=3)
    net.latent_shape = (2,)
    monkeypatch.setattr(run, "load_model", lambda *a, **k: (net, {}, None))
    cfg = dict(reflow_from="t.pt", reflow_pairs=6, reflow_ode_steps=3, time_scale=1.0, teacher_config="{}")
    x3, z, y = teacher_pairs(FlowConfig(num_classes=3, reflow_guidance=3.0, **cfg), "cpu")
    x1, z1, y1 = teacher_pairs(FlowConfig(num_classes=3, **cfg), "cpu")
    assert torch.equal(z, z1) and torch.equal(y, y1)  # the same noise and labels for every guidance scale
    ref3 = flow.heun(guided_velocity(net, y, 3.0, num_classes=3), z, flow.time_grid(3))
    ref1 = flow.heun(lambda x, t: net(x, t, y), z, flow.time_grid(3))
    torch.testing.assert_close(x3, ref3)
    torch.testing.assert_close(x1, ref1)
    assert float((x3 - x1).abs().max()) > 1e-3
    with pytest.raises(ValueError, match="class-conditional teacher"):
        teacher_pairs(FlowConfig(reflow_guidance=3.0, **cfg), "cpu")
