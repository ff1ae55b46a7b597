"""Recipes: what the command line needs to know about each model, in one small object per model.

A recipe wires a network (from ``ldmcourse.autoencoders`` / ``ldmcourse.unet``) to its loss, its
picture, its sampler and its metrics. The networks and the processes never import each other; the
recipes (and the notebooks) join them. To add a model, write ``ldmcourse/recipes/NAME.py`` that
defines ``RECIPES = {name: Recipe(...)}`` and add one line to ``_MODULES`` below.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn as nn

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
    - ``picture(model, data, device, generator) -> (images (B, C, H, W) in [-1, 1], filename)``.
    - ``sample(model, meta, n, generator, device, **options) -> images`` or None if it cannot sample.
    - ``metrics``: ``{name: fn(model, meta, test_data, device, options) -> dict}``.
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


def available() -> list[str]:
    return sorted(_MODULES)


def get_recipe(name: str) -> Recipe:
    if name not in _MODULES:
        raise KeyError(f"unknown model {name!r}; choose one of {', '.join(available())}")
    mod = importlib.import_module(_MODULES[name])
    return mod.RECIPES[name]
