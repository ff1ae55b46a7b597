"""Inpainting as a wrapper around any sampler.

The analytic case: data x_0 = c·1 (every pixel equal, c ~ N(0, s²)). Its exact ε-predictor is known
in closed form, and a correct inpainter must fill the hole with the known pixels' value c.
"""

import math

import numpy as np
import pytest
import torch

from ldmcourse.inpaint import (blend, box_mask, half_mask, inpaint, inpaint_latent, latent_mask, load_mask, make_mask,
                               masked_mse, noise_to, renoise, replacement_callback, stroke_mask)
from ldmcourse.schedules import make_schedule, make_timesteps
from ldmcourse.sde import DiscreteVP

SCHED = make_schedule("linear", 1000)
alpha_bar = lambda schedule, t: float(DiscreteVP(schedule).alpha_bar(t))  # noqa: E731
S_C = 0.7  # prior std of the constant c


def flat_image_eps(x, t):
    """E[ε | x_t] for x_0 = c·1, c ~ N(0, S_C²): depends on x_t only through its mean m = a c + b ε̄."""
    ab = torch.tensor([alpha_bar(SCHED, float(v)) for v in t.flatten()], dtype=x.dtype).view(-1, 1, 1, 1)
    a, b = ab.sqrt(), (1 - ab).sqrt()
    d = x[0].numel()
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    c_hat = a * S_C**2 * m / (a**2 * S_C**2 + b**2 / d)  # E[c | m]
    return (x - a * c_hat) / b


def standin_ddim(eps_model, x_T, schedule, steps=None, generator=None, timesteps=None, spacing="leading",
                 callback=None, final_step=True, eta=0.0):
    """A DDIM sampler that follows the SAMPLERS contract of COMMON.md (used until the real ones land)."""
    ts = make_timesteps(schedule.T, steps, spacing).tolist() if timesteps is None else [int(v) for v in timesteps]
    ac = schedule.alphas_cumprod.tolist()
    x = x_T
    for i, (t, s) in enumerate(zip(ts, ts[1:] + ([-1] if final_step else []))):
        a_t, a_s = ac[t], (ac[s] if s >= 0 else 1.0)
        eps = eps_model(x, torch.full((x.shape[0],), t, dtype=torch.long))
        x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
        sigma = eta * math.sqrt((1 - a_s) / (1 - a_t) * (1 - a_t / a_s)) if s >= 0 else 0.0
        x = math.sqrt(a_s) * x0 + math.sqrt(max(1 - a_s - sigma**2, 0.0)) * eps
        if sigma > 0:
            x = x + sigma * torch.randn(x.shape, generator=generator)
        if callback is not None:
            out = callback(i, t, s, x, x0)
            x = out if out is not None else x
    return x


def _samplers():
    out = {"standin_ddim": standin_ddim}
    try:
        from ldmcourse.samplers import SAMPLERS

        out.update(SAMPLERS)
    except ImportError:
        pass
    return out


SAMPLERS = _samplers()


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


def test_alpha_bar_interpolates_fractional_timesteps():
    assert alpha_bar(SCHED, 10) == pytest.approx(float(SCHED.alphas_cumprod[10]), rel=1e-12)
    mid = alpha_bar(SCHED, 10.5)
    assert float(SCHED.alphas_cumprod[11]) < mid < float(SCHED.alphas_cumprod[10])
    assert alpha_bar(SCHED, -1) == 1.0


def test_renoise_gives_the_forward_marginal():
    """x_b ~ q(x_b | x_0), then renoise b -> a, is a sample of q(x_a | x_0)."""
    g = torch.Generator().manual_seed(1)
    x0 = torch.full((20000,), -0.8)
    xb = noise_to(x0, 300, SCHED, g)
    xa = renoise(xb, 300, 600, SCHED, g)
    ab = float(SCHED.alphas_cumprod[600])
    assert abs(float(xa.mean()) - (-0.8) * math.sqrt(ab)) < 0.02
    assert abs(float(xa.std()) - math.sqrt(1 - ab)) < 0.02


# ------------------------------------------------------------------------------------------------
# the wrappers
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(SAMPLERS))
@pytest.mark.parametrize("method", ["replace", "repaint", "none"])
def test_known_region_equals_input_for_every_sampler(name, method):
    x = flat_batch(3, 8)
    keep = box_mask(8, 0.5)
    out = inpaint(SAMPLERS[name], flat_image_eps, x, keep, SCHED, steps=10, generator=torch.Generator().manual_seed(0),
                  method=method, jump_length=3, resample=2)
    assert out.shape == x.shape and torch.isfinite(out).all()
    known = keep.expand_as(x).bool()
    torch.testing.assert_close(out[known], x[known], atol=1e-6, rtol=0)


def test_replacement_fills_the_hole_with_the_right_value():
    """Flat images: the hole must take the value of the known pixels; the unconditional baseline cannot."""
    x = flat_batch(8, 16, seed=2)
    keep = box_mask(16, 0.5)
    err = {}
    for method in ("replace", "repaint", "none"):
        out = inpaint(standin_ddim, flat_image_eps, x, keep, SCHED, steps=50, method=method, jump_length=5, resample=3,
                      generator=torch.Generator().manual_seed(0))
        err[method] = float(masked_mse(out, x, keep).mean())
    assert err["none"] > 0.3  # ≈ 2 S_C² = 0.98: an independent draw of c
    assert err["replace"] < 0.05 * err["none"], err
    assert err["repaint"] < 0.05 * err["none"], err


def test_repaint_calls_the_model_r_times_per_step():
    """Every step between visited timesteps runs r times; the last step to clean data runs once."""
    calls = []

    def counting_eps(x, t):
        calls.append(int(t[0]))
        return flat_image_eps(x, t)

    x, keep = flat_batch(2, 8), half_mask(8)
    inpaint(standin_ddim, counting_eps, x, keep, SCHED, steps=20, method="repaint", jump_length=4, resample=3,
            generator=torch.Generator().manual_seed(0))
    assert len(calls) == 3 * (20 - 1) + 1
    assert calls[:12] == [int(v) for v in make_timesteps(1000, 20)[:4]] * 3  # the first segment, three times


def test_latent_inpainting_blends_known_pixels_back():
    """Latent space with a toy first stage (f = 2 average-pool / nearest-upsample)."""
    f = 2
    encode = lambda x: torch.nn.functional.avg_pool2d(x, f)  # noqa: E731
    decode = lambda z: torch.nn.functional.interpolate(z, scale_factor=f)  # noqa: E731
    x, keep = flat_batch(4, 16, seed=5), box_mask(16, 0.5)
    out = inpaint_latent(standin_ddim, flat_image_eps, x, keep, SCHED, encode, decode, f, steps=30,
                         generator=torch.Generator().manual_seed(0))
    known = keep.expand_as(x).bool()
    torch.testing.assert_close(out[known], x[known], atol=1e-6, rtol=0)
    assert float(masked_mse(out, x, keep).mean()) < 0.05
    with pytest.raises(ValueError, match="factor"):
        inpaint_latent(standin_ddim, flat_image_eps, x, keep, SCHED, encode, decode, 4, steps=5)


def test_bad_inputs_are_clear_errors():
    x = flat_batch(2, 8)
    with pytest.raises(ValueError, match="method"):
        inpaint(standin_ddim, flat_image_eps, x, box_mask(8), SCHED, method="magic")
    with pytest.raises(ValueError, match="keep must be"):
        inpaint(standin_ddim, flat_image_eps, x, box_mask(16), SCHED)


def test_blend_and_masked_mse():
    a, b, keep = torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2), torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    assert torch.equal(blend(a, b, keep), keep)
    assert float(masked_mse(a, b, keep)) == 1.0 and float(masked_mse(blend(a, b, keep), b, keep)) == 1.0
