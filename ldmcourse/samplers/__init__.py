"""Samplers: plain functions ``SAMPLERS[name](eps_model, x_T, schedule, steps=N, generator=g, timesteps=None,
spacing="leading", callback=None, final_step=True, **options) -> x``.

- ``eps_model(x, t)``: an ε-prediction model; ``t`` is a (B,) LongTensor of training indices for a
  :class:`~ldmcourse.schedules.Schedule` (float times for an SDE from :mod:`ldmcourse.sde`).
  x₀- or v-predicting networks are turned into ε-models by ``ldmcourse.diffusion.as_eps_model``.
- ``x_T`` sits at ``timesteps[0]``; with ``final_step=True`` the result is clean data (ᾱ = 1), with
  ``final_step=False`` the sampler stops at ``timesteps[-1]``.
- ``callback(i, t, t_next, x, x0_pred)`` runs after every step; a tensor it returns replaces x.
- ``generator``: a torch.Generator, or one generator per sample (see :func:`sample_chunked`).

Modules: :mod:`.grid` (shared pieces), :mod:`.discrete` (DDIM, PLMS), :mod:`.dpm_solver`,
:mod:`.continuous` (Euler, Heun, Euler–Maruyama, predictor–corrector, adaptive RK).
"""

from __future__ import annotations

from typing import Callable

import torch

from .continuous import adaptive, euler, euler_maruyama, heun, pc
from .discrete import ddim, plms
from .dpm_solver import dpm_solver_1, dpm_solver_2, dpm_solver_3, dpm_solver_pp_2m

SAMPLERS: dict[str, Callable] = {
    "ddim": ddim,
    "plms": plms,
    "dpm_solver_1": dpm_solver_1,
    "dpm_solver_2": dpm_solver_2,
    "dpm_solver_3": dpm_solver_3,
    "dpm_solver++_2m": dpm_solver_pp_2m,
    "euler": euler,
    "heun": heun,
    "euler_maruyama": euler_maruyama,
    "pc": pc,
    "adaptive": adaptive,
}
try:  # DDPM ancestral sampling lives with the DDPM process (issue 5); registered here, not copied
    from ..diffusion import ddpm_sample

    SAMPLERS = {"ddpm": ddpm_sample, **SAMPLERS}
except ImportError:  # pragma: no cover - only before ldmcourse.diffusion exists
    pass

DETERMINISTIC = ("ddim", "plms", "dpm_solver_1", "dpm_solver_2", "dpm_solver_3", "dpm_solver++_2m", "euler", "heun", "adaptive")


def get_sampler(name_or_fn) -> Callable:
    if callable(name_or_fn):
        return name_or_fn
    if name_or_fn not in SAMPLERS:
        raise KeyError(f"unknown sampler {name_or_fn!r}; choose one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name_or_fn]


class CountCalls:
    """Wrap an ε-model to count its calls (NFE): ``m = CountCalls(eps_model); …; m.n``."""

    def __init__(self, eps_model: Callable):
        self.eps_model, self.n = eps_model, 0

    def __call__(self, x, t, *args, **kwargs):
        self.n += 1
        return self.eps_model(x, t, *args, **kwargs)


def _accepts_generator_list(fn: Callable) -> bool:
    return getattr(fn, "__module__", "").startswith((__name__, "ldmcourse.diffusion"))


@torch.no_grad()
def sample_chunked(sampler, eps_model: Callable, shape, n: int, batch_size: int, generator: torch.Generator | None = None,
                   schedule=None, prior_std: float = 1.0, device=None, dtype=torch.float32, out_device="cpu",
                   **kwargs) -> torch.Tensor:
    """Draw ``n`` samples of ``shape`` (C, H, W) in chunks of ``batch_size``; the result does not depend on
    ``batch_size``. From ``generator`` we first draw one seed per sample; sample i's x_T (N(0, prior_std²))
    and every noise draw of the sampler come from its own generator, so chunk boundaries change nothing.
    Each finished chunk moves to ``out_device``, so only one chunk lives on the accelerator. On CUDA an
    out-of-memory error halves the chunk and retries (same result, by the above). ``kwargs`` go to the
    sampler (``steps=``, ``eta=``, …). Samplers from outside the course that cannot take a list of
    generators get one generator per chunk instead: then the result is reproducible for a given
    batch_size but changes with it (a warning says so).
    """
    fn = get_sampler(sampler)
    if schedule is None:
        raise ValueError("sample_chunked needs schedule= (a Schedule or an SDE)")
    if n < 1 or batch_size < 1:
        raise ValueError(f"n={n} and batch_size={batch_size} must be >= 1")
    device = torch.device(device) if device is not None else (generator.device if generator is not None else torch.device("cpu"))
    gen_device = device
    seeds = torch.randint(0, 2**62, (n,), generator=generator, device=generator.device if generator is not None else "cpu").tolist()
    per_sample = _accepts_generator_list(fn)
    if not per_sample:
        import warnings

        warnings.warn(f"{getattr(fn, '__name__', fn)} draws noise for the whole batch: samples depend on batch_size", stacklevel=2)
    out, i = [], 0
    while i < n:
        b = min(batch_size, n - i)
        gens = [torch.Generator(device=gen_device).manual_seed(s) for s in seeds[i:i + b]]
        x_T = prior_std * torch.stack([torch.randn(tuple(shape), generator=g, device=device, dtype=dtype) for g in gens])
        try:
            x = fn(eps_model, x_T, schedule, generator=gens if per_sample else gens[0], **kwargs)
        except torch.cuda.OutOfMemoryError:
            if batch_size == 1:
                raise
            batch_size = max(1, batch_size // 2)
            torch.cuda.empty_cache()
            continue
        out.append(x.to(out_device))
        i += b
    return torch.cat(out)


__all__ = ["SAMPLERS", "DETERMINISTIC", "get_sampler", "sample_chunked", "CountCalls", "ddim", "plms", "dpm_solver_1",
           "dpm_solver_2", "dpm_solver_3", "dpm_solver_pp_2m", "euler", "heun", "euler_maruyama", "pc", "adaptive"]
