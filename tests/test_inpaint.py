"""Inpainting as a wrapper around any sampler, tested through the package's own samplers.

Two analytic cases. Flat images x_0 = c·1 (c ~ N(0, s²)): the hole must take the known pixels'
value. Gaussian data x_0 ~ N(μ, Σ) on a 3x3 image with correlated pixels: with the exact ε every
sampler step is affine in x plus Gaussian noise, so (a) the replacement method's output moments can
be propagated exactly and must match the samples, and (b) RePaint's hole must approach the analytic
conditional N(μ_h + Σ_hk Σ_kk⁻¹ (x_k - μ_k), Σ_hh - Σ_hk Σ_kk⁻¹ Σ_kh), which the unconditional
baseline misses. Neither holds by construction of the final blend (it only fixes the known pixels).
"""

import math

import numpy as np
import pytest
import torch

from ldmcourse.inpaint import (InpaintOptions, blend, box_mask, half_mask, inpaint, inpaint_latent, latent_mask, load_mask,
                               make_mask, masked_mse, noise_to, renoise, replacement_callback, stroke_mask)
from ldmcourse.samplers import SAMPLERS
from ldmcourse.schedules import make_schedule, make_timesteps
from ldmcourse.sde import VESDE, VPSDE, DiscreteVP, as_process

SCHED = make_schedule("linear", 1000)
S_C = 0.7  # prior std of the constant c


def flat_image_eps(process=SCHED):
    """E[ε | x_t] for x_0 = c·1, c ~ N(0, S_C²), on any process: depends on x_t only through its mean m = a c + b ε̄."""
    p = as_process(process)

    def eps(x, t):
        a, b = (float(v) for v in p.marginal(torch.as_tensor(t).flatten()[0].double().cpu()))
        d = x[0].numel()
        m = x.mean(dim=(1, 2, 3), keepdim=True)
        c_hat = a * S_C**2 * m / (a**2 * S_C**2 + b**2 / d)  # E[c | m]
        return (x - a * c_hat) / b

    return eps


def flat_batch(n=6, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = S_C * torch.randn(n, generator=g)
    return c.view(-1, 1, 1, 1).expand(n, 1, size, size).clone()


# ------------------------------------------------------------------------------------------------
# masks
# ------------------------------------------------------------------------------------------------

def test_masks_hide_what_they_say():
    assert box_mask(32, 0.5).shape == (1, 1, 32, 32)
    assert float((1 - box_mask(32, 0.5)).sum()) == 16 * 16
    assert float(box_mask(32, 0.5)[0, 0, 16, 16]) == 0 and float(box_mask(32, 0.5)[0, 0, 0, 0]) == 1
    hr = half_mask(32, "right")
    assert float(hr[..., :16].min()) == 1 and float(hr[..., 16:].max()) == 0
    assert float(half_mask(32, "top")[..., :16, :].max()) == 0
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    s1, s2 = stroke_mask(32, generator=g1), stroke_mask(32, generator=g2)
    assert torch.equal(s1, s2) and 0.05 < float((1 - s1).mean()) < 0.9
    with pytest.raises(ValueError, match="choose one of"):
        make_mask("circle", 32)
    with pytest.raises(ValueError, match="side"):
        half_mask(32, "middle")


def test_user_mask_png_white_means_fill(tmp_path):
    from PIL import Image

    m = np.zeros((28, 28), dtype=np.uint8)
    m[:, 14:] = 255  # white right half = fill
    Image.fromarray(m).save(tmp_path / "m.png")
    keep = load_mask(tmp_path / "m.png", 28)
    assert torch.equal(keep, half_mask(28, "right"))
    assert load_mask(torch.tensor(m), 14).shape == (1, 1, 14, 14)


def test_latent_mask_keeps_only_fully_known_patches():
    keep = torch.ones(1, 1, 8, 8)
    keep[..., 3, 3] = 0  # one unknown pixel poisons its whole 4x4 patch
    lm = latent_mask(keep, 4)
    assert lm.shape == (1, 1, 2, 2) and torch.equal(lm, torch.tensor([[[[0.0, 1.0], [1.0, 1.0]]]]))
    assert torch.equal(latent_mask(keep, 1), keep)


# ------------------------------------------------------------------------------------------------
# forward-process pieces
# ------------------------------------------------------------------------------------------------

def test_callback_noises_known_region_to_the_level_actually_reached():
    """With strided sampling the known region must carry the noise of t_next (not of t-1: the seed's bug)."""
    x0 = torch.full((2000, 1, 1, 1), 0.5)
    cb = replacement_callback(x0, torch.ones(1, 1, 1, 1), SCHED, torch.Generator().manual_seed(0))
    for t_next in (979, 499, 19):
        out = cb(0, t_next + 20, t_next, torch.zeros_like(x0), None)
        ab = float(SCHED.alphas_cumprod[t_next])
        assert abs(float(out.mean()) - 0.5 * math.sqrt(ab)) < 0.05
        assert abs(float(out.std()) - math.sqrt(1 - ab)) < 0.05
    assert torch.equal(cb(0, 5, -1, torch.zeros_like(x0), None), x0)  # final step: the clean original
    # on the VE SDE the sampler's final step reports t_next = 0.0 (σ(0) = σ_min > 0): that is clean data too
    ve = VESDE()
    cb = replacement_callback(x0, torch.ones(1, 1, 1, 1), ve, torch.Generator().manual_seed(0))
    assert torch.equal(cb(0, 0.01, 0.0, torch.zeros_like(x0), None), x0)
    out = cb(0, 0.6, 0.5, torch.zeros_like(x0), None)
    assert abs(float(out.std()) - float(ve.marginal(0.5)[1])) < 0.05 * float(ve.marginal(0.5)[1])


@pytest.mark.parametrize("process", [SCHED, VPSDE(), VESDE()], ids=["discrete", "vp", "ve"])
def test_renoise_gives_the_forward_marginal(process):
    """x_b ~ q(x_b | x_0), then renoise b -> a, is a sample of q(x_a | x_0) = N(α_a x_0, σ_a² I)."""
    g = torch.Generator().manual_seed(1)
    p = as_process(process)
    tb, ta = (300, 600) if not p.continuous else (0.3, 0.6)
    x0 = torch.full((20000,), -0.8)
    xa = renoise(noise_to(x0, tb, process, g), tb, ta, process, g)
    a, s = (float(v) for v in p.marginal(torch.tensor(float(ta), dtype=torch.float64)))
    assert abs(float(xa.mean()) - (-0.8) * a) < 0.02 * max(1.0, s)
    assert abs(float(xa.std()) - s) < 0.02 * s


def test_fractional_index_is_interpolated():
    """``adaptive`` reports fractional training indices: the known region gets the interpolated level."""
    x0 = torch.zeros(20000, 1, 1, 1)
    out = noise_to(x0, 10.5, SCHED, torch.Generator().manual_seed(0))
    ab = float(DiscreteVP(SCHED).alpha_bar(10.5))
    assert float(SCHED.alphas_cumprod[11]) < ab < float(SCHED.alphas_cumprod[10])
    assert abs(float(out.std()) - math.sqrt(1 - ab)) < 0.02 * math.sqrt(1 - ab)


# ------------------------------------------------------------------------------------------------
# the wrappers, through the package's samplers
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(SAMPLERS))
@pytest.mark.parametrize("method", ["replace", "repaint", "none"])
def test_every_sampler_runs_and_keeps_the_known_region(name, method):
    """The contract (the final blend makes the known region exact; this checks that every sampler runs)."""
    x = flat_batch(3, 8)
    keep = box_mask(8, 0.5)
    out = inpaint(SAMPLERS[name], flat_image_eps(), x, keep, SCHED, steps=10, generator=torch.Generator().manual_seed(0),
                  method=method, jump_length=3, resample=2)
    assert out.shape == x.shape and torch.isfinite(out).all()
    known = keep.expand_as(x).bool()
    torch.testing.assert_close(out[known], x[known], atol=1e-6, rtol=0)


@pytest.mark.parametrize("process,name", [(SCHED, "ddim"), (SCHED, "dpm_solver++_2m"), (VPSDE(), "heun"),
                                          (VPSDE(), "euler_maruyama"), (VESDE(), "ddim"), (VESDE(), "pc")],
                         ids=["discrete-ddim", "discrete-dpm++", "vp-heun", "vp-em", "ve-ddim", "ve-pc"])
def test_replacement_fills_the_hole_with_the_right_value(process, name):
    """Flat images: the hole must take the value of the known pixels; the unconditional baseline cannot.
    On the discrete schedule and on the VP and VE SDEs alike."""
    x = flat_batch(8, 16, seed=2)
    keep = box_mask(16, 0.5)
    err = {}
    spacing = "leading" if not as_process(process).continuous else "logsnr"
    for method in ("replace", "repaint", "none"):
        out = inpaint(SAMPLERS[name], flat_image_eps(process), x, keep, process, steps=50, method=method, jump_length=5,
                      resample=3, spacing=spacing, generator=torch.Generator().manual_seed(0))
        err[method] = float(masked_mse(out, x, keep).mean())
    assert err["none"] > 0.3  # ≈ 2 S_C² = 0.98: an independent draw of c
    assert err["replace"] < 0.05 * err["none"], err
    assert err["repaint"] < 0.05 * err["none"], err


# Gaussian data on a 3x3 image: exponential-kernel covariance (neighbour correlation 0.51), right column unknown
H = 3
_pos = torch.stack(torch.meshgrid(torch.arange(H), torch.arange(H), indexing="ij"), -1).reshape(-1, 2).double()
SIGMA = 0.25 * torch.exp(-torch.cdist(_pos, _pos) / 1.5)
MU = torch.linspace(-0.3, 0.3, H * H, dtype=torch.float64)
KEEP = torch.ones(1, 1, H, H, dtype=torch.float64)
KEEP[..., :, 2] = 0
K_IDX, H_IDX = KEEP.flatten().bool(), ~KEEP.flatten().bool()
X_KNOWN = MU + torch.linalg.cholesky(SIGMA) @ torch.randn(H * H, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def gaussian_eps(process):
    """E[ε | x_t] = σ Σ_t⁻¹ (x_t - α μ), Σ_t = α² Σ + σ² I."""
    p = as_process(process)

    def eps(x, t):
        a, s = (float(v) for v in p.marginal(torch.as_tensor(t).flatten()[0].double().cpu()))
        xf = x.reshape(x.shape[0], -1)
        return (s * torch.linalg.solve(a**2 * SIGMA + s**2 * torch.eye(H * H, dtype=x.dtype), (xf - a * MU).T).T).reshape(x.shape)

    return eps


def _hole_moments(out):
    hole = out.reshape(out.shape[0], -1)[:, H_IDX]
    return hole.mean(0), torch.cov(hole.T)


def test_replacement_moments_match_the_exact_chain():
    """(a) DDPM ancestral sampling + replacement on Gaussian data, propagated exactly: every step is
    x_s = A x + b + √β' z on the whole image (Ho et al. eq. 7 and 15 with the oracle ε), then the known
    pixels are replaced by α_s x_k + σ_s z' (independent of the rest). The samples' hole mean and
    covariance must match within Monte-Carlo error."""
    n, steps = 40_000, 8  # few steps: a known region noised to a wrong level (t, or t-1) moves the hole by > 10 SE
    x = X_KNOWN.reshape(1, 1, H, H).expand(n, -1, -1, -1).clone()
    out = inpaint(SAMPLERS["ddpm"], gaussian_eps(SCHED), x, KEEP, SCHED, steps=steps, method="replace",
                  spacing="leading", generator=torch.Generator().manual_seed(3))
    ac, D, eye = SCHED.alphas_cumprod.tolist(), H * H, torch.eye(H * H, dtype=torch.float64)
    ts = make_timesteps(1000, steps, "leading").tolist()

    def replace(m, C, a_s):  # known pixels <- √ᾱ_s x_k + √(1-ᾱ_s) z
        m, C = m.clone(), C.clone()
        m[K_IDX] = math.sqrt(a_s) * X_KNOWN[K_IDX]
        C[K_IDX, :], C[:, K_IDX] = 0.0, 0.0
        C[K_IDX, K_IDX] = 1 - a_s
        return m, C

    m, C = replace(torch.zeros(D, dtype=torch.float64), eye.clone(), ac[ts[0]])
    for t, s in zip(ts, ts[1:] + [-1]):
        a_t, a_s = ac[t], (ac[s] if s >= 0 else 1.0)
        Sinv = torch.linalg.inv(a_t * SIGMA + (1 - a_t) * eye)
        P, q = (eye - (1 - a_t) * Sinv) / math.sqrt(a_t), (1 - a_t) * Sinv @ MU  # x̂_0 = P x + q
        beta = 1 - a_t / a_s
        c1, c2 = math.sqrt(a_s) * beta / (1 - a_t), math.sqrt(1 - beta) * (1 - a_s) / (1 - a_t)  # eq. 7
        A = c1 * P + c2 * eye
        m, C = A @ m + c1 * q, A @ C @ A.T + (beta if s >= 0 else 0.0) * eye
        m, C = replace(m, C, a_s)
    mean, cov = _hole_moments(out)
    m_h, C_h = m[H_IDX], C[H_IDX][:, H_IDX]
    se = (C_h.diag() / n).sqrt()
    assert bool(((mean - m_h).abs() < 4 * se).all()), (mean, m_h)
    torch.testing.assert_close(cov, C_h, atol=4 * math.sqrt(2 / n) * float(C_h.diag().max()), rtol=0)


def _posterior():
    k, h = K_IDX, H_IDX
    gain = SIGMA[h][:, k] @ torch.linalg.inv(SIGMA[k][:, k])
    return MU[h] + gain @ (X_KNOWN[k] - MU[k]), SIGMA[h][:, h] - gain @ SIGMA[k][:, h]


@pytest.mark.parametrize("process,name", [(SCHED, "euler_maruyama"), (VPSDE(), "ddpm")], ids=["discrete-em", "vp-ddpm"])
def test_repaint_hole_matches_the_analytic_conditional(process, name):
    """(b) RePaint (j = 2, r = 20) draws the hole from the Gaussian conditional posterior: mean within 0.035,
    std within 0.03 (measured 0.019 / 0.011-0.013; 4000 samples), while the unconditional baseline is off by > 0.05."""
    n = 4000
    x = X_KNOWN.reshape(1, 1, H, H).expand(n, -1, -1, -1).clone()
    post_mean, post_cov = _posterior()
    err = {}
    for method in ("repaint", "none"):
        out = inpaint(SAMPLERS[name], gaussian_eps(process), x, KEEP, process, steps=50, method=method, jump_length=2,
                      resample=20, spacing="linspace", generator=torch.Generator().manual_seed(1))
        mean, cov = _hole_moments(out)
        err[method] = (float((mean - post_mean).abs().max()), float((cov.diag().sqrt() - post_cov.diag().sqrt()).abs().max()))
    assert err["repaint"][0] < 0.035 and err["repaint"][1] < 0.03, err
    assert err["none"][0] > 0.05 and err["none"][1] > 0.05, err


def test_repaint_calls_the_model_r_times_per_step():
    """Every step between visited timesteps runs r times; the last step to clean data runs once."""
    calls = []
    model = flat_image_eps()

    def counting_eps(x, t):
        calls.append(int(t[0]))
        return model(x, t)

    x, keep = flat_batch(2, 8), half_mask(8)
    inpaint(SAMPLERS["ddim"], counting_eps, x, keep, SCHED, steps=20, method="repaint", jump_length=4, resample=3,
            generator=torch.Generator().manual_seed(0))
    assert len(calls) == 3 * (20 - 1) + 1
    assert calls[:12] == [int(v) for v in make_timesteps(1000, 20)[:4]] * 3  # the first segment, three times


def test_latent_inpainting_blends_known_pixels_back():
    """Latent space with a toy first stage (f = 2 average-pool / nearest-upsample)."""
    f = 2
    encode = lambda x: torch.nn.functional.avg_pool2d(x, f)  # noqa: E731
    decode = lambda z: torch.nn.functional.interpolate(z, scale_factor=f)  # noqa: E731
    x, keep = flat_batch(4, 16, seed=5), box_mask(16, 0.5)
    out = inpaint_latent(SAMPLERS["ddim"], flat_image_eps(), x, keep, SCHED, encode, decode, f, steps=30,
                         generator=torch.Generator().manual_seed(0))
    known = keep.expand_as(x).bool()
    torch.testing.assert_close(out[known], x[known], atol=1e-6, rtol=0)
    assert float(masked_mse(out, x, keep).mean()) < 0.05
    with pytest.raises(ValueError, match="factor"):
        inpaint_latent(SAMPLERS["ddim"], flat_image_eps(), x, keep, SCHED, encode, decode, 4, steps=5)


def test_bad_inputs_are_clear_errors():
    x = flat_batch(2, 8)
    with pytest.raises(ValueError, match="method"):
        inpaint(SAMPLERS["ddim"], flat_image_eps(), x, box_mask(8), SCHED, method="magic")
    with pytest.raises(ValueError, match="keep must be"):
        inpaint(SAMPLERS["ddim"], flat_image_eps(), x, box_mask(16), SCHED)
    with pytest.raises(ValueError, match="descending"):
        inpaint(SAMPLERS["ddim"], flat_image_eps(), x, box_mask(8), SCHED, timesteps=[10, 500])
    for bad, match in ((dict(n=0), "--n 0"), (dict(resample=0), "--resample 0"), (dict(method="x"), "--method"),
                       (dict(steps=0), "--steps 0"), (dict(sampler="magic"), "--sampler")):
        with pytest.raises(ValueError, match=match):
            InpaintOptions(**bad)


def test_blend_and_masked_mse():
    a, b, keep = torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2), torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    assert torch.equal(blend(a, b, keep), keep)
    assert float(masked_mse(a, b, keep)) == 1.0 and float(masked_mse(blend(a, b, keep), b, keep)) == 1.0
