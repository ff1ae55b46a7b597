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
:mod:`.continuous` (Euler, Heun, Euler–Maruyama, stochastic Heun, predictor–corrector, adaptive RK).
"""

from __future__ import annotations

import inspect
import typing
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..diffusion import ddpm_sample  # DDPM ancestral sampling lives with the DDPM process
from ..utils import Progress
from .continuous import adaptive, euler, euler_maruyama, heun, pc, sde_heun
from .discrete import ddim, plms
from .dpm_solver import dpm_solver_1, dpm_solver_2, dpm_solver_3, dpm_solver_pp_2m

SAMPLERS: dict[str, Callable] = {
    "ddpm": ddpm_sample,
    "ddim": ddim,
    "plms": plms,
    "dpm_solver_1": dpm_solver_1,
    "dpm_solver_2": dpm_solver_2,
    "dpm_solver_3": dpm_solver_3,
    "dpm_solver++_2m": dpm_solver_pp_2m,
    "euler": euler,
    "heun": heun,
    "euler_maruyama": euler_maruyama,
    "sde_heun": sde_heun,
    "pc": pc,
    "adaptive": adaptive,
}

DETERMINISTIC = ("ddim", "plms", "dpm_solver_1", "dpm_solver_2", "dpm_solver_3", "dpm_solver++_2m", "euler", "heun", "adaptive")


def get_sampler(name_or_fn) -> Callable:
    if callable(name_or_fn):
        return name_or_fn
    if name_or_fn not in SAMPLERS:
        raise KeyError(f"unknown sampler {name_or_fn!r}; choose one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name_or_fn]


# the arguments every sampler takes (the contract above); everything else is a sampler's own option
CONTRACT = ("eps_model", "x_T", "schedule", "steps", "generator", "timesteps", "spacing", "callback", "final_step")


def sampler_options(name_or_fn) -> dict[str, Any]:
    """A sampler's own options: {name: type hint}, e.g. ``{"eta": float, "clip_x0": float | None}`` for DDIM."""
    fn = get_sampler(name_or_fn)
    hints = typing.get_type_hints(fn)
    return {n: hints.get(n, Any) for n, p in inspect.signature(fn).parameters.items()
            if n not in CONTRACT and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _fits(value, hint) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or hint is None or hint is type(None):
        return hint is Any or value is None
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return any(_fits(value, a) for a in args)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, origin or hint) if isinstance(origin or hint, type) else True


def check_options(name_or_fn, options: dict[str, Any], extra: tuple[str, ...] = ("spacing", "timesteps", "callback", "final_step")) -> dict[str, Any]:
    """``options`` if every key is an option of the sampler (or one of ``extra``) with a value of its type,
    else a ValueError naming the key, the sampler's options and the expected type (issue 12: ``--option eta=abc``)."""
    name = name_or_fn if isinstance(name_or_fn, str) else getattr(name_or_fn, "__name__", "sampler")
    allowed = sampler_options(name_or_fn)
    for k, v in options.items():
        if k in extra:
            continue
        if k not in allowed:
            raise ValueError(f"--option {k}={v!r}: the {name} sampler has no option {k!r}; "
                             f"its options are {', '.join(allowed) or '(none)'}")
        if not _fits(v, allowed[k]):
            want = getattr(allowed[k], "__name__", None) or str(allowed[k]).replace("typing.", "")
            raise ValueError(f"--option {k}={v!r}: expected a value of type {want}")
    return options


@dataclass
class SamplerChoice:
    """Which sampler, how many steps, which grid. None: the model's own defaults (its DiffusionConfig's
    ``sampler``, ``sample_steps``, ``spacing``; a distilled checkpoint's step count)."""

    sampler: str | None = field(default=None, metadata={
        "help": "a SAMPLERS name, or a flow model's euler | heun | midpoint; None: the model's (DiffusionConfig.sampler)"})
    steps: int | None = field(default=None, metadata={"help": "None: a distilled checkpoint's, else the model's sample_steps"})
    spacing: str | None = field(default=None, metadata={
        "help": "grid of training indices: leading | trailing | linspace; None: the model's (leading, measured)"})
    seed: int = 0

    def __post_init__(self):
        from ..schedules import SPACINGS

        from ..flow.sampling import FLOW_SAMPLERS  # a flow model's velocity samplers (ldmcourse.recipes.flow)

        known = (*SAMPLERS, *(k for k in FLOW_SAMPLERS if k not in SAMPLERS))
        if self.sampler is not None and self.sampler not in known:
            raise ValueError(f"--sampler {self.sampler!r} is not known; choose one of {', '.join(known)}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"--steps {self.steps} must be >= 1")
        if self.spacing is not None and self.spacing not in (*SPACINGS, "logsnr"):
            raise ValueError(f"--spacing {self.spacing!r} is not known; choose one of {', '.join(SPACINGS)}")


@dataclass
class SampleOptions(SamplerChoice):
    """The options of ``ldmcourse sample`` (its flags are generated from these fields)."""

    n: int = 64
    batch_size: int = field(default=256, metadata={"help": "sample in chunks of this many (same result for the same seed)"})
    guidance: float | None = field(default=None, metadata={
        "help": "classifier-free guidance scale S (0: unconditional, 1: conditional; needs --class)"})
    class_label: int | None = field(default=None, metadata={"flag": "--class", "help": "class label C to sample"})
    prompt: str | None = field(default=None, metadata={
        "help": 'text-conditioned models (train ldm --text): the caption to sample, e.g. "a thin three"'})

    def __post_init__(self):
        super().__post_init__()
        for name in ("n", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} {getattr(self, name)} must be >= 1")
        if self.class_label is not None and self.class_label < 0:
            raise ValueError(f"--class {self.class_label} must be >= 0")
        if self.prompt is not None and self.class_label is not None:
            raise ValueError("give --class C (class-conditional models) or --prompt TEXT (text-conditioned), not both")
        if self.guidance is not None and self.class_label is None and self.prompt is None:
            raise ValueError("--guidance needs a class or a prompt to guide towards: add --class C (or --prompt TEXT)")


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
    desc = _PROGRESS.get()
    steps = kwargs.get("steps") if desc and "callback" in inspect.signature(fn).parameters else None
    bar = Progress(n * (steps or 1), desc) if desc else None  # units: image-steps (or images)
    out, i = [], 0
    while i < n:
        b = min(batch_size, n - i)
        gens = [torch.Generator(device=gen_device).manual_seed(s) for s in seeds[i:i + b]]
        x_T = prior_std * torch.stack([torch.randn(tuple(shape), generator=g, device=device, dtype=dtype) for g in gens])
        kw = dict(kwargs)
        if steps:
            user_cb = kwargs.get("callback")

            def tick(*a, _b=b, _cb=user_cb):
                bar.update(_b)
                return _cb(*a) if _cb is not None else None

            kw["callback"] = tick
        try:
            x = fn(eps_model, x_T, schedule, generator=gens if per_sample else gens[0], **kw)
        except torch.cuda.OutOfMemoryError:
            if batch_size == 1:
                raise
            batch_size = max(1, batch_size // 2)
            torch.cuda.empty_cache()
            continue
        out.append(x.to(out_device))
        i += b
        if bar is not None:
            bar.update((i * (steps or 1)) - bar.n)  # the chunk is done, whatever the sampler's callbacks counted
    if bar is not None:
        bar.close()
    return torch.cat(out)


_PROGRESS: ContextVar[str | None] = ContextVar("ldmcourse_sampling_progress", default=None)


@contextmanager
def sampling_progress(desc: str = "sample"):
    """Within this block :func:`sample_chunked` reports progress (a tqdm bar on a terminal, a plain line per
    5 % elsewhere), in image-steps. The commands turn it on; library calls and notebooks stay quiet."""
    token = _PROGRESS.set(desc)
    try:
        yield
    finally:
        _PROGRESS.reset(token)


__all__ = ["SAMPLERS", "DETERMINISTIC", "CONTRACT", "get_sampler", "sampler_options", "check_options", "SamplerChoice",
           "SampleOptions", "sample_chunked", "sampling_progress", "CountCalls", "ddim", "plms", "dpm_solver_1",
           "dpm_solver_2", "dpm_solver_3", "dpm_solver_pp_2m", "euler", "heun", "euler_maruyama", "sde_heun", "pc", "adaptive"]
