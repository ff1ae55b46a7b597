"""Progressive distillation (Salimans & Ho 2022, Alg. 2): the target's algebra, an analytic case, training, the CLI."""

import json
from functools import partial

import pytest
import torch

from ldmcourse.analytic import GaussianMixture
from ldmcourse.distill import (distill, distillation_target, halve_timesteps, make_student,
                               progressive_distillation_loss, teacher_timesteps)
from ldmcourse.samplers import SAMPLERS
from ldmcourse.schedules import make_schedule, make_timesteps
from ldmcourse.train import FitConfig
from ldmcourse.unet import UNet, UNetConfig


def _toy_eps(x, t):
    """A nonlinear, time-dependent 'teacher' ε-model (float64 in, float64 out)."""
    c = 1.0 + t.double().reshape(-1, *([1] * (x.ndim - 1))) / 1000
    return torch.tanh(c * x) + 0.1 * x.roll(1, -1)


def test_grids_interleave():
    T, N = 1000, 8
    ts_t = teacher_timesteps(T, N, "trailing")
    ts_s = halve_timesteps(ts_t)
    assert len(ts_t) == 2 * N and len(ts_s) == N
    assert torch.equal(ts_s, ts_t[0::2])
    assert torch.equal(ts_s, make_timesteps(T, N, "trailing"))  # 2N | T: the usual trailing grid


@pytest.mark.parametrize("spacing", ["trailing", "leading"])
def test_one_student_step_with_x_tilde_lands_on_two_teacher_steps(spacing):
    """(a) x̃ is exactly the x̂_0 that makes one DDIM step from z_t land on the teacher's two-step z_t''."""
    sched = make_schedule("cosine", 1000)
    N = 4
    ts_t = teacher_timesteps(1000, N, spacing)
    ts_s = halve_timesteps(ts_t)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(3, 1, 4, 4, generator=g, dtype=torch.float64)
    for k in range(N):
        last = k == N - 1
        idx = torch.full((3,), k, dtype=torch.long)
        x_tilde, z2 = distillation_target(_toy_eps, z, idx, sched, ts_t)
        # the teacher's two steps, run by the package's DDIM sampler (so the two cannot drift apart)
        teacher = SAMPLERS["ddim"](_toy_eps, z, sched, timesteps=ts_t[2 * k:2 * k + (2 if last else 3)], final_step=last)
        torch.testing.assert_close(z2, teacher, rtol=0, atol=1e-10)
        # a student whose x̂_0 is x̃: ε_S = (z - α_t x̃)/σ_t; ONE DDIM step
        a = sched.alphas_cumprod[ts_s[k]].sqrt().item()
        s = (1 - sched.alphas_cumprod[ts_s[k]]).sqrt().item()
        student = lambda x, t: (x - a * x_tilde) / s  # noqa: E731
        one = SAMPLERS["ddim"](student, z, sched, timesteps=ts_s[k:k + (1 if last else 2)], final_step=last)
        torch.testing.assert_close(one, teacher, rtol=0, atol=1e-10)
        if last:  # at the step to clean data the target is the teacher's result itself
            torch.testing.assert_close(x_tilde, z2, rtol=0, atol=1e-12)


def test_analytic_gaussian_target_beats_the_teachers_own_step():
    """(b) Single Gaussian N(μ, v I): ε* is exact and the probability-flow ODE is linear, with the exact map
    z_s = α_s μ + √(α_s² v + σ_s²)/√(α_t² v + σ_t²) · (z_t - α_t μ). Two DDIM steps are closer to it than
    one, so x̃ differs from the teacher's own x̂_0 and the distillation loss of 'student = teacher' is > 0,
    shrinking as the grid gets finer. For a point mass (v -> 0) DDIM is exact and the loss vanishes."""
    sched = make_schedule("linear", 1000)
    mu = 0.5 * torch.sign(torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    v = 0.3**2
    teacher = GaussianMixture(mu, [v**0.5]).eps_model(sched)
    ts_t = teacher_timesteps(1000, 2, "trailing")  # student: 2 steps 999 -> 499 -> clean
    ts_s = halve_timesteps(ts_t)
    ac = sched.alphas_cumprod
    g = torch.Generator().manual_seed(2)
    k = 0
    t, t2 = int(ts_s[k]), int(ts_s[k + 1])
    a, s, a2, s2 = ac[t].sqrt(), (1 - ac[t]).sqrt(), ac[t2].sqrt(), (1 - ac[t2]).sqrt()
    z = a * mu + (a**2 * v + s**2).sqrt() * torch.randn(64, 1, 4, 4, generator=g, dtype=torch.float64)
    idx = torch.full((64,), k, dtype=torch.long)
    x_tilde, z2 = distillation_target(teacher, z, idx, sched, ts_t)
    x0_teacher = (z - s * teacher(z, torch.full((64,), t))) / a
    one = SAMPLERS["ddim"](teacher, z, sched, timesteps=ts_s[:2], final_step=False)
    exact = a2 * mu + (a2**2 * v + s2**2).sqrt() / (a**2 * v + s**2).sqrt() * (z - a * mu)
    err_two, err_one = (z2 - exact).pow(2).mean(), (one - exact).pow(2).mean()
    assert err_two < 0.7 * err_one, (err_two, err_one)  # measured 0.49
    # the x̂_0 that would land on the exact ODE solution in one step; x̃ is much closer to it than the teacher's x̂_0
    ratio = s2 / s
    x_star = (exact - ratio * z) / (a2 - ratio * a)
    d_tilde, d_teacher = (x_tilde - x_star).pow(2).mean(), (x0_teacher - x_star).pow(2).mean()
    assert d_tilde < 0.7 * d_teacher, (d_tilde, d_teacher)  # measured 0.40

    data = (mu + v**0.5 * torch.randn(64, 1, 4, 4, generator=g, dtype=torch.float64), None)
    losses = {}
    for n in (2, 50):
        loss, logs = progressive_distillation_loss(teacher, data, torch.Generator().manual_seed(3), teacher_eps=teacher,
                                                   schedule=sched, teacher_timesteps=teacher_timesteps(1000, n, "trailing"))
        losses[n] = logs["mse_x0"]
    assert losses[2] > 5e-4 and losses[50] < 0.01 * losses[2], losses  # measured 1.9e-3, 5.4e-6
    point = GaussianMixture(mu, [1e-6]).eps_model(sched)
    data = (mu.expand(16, -1, -1, -1).clone(), None)
    _, logs = progressive_distillation_loss(point, data, torch.Generator().manual_seed(3), teacher_eps=point,
                                            schedule=sched, teacher_timesteps=ts_t)
    assert logs["mse_x0"] < 1e-8, logs


def _tiny_teacher():
    """A tiny U-Net with all weights perturbed (a fresh one outputs ε ≡ 0, for which DDIM is exact and there is
    nothing to distil)."""
    torch.manual_seed(0)
    net = UNet(UNetConfig(base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention=(), mid_attention=False,
                          head_dim=8))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return net


@pytest.mark.parametrize("weighting", ["truncated_snr", "snr"])
def test_a_few_fit_steps_lower_the_distillation_loss(weighting):
    """(c) The student (initialised from the teacher) gets closer to the teacher's two steps."""
    sched = make_schedule("linear", 200)
    teacher = _tiny_teacher().eval()
    ts_t = teacher_timesteps(200, 2)
    g = torch.Generator().manual_seed(0)
    x = torch.tanh(2 * torch.randn(64, 1, 8, 8, generator=g))
    data = torch.utils.data.TensorDataset(x, torch.zeros(64, dtype=torch.long))
    fixed = dict(idx=torch.arange(64) % 2, noise=torch.randn(64, 1, 8, 8, generator=g))
    eval_loss = partial(progressive_distillation_loss, teacher_eps=teacher, schedule=sched, teacher_timesteps=ts_t,
                        weighting=weighting, **fixed)
    with torch.no_grad():
        before = eval_loss(make_student(teacher), (x, None))[0].item()
    res, ts_s = distill(teacher, data, FitConfig(steps=40, batch_size=32, lr=3e-4, warmup=0, ema_decay=None, progress=False,
                                                 log_every=10), schedule=sched, student_steps=2, weighting=weighting)
    assert ts_s.tolist() == halve_timesteps(ts_t).tolist()
    with torch.no_grad():
        after = eval_loss(res.model.eval(), (x, None))[0].item()
    assert before > 0 and after < 0.7 * before, (before, after)  # measured 0.38 (truncated_snr), 0.49 (snr)
    assert all(p.requires_grad is False for p in teacher.parameters())


def test_bad_grids_and_weighting():
    with pytest.raises(ValueError, match="needs a teacher grid"):
        teacher_timesteps(10, 6)
    with pytest.raises(ValueError, match="even number"):
        halve_timesteps([9, 5, 1])
    with pytest.raises(ValueError, match="descending"):
        halve_timesteps([1, 5])
    sched = make_schedule("linear", 100)
    with pytest.raises(ValueError, match="unknown weighting"):
        progressive_distillation_loss(lambda x, t: x, torch.zeros(2, 1, 4, 4), teacher_eps=lambda x, t: x, schedule=sched,
                                      teacher_timesteps=teacher_timesteps(100, 2), weighting="min_snr")


# ----------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    from ldmcourse.cli import main

    out = tmp_path_factory.mktemp("teacher")
    assert main(["train", "ddpm", "--dataset", "mnist5k", "--profile", "smoke", "--out", str(out), "--device", "cpu",
                 "--steps", "3", "--n-train", "64"]) == 0
    return out / "checkpoint.pt"


def test_cli_distill_sample_round_trip(tiny_teacher, tmp_path, capsys):
    """(d) `ldmcourse distill` writes a ddpm checkpoint that `sample` loads and samples on the distilled grid."""
    from ldmcourse.checkpoint import load_checkpoint
    from ldmcourse.cli import main

    out = tmp_path / "student"
    capsys.readouterr()
    assert main(["distill", "--teacher", str(tiny_teacher), "--steps", "2", "--out", str(out), "--profile", "smoke",
                 "--device", "cpu", "--train-steps", "3"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["timesteps"] == [750, 250] and summary["teacher_timesteps"] == [750, 500, 250, 0]  # leading
    meta = load_checkpoint(out / "checkpoint.pt")["meta"]
    assert meta["kind"] == "ddpm" and meta["distill"]["timesteps"] == [750, 250]
    png = tmp_path / "s.png"
    assert main(["sample", "--ckpt", str(out / "checkpoint.pt"), "--n", "4", "--out", str(png), "--device", "cpu"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert png.exists() and res["steps"] == 2  # defaults to the distilled grid


def test_ddpm_sample_uses_the_recorded_grid(tiny_teacher):
    """The recipe samples a distilled checkpoint on its recorded grid (not make_timesteps') at its step count."""
    from ldmcourse.cli import load_model

    model, meta, recipe = load_model(str(tiny_teacher), torch.device("cpu"))
    meta = {**meta, "distill": {"steps": 2, "timesteps": [990, 400]}}
    seen = []
    cb = lambda i, t, t_next, x, x0: seen.append(t)  # noqa: E731
    recipe.sample(model, meta, 2, torch.Generator().manual_seed(0), "cpu", sampler="ddim", steps=2, callback=cb)
    assert seen == [990, 400]
    seen.clear()
    recipe.sample(model, meta, 2, torch.Generator().manual_seed(0), "cpu", sampler="ddim", steps=3, callback=cb)
    assert seen == make_timesteps(1000, 3, "leading").tolist()  # the config's default grid (DiffusionConfig.spacing)


def test_cli_distill_bad_input(tiny_teacher, tmp_path, capsys):
    """(e) Clear errors: a missing teacher, a non-diffusion checkpoint, an impossible step count."""
    from ldmcourse.cli import main

    out = str(tmp_path / "x")
    assert main(["distill", "--teacher", str(tmp_path / "nope.pt"), "--steps", "2", "--out", out]) == 2
    assert "does not exist" in capsys.readouterr().err
    ae = tmp_path / "ae"
    assert main(["train", "ae", "--dataset", "digits", "--profile", "smoke", "--out", str(ae), "--device", "cpu",
                 "--steps", "2"]) == 0
    capsys.readouterr()
    assert main(["distill", "--teacher", str(ae / "checkpoint.pt"), "--steps", "2", "--out", out]) == 2
    assert "not a pixel-space diffusion model" in capsys.readouterr().err
    assert main(["distill", "--teacher", str(tiny_teacher), "--steps", "600", "--out", out, "--device", "cpu"]) == 2
    assert "needs a teacher grid" in capsys.readouterr().err


def test_cli_second_round_halves_the_students_own_grid(tiny_teacher, tmp_path, capsys):
    """Round 2 distils a distilled student on the grid it learnt (not make_timesteps'), and refuses
    a step count that is not half of that grid."""
    from ldmcourse.checkpoint import load_checkpoint
    from ldmcourse.cli import main

    r1, r2 = tmp_path / "r1", tmp_path / "r2"
    common = ["--profile", "smoke", "--device", "cpu", "--train-steps", "2"]
    assert main(["distill", "--teacher", str(tiny_teacher), "--steps", "4", "--out", str(r1), *common]) == 0
    grid1 = load_checkpoint(r1 / "checkpoint.pt")["meta"]["distill"]["timesteps"]
    assert grid1 == [875, 625, 375, 125]  # every other point of leading-8
    capsys.readouterr()
    assert main(["distill", "--teacher", str(r1 / "checkpoint.pt"), "--steps", "2", "--out", str(r2), *common]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["teacher_timesteps"] == grid1 and summary["timesteps"] == [875, 375]  # not leading-4 [750, 500, 250, 0]
    d2 = load_checkpoint(r2 / "checkpoint.pt")["meta"]["distill"]
    assert d2["round"] == 2 and d2["timesteps"] == [875, 375]
    assert main(["distill", "--teacher", str(r1 / "checkpoint.pt"), "--steps", "3", "--out", str(tmp_path / "bad"), *common]) == 2
    assert "use --steps 2" in capsys.readouterr().err
