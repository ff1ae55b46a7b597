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
    """

    name: str
    model_config: type
    build: Callable[[Any], nn.Module]
    loss: Callable[[Any], Callable]
    sizes: dict[str, dict[str, dict[str, Any]]]
    picture: Callable[..., tuple[torch.Tensor, str]]
    sample: Callable[..., torch.Tensor] | None = None
    metrics: dict[str, Callable[..., dict]] = field(default_factory=dict)
    description: str = ""
    inpaint: Callable[..., torch.Tensor] | None = None
    guidance: bool = False
    renamed: dict[str, str] = field(default_factory=dict)

    def config(self, d: dict[str, Any]):
        """The model config from a checkpoint's ``meta["model_config"]``, of this layout or the previous one."""
        return from_dict(self.model_config, migrate(d, self.renamed))


def available() -> list[str]:
    return sorted(_MODULES)


def get_recipe(name: str) -> Recipe:
    if name not in _MODULES:
        raise KeyError(f"unknown model {name!r}; choose one of {', '.join(available())}")
    mod = importlib.import_module(_MODULES[name])
    return mod.RECIPES[name]
