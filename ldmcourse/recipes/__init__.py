"""Recipes: what the command line needs to know about each model, in one small object per model.

A recipe wires a network (from ``ldmcourse.autoencoders`` / ``ldmcourse.unet``) to its loss, its
picture, its sampler, its inpainting and its metrics. The networks and the processes never import
each other; the recipes (and the notebooks) join them, and no recipe imports the CLI. Everything the
CLI needs is a field of :class:`Recipe`. To add a model, write ``ldmcourse/recipes/NAME.py`` that
defines ``RECIPES = {name: Recipe(...)}`` and add one line to ``_MODULES`` below.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn as nn

from ..configs import from_dict, migrate

# model name -> module defining RECIPES (imported lazily so `ldmcourse --help` stays fast)
_MODULES: dict[str, str] = {
    "ae": "ldmcourse.recipes.ae",
    "nvae": "ldmcourse.recipes.nvae",
    "classifier": "ldmcourse.recipes.classifier",
    "vae": "ldmcourse.recipes.vae",
    "ddpm": "ldmcourse.recipes.ddpm",
    "kl-autoencoder": "ldmcourse.recipes.kl_autoencoder",
    "ldm": "ldmcourse.recipes.ldm",
    "flow": "ldmcourse.recipes.flow",
}


@dataclass
class Recipe:
    """Everything the CLI needs to train, picture, sample and evaluate one kind of model.

    - ``model_config``: the model's config dataclass (CLI flags are generated from its fields).
    - ``build(model_cfg) -> nn.Module``.
    - ``loss(model_cfg) -> loss_fn(model, batch, generator) -> (loss, logs)``.
    - ``sizes[profile]``: ``{"fit": {...}, "model": {...}, "data": {...}}`` overrides per profile.
    - ``picture(model, cfg, data, device, generator) -> (images (B, C, H, W) in [-1, 1], filename)``;
      ``cfg`` is the model config (passed explicitly: nothing is attached to the model).
    - ``sample(model, meta, n, generator, device, sampler=None, steps=None, batch_size=..., **options) -> images``
      or None if it cannot sample; None for sampler/steps means the model's defaults.
    - ``inpaint(model, meta, x_known, keep, generator, device, **InpaintOptions fields) -> images`` or None.
    - ``guidance``: whether ``sample`` takes ``guidance=`` (classifier-free guidance; class-conditional models).
    - ``metrics``: ``{name: fn(model, meta, test_data, device, options) -> dict}``.
    - ``renamed``: fields of a previous config layout, old name -> new (see :meth:`config`).
    - ``wrap_data(model_cfg, dataset) -> dataset``: what ``fit`` trains on (default: the images as loaded;
      text-conditioned ldm: ``(x, codes)`` batches). Raises ValueError for a data set the model cannot use.
    - ``prompts``: whether ``sample`` takes ``prompt=`` (text-conditioned models; it refuses a model without text).
    """

    name: str
    model_config: type
    build: Callable[[Any], nn.Module]
    loss: Callable[[Any], Callable]
    sizes: dict[str, dict[str, dict[str, Any]]]
    picture: Callable[..., tuple[torch.Tensor, str]]
    # False for models that sample in one pass (VAE, NVAE): --sampler/--steps do not apply, and are refused.
    # (Also: sizes[profile]["eval"] = {metric: {"n": N, option: default}}, a profile's evaluation defaults; a metric
    # decorated with metric_options below has its --option keys and values checked before it runs.)
    takes_sampler: bool = True
    sample: Callable[..., torch.Tensor] | None = None
    metrics: dict[str, Callable[..., dict]] = field(default_factory=dict)
    description: str = ""
    inpaint: Callable[..., torch.Tensor] | None = None
    guidance: bool = False
    renamed: dict[str, str] = field(default_factory=dict)
    wrap_data: Callable[[Any, Any], Any] | None = None
    prompts: bool = False

    def training_data(self, model_cfg, dataset):
        """The data set ``fit`` trains on: ``wrap_data(model_cfg, dataset)``, or ``dataset`` itself."""
        return dataset if self.wrap_data is None else self.wrap_data(model_cfg, dataset)

    def config(self, d: dict[str, Any]):
        """The model config from a checkpoint's ``meta["model_config"]``, of this layout or the previous one."""
        return from_dict(self.model_config, migrate(d, self.renamed))

    def sampling_choice(self, meta: dict[str, Any], sampler: str | None = None, steps: int | None = None,
                        spacing: str | None = None) -> tuple[str | None, int | None]:
        """The sampler and step count a sample run uses (for its report): the given ones, else a distilled
        checkpoint's, else the model config's. A model that samples in one pass refuses them (ValueError)."""
        if not self.takes_sampler:
            given = [f"--{k} {v}" for k, v in (("sampler", sampler), ("steps", steps), ("spacing", spacing)) if v is not None]
            if given:
                raise ValueError(f"a {meta['kind']!r} model samples from its prior in one decoder pass: "
                                 f"{', '.join(given)} do(es) not apply; drop them")
            return None, None
        from ..distill import sampling_grid

        cfg = self.config(meta["model_config"])
        return sampler or cfg.sampler, sampling_grid(meta, steps)[0] or cfg.sample_steps


def available() -> list[str]:
    return sorted(_MODULES)


def get_recipe(name: str) -> Recipe:
    if name not in _MODULES:
        raise KeyError(f"unknown model {name!r}; choose one of {', '.join(available())}")
    mod = importlib.import_module(_MODULES[name])
    return mod.RECIPES[name]


def metric_options(passes_rest: bool = False, **spec: tuple[type, float | None]):
    """Declare the ``--option`` keys a metric takes, each ``name=(type, minimum or None)``; ``seed`` is always
    taken. ``passes_rest``: other keys go on to the model's sampler (which checks them)."""

    def mark(fn):
        fn.options, fn.passes_rest = {"seed": (int, None), **spec}, passes_rest
        return fn

    return mark


def check_options(metric: str, fn, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` converted to the declared types; a ValueError names an unknown key or a bad value."""
    spec = getattr(fn, "options", None)
    if spec is None:
        return options
    out = {}
    for k, v in options.items():
        if k not in spec:
            if fn.passes_rest:
                out[k] = v
                continue
            raise ValueError(f"--option {k}={v!r}: metric {metric!r} takes no option {k!r}; it takes "
                             f"{', '.join(sorted(spec))}")
        tp, lo = spec[k]
        try:
            if isinstance(v, bool) or (tp is int and isinstance(v, float) and not v.is_integer()):
                raise TypeError
            val = tp(v)
        except (TypeError, ValueError):
            raise ValueError(f"--option {k}={v!r}: metric {metric!r} needs {'an integer' if tp is int else 'a ' + tp.__name__} "
                             f"for {k}") from None
        if lo is not None and val < lo:
            raise ValueError(f"--option {k}={v!r}: {k} must be >= {lo}")
        out[k] = val
    return out


def refuse_sampler_options(kind: str, sampler, steps, options: dict[str, Any], takes: tuple[str, ...] = ()) -> None:
    """For models that sample in one pass: refuse ``--sampler``/``--steps`` and options they do not take."""
    given = [f"--sampler {sampler}" if sampler is not None else "", f"--steps {steps}" if steps is not None else ""]
    given += [f"--option {k}" for k in options if k not in takes]
    given = [g for g in given if g]
    if given:
        raise ValueError(f"a {kind} samples from its prior in one decoder pass: {', '.join(given)} do(es) not apply; "
                         + (f"its options are {', '.join(takes)}" if takes else "drop them"))
