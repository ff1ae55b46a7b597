"""Inpainting with an unconditional diffusion model, as a *wrapper around any sampler*.

RePaint (Lugmayr et al. 2022) shipped a 1,144-line copy of the sampler for a 138-line idea. Here
nothing is copied: every sampler in ``ldmcourse.samplers.SAMPLERS`` calls ``callback(i, t, t_next,
x, x0_pred)`` after each step and uses the tensor it returns, and accepts a list of ``timesteps``
with ``final_step=False`` to stop part-way. That is all inpainting needs.

``keep`` is a mask, 1 where the pixel is known and 0 where it must be generated, broadcastable to
the images.

- **Replacement** (Song et al. 2021, appendix I; "RePaint without resampling"): after each step
  t → t', overwrite the known region with a fresh forward sample of the original,
  x_{t'} ← keep ⊙ (α_{t'} x₀ + σ_{t'} ε) + (1 - keep) ⊙ x_{t'}   (RePaint eq. 8; α = √ᾱ, σ = √(1-ᾱ)).
  Note t' is the level the sampler *actually* reached: with strided sampling (50 of 1000 steps) it
  is the next visited timestep, not t-1. The levels come from the process (:mod:`ldmcourse.sde`), so
  this works on a DDPM schedule and on the VP, sub-VP and VE SDEs alike.
- **RePaint resampling**: the unknown region only sees the known one through the network, and one
  pass harmonises them poorly. Every ``jump_length`` steps, go back up from t_b to t_a with the
  forward process q(x_{t_a} | x_{t_b}) = N(α_{a|b} x, σ²_{a|b} I) (:func:`~ldmcourse.conversions.transition`)
  and re-run that segment,
  ``resample`` times in all (RePaint's j and r). The last step, to clean data, runs once.
- **Unconditional baseline** (``method="none"``): sample freely, paste the known region at the end.

At the end the known region is pasted in exactly (``blend``), so it equals the input. In latent
space (:func:`inpaint_latent`) the mask is taken to latent resolution (a latent pixel counts as known
only if its whole f×f patch is), inpainting runs on latents, and the decoded image is blended with
the original in pixel space.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from . import conversions as conv
from .samplers import SamplerChoice
from .sde import as_process
from .utils import randn_like

METHODS = ("replace", "repaint", "none")
MASKS = ("box", "half", "strokes")


@dataclass
class InpaintOptions(SamplerChoice):
    """The options of ``ldmcourse inpaint`` (flags generated from these fields); sampler, steps and spacing
    default to the model's (its DiffusionConfig)."""

    method: str = field(default="repaint", metadata={"help": "replace | repaint | none"})
    jump_length: int = field(default=5, metadata={"help": "RePaint: steps per segment (j)"})
    resample: int = field(default=5, metadata={"help": "RePaint: runs of each segment (r)"})
    n: int = field(default=4, metadata={"help": "inpaintings per image"})

    def __post_init__(self):
        super().__post_init__()
        if self.method not in METHODS:
            raise ValueError(f"--method {self.method!r}: choose one of {', '.join(METHODS)}")
        for name in ("jump_length", "resample", "n"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} {getattr(self, name)} must be >= 1")


# ------------------------------------------------------------------------------------------------
# masks: (1, 1, H, W) float, 1 = known, 0 = to fill
# ------------------------------------------------------------------------------------------------

def box_mask(size: int, frac: float = 0.5) -> torch.Tensor:
    """Hide a centred square of side ``frac * size``."""
    keep = torch.ones(1, 1, size, size)
    s = int(round(frac * size))
    a = (size - s) // 2
    keep[..., a:a + s, a:a + s] = 0
    return keep


def half_mask(size: int, side: str = "right") -> torch.Tensor:
    """Hide one half of the image: ``side`` in left, right, top, bottom."""
    keep = torch.ones(1, 1, size, size)
    h = size // 2
    region = {"left": (..., slice(None), slice(0, h)), "right": (..., slice(None), slice(h, None)),
              "top": (..., slice(0, h), slice(None)), "bottom": (..., slice(h, None), slice(None))}
    if side not in region:
        raise ValueError(f"side={side!r}: choose one of {', '.join(region)}")
    keep[region[side]] = 0
    return keep


def stroke_mask(size: int, n_strokes: int = 3, width: float = 3.0, vertices: int = 4,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Hide random brush strokes: polylines of ``vertices`` points, ``width`` pixels thick."""
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij")
    hit = torch.zeros(size, size, dtype=torch.bool)
    for _ in range(n_strokes):
        pts = torch.rand(vertices, 2, generator=generator) * (size - 1)  # (V, 2) as (y, x)
        for p, q in zip(pts[:-1], pts[1:]):  # distance of every pixel to the segment p-q
            d = q - p
            u = (((yy - p[0]) * d[0] + (xx - p[1]) * d[1]) / d.pow(2).sum().clamp_min(1e-8)).clamp(0, 1)
            dist = ((yy - p[0] - u * d[0]) ** 2 + (xx - p[1] - u * d[1]) ** 2).sqrt()
            hit |= dist <= width / 2
    return (~hit).float()[None, None]


def load_mask(path_or_tensor, size: int) -> torch.Tensor:
    """A user-given mask: a PNG path or a tensor, **white (1) = fill, black (0) = keep** (diffusers'
    and Stable Diffusion's convention), resized to ``size``. Returns ``keep`` (1 = known)."""
    if isinstance(path_or_tensor, torch.Tensor):
        m = path_or_tensor.float()
        if m.max() > 1:
            m = m / 255.0
    else:
        from PIL import Image
        import numpy as np

        m = torch.from_numpy(np.asarray(Image.open(path_or_tensor).convert("L"), dtype=np.float32) / 255.0)
    while m.ndim < 4:
        m = m[None]
    if m.shape[1] != 1:
        m = m.mean(1, keepdim=True)
    if m.shape[-1] != size or m.shape[-2] != size:
        m = F.interpolate(m, size=(size, size), mode="nearest")
    return (m < 0.5).float()


def make_mask(kind: str, size: int, generator: torch.Generator | None = None, **kwargs) -> torch.Tensor:
    """``box`` | ``half`` | ``strokes`` by name (the CLI's ``--mask`` values)."""
    if kind == "box":
        return box_mask(size, **kwargs)
    if kind == "half":
        return half_mask(size, **kwargs)
    if kind == "strokes":
        return stroke_mask(size, generator=generator, **kwargs)
    raise ValueError(f"unknown mask {kind!r}; choose one of {', '.join(MASKS)} or give a PNG file (white = fill)")


def latent_mask(keep: torch.Tensor, factor: int) -> torch.Tensor:
    """Pixel mask -> latent mask: a latent pixel is known only if its whole f×f patch is known (min-pool)."""
    return -F.max_pool2d(-keep.float(), factor) if factor > 1 else keep.float()  # (., 1, H, W) -> (., 1, H/f, W/f)


def blend(x: torch.Tensor, x_known: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """keep ⊙ x_known + (1 - keep) ⊙ x."""
    keep = keep.to(x)
    return keep * x_known + (1 - keep) * x


# ------------------------------------------------------------------------------------------------
# the wrappers
# ------------------------------------------------------------------------------------------------

def _level(process, t) -> tuple[float, float]:
    """(α, σ) at time ``t`` of ``process``; (1, 0) at clean data: t None, the process's clean time (the
    sampler's final step), or a negative index. Fractional indices (``adaptive``) are interpolated."""
    if t is None:
        return 1.0, 0.0
    t = float(t.flatten()[0]) if isinstance(t, torch.Tensor) else float(t)
    if t == process.clean_time or (not process.continuous and t < 0):
        return 1.0, 0.0
    a, s = process.marginal(torch.tensor(t, dtype=torch.float64))
    return float(a), float(s)


def noise_to(x0: torch.Tensor, t, schedule, generator: torch.Generator | None = None) -> torch.Tensor:
    """A sample of q(x_t | x_0) = N(α_t x_0, σ_t² I) (DDPM eq. 4) for a Schedule or an SDE; clean time returns x_0."""
    a, s = _level(as_process(schedule), t)
    return x0 if s == 0 else conv.marginal(x0, randn_like(x0, generator), a, s)


def renoise(x: torch.Tensor, t_from, t_to, schedule, generator: torch.Generator | None = None) -> torch.Tensor:
    """Go back up the chain: a sample of q(x_{t_to} | x_{t_from}) = N(α_{to|from} x, σ²_{to|from} I) for
    t_to > t_from (RePaint's time travel)."""
    process = as_process(schedule)
    a_ts, var = conv.transition(*_level(process, t_to), *_level(process, t_from))
    return a_ts * x + math.sqrt(var) * randn_like(x, generator)


def replacement_callback(x_known: torch.Tensor, keep: torch.Tensor, schedule,
                         generator: torch.Generator | None = None, user_callback: Callable | None = None) -> Callable:
    """The sampler callback of the replacement method: known region ← fresh q(x_{t_next} | x₀)."""
    keep, process = keep.to(x_known), as_process(schedule)

    def cb(i, t, t_next, x, x0_pred):
        if user_callback is not None:
            out = user_callback(i, t, t_next, x, x0_pred)
            x = out if isinstance(out, torch.Tensor) else x
        return blend(x, noise_to(x_known, t_next, process, generator), keep)

    return cb


@torch.no_grad()
def inpaint(sampler: Callable, eps_model: Callable, x_known: torch.Tensor, keep: torch.Tensor, schedule,
            steps: int = 50, generator: torch.Generator | None = None, method: str = "replace",
            jump_length: int = 10, resample: int = 1, timesteps: torch.Tensor | None = None,
            spacing: str = "leading", x_T: torch.Tensor | None = None, callback: Callable | None = None,
            **options) -> torch.Tensor:
    """Fill the region where ``keep == 0`` of ``x_known`` (B, C, H, W) with ``sampler`` and ``eps_model``.

    ``method``: ``replace`` | ``repaint`` (``jump_length`` j, ``resample`` r; r = 1 is ``replace``) |
    ``none`` (unconditional baseline). ``schedule``: a DDPM Schedule or an SDE of :mod:`ldmcourse.sde`.
    ``options`` go to the sampler (e.g. ``eta``). Returns images whose known region equals ``x_known``.
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r}: choose one of {', '.join(METHODS)}")
    if keep.ndim != 4 or keep.shape[-2:] != x_known.shape[-2:]:
        raise ValueError(f"keep must be (B or 1, 1 or C, H, W) matching x_known {tuple(x_known.shape)}, "
                         f"got {tuple(keep.shape)}; build it with box_mask/half_mask/stroke_mask(size={x_known.shape[-1]})")
    if resample < 1 or jump_length < 1:
        raise ValueError(f"resample={resample} and jump_length={jump_length} must be >= 1")
    process = as_process(schedule)
    ts = process.default_times(steps, spacing) if timesteps is None else process.check_times(timesteps)
    keep = keep.to(x_known)
    if x_T is None:  # the prior N(0, σ_T² I); σ_T = 1 for a DDPM schedule (as sample_chunked)
        x_T = (process.prior_std() if process.continuous else 1.0) * randn_like(x_known, generator)
    if method == "none":
        x = sampler(eps_model, x_T, schedule, steps=len(ts), generator=generator, timesteps=ts,
                    callback=callback, final_step=True, **options)
        return blend(x, x_known, keep)
    cb = replacement_callback(x_known, keep, schedule, generator, callback)
    x = blend(x_T, noise_to(x_known, ts[0], process, generator), keep)  # x_T at timesteps[0]
    if method == "replace" or resample == 1:
        x = sampler(eps_model, x, schedule, steps=len(ts), generator=generator, timesteps=ts,
                    callback=cb, final_step=True, **options)
        return blend(x, x_known, keep)
    # RePaint: segments ts[a .. a+j]; each is run r times, re-noising from its end back to its start between runs
    a = 0
    while True:
        b = min(a + jump_length, len(ts) - 1)
        last = b == len(ts) - 1
        seg = ts[a:b + 1]
        for u in range(resample):
            final = last and u == resample - 1
            x = sampler(eps_model, x, schedule, steps=len(seg), generator=generator, timesteps=seg,
                        callback=cb, final_step=final, **options)
            if u < resample - 1:  # time travel: x_{t_b} -> x_{t_a}
                x = renoise(x, seg[-1], seg[0], process, generator)
        if last:
            break
        a = b
    return blend(x, x_known, keep)


@torch.no_grad()
def inpaint_latent(sampler: Callable, eps_model: Callable, x_known: torch.Tensor, keep: torch.Tensor,
                   schedule, encode: Callable[[torch.Tensor], torch.Tensor],
                   decode: Callable[[torch.Tensor], torch.Tensor], factor: int, **kwargs) -> torch.Tensor:
    """Inpainting in latent space: ``encode`` (x -> scaled latent), :func:`inpaint` on latents with the
    mask min-pooled by ``factor``, ``decode``, then paste the known pixels back (the final blend)."""
    z_known = encode(x_known)  # (B, C, H, W) -> (B, c, H/f, W/f)
    keep_z = latent_mask(keep, factor)
    if keep_z.shape[-2:] != z_known.shape[-2:]:
        raise ValueError(f"mask at latent resolution is {tuple(keep_z.shape[-2:])} but latents are "
                         f"{tuple(z_known.shape[-2:])}: is factor={factor} the first stage's downsampling factor?")
    z = inpaint(sampler, eps_model, z_known, keep_z, schedule, **kwargs)
    return blend(decode(z), x_known, keep)


def masked_mse(x: torch.Tensor, target: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Per-image mean squared error over the *filled* region (keep == 0): (B,)."""
    hole = (1 - keep.to(x)).expand_as(x)
    return (((x - target) ** 2) * hole).flatten(1).sum(1) / hole.flatten(1).sum(1).clamp_min(1)


__all__ = ["METHODS", "MASKS", "InpaintOptions", "box_mask", "half_mask", "stroke_mask", "load_mask", "make_mask", "latent_mask",
           "blend", "noise_to", "renoise", "replacement_callback", "inpaint", "inpaint_latent", "masked_mse"]
