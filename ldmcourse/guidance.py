"""Classifier-free guidance (Ho & Salimans 2021): one network, conditional and unconditional.

Training drops the condition with probability ``p_uncond`` (``ldmcourse.diffusion.diffusion_loss``
replaces the label by the null class), so the same network ε_θ(x_t, t, y) also learns
ε_θ(x_t, t, ∅). At sampling time the two predictions are extrapolated (eq. 6 of the paper, written
with s = 1 + w):

    ε̃ = ε_θ(x_t, t, ∅) + s · (ε_θ(x_t, t, y) - ε_θ(x_t, t, ∅))

s = 0: unconditional; s = 1: plain conditional; s > 1: sharper, less diverse samples. The result is
again an ε-model ``eps(x, t)``, so *any* sampler in ``ldmcourse.samplers.SAMPLERS`` uses it
unchanged (wrap the model, not the sampler).

The condition is whatever the network accepts as ``y``: class labels (B,) LongTensor for the course
U-Net, where ``y=None`` means the null class; a text embedding (B, L, D) would pass through the same
way, with ``uncond`` the embedding of the empty prompt.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

EpsModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def check_class(y, num_classes: int | None) -> None:
    """A clear error unless every label in ``y`` (int or tensor) is a class 0..K-1 of a K-class model."""
    if y is None:
        return
    if not num_classes:
        raise ValueError("--class needs a class-conditional model (train with --num-classes K --p-uncond 0.1)")
    lo, hi = (int(y), int(y)) if isinstance(y, int) else (int(torch.as_tensor(y).min()), int(torch.as_tensor(y).max()))
    if lo < 0 or hi >= num_classes:
        bad = lo if lo < 0 else hi
        raise ValueError(f"--class {bad} is out of range: this model has classes 0..{num_classes - 1} "
                         f"(label {num_classes} is the null class of classifier-free guidance)")


def cfg_eps_model(model: Callable[..., torch.Tensor], y: Any, scale: float, uncond: Any = None,
                  batched: bool = True) -> EpsModel:
    """An ε-model ``eps(x, t)`` that guides ``model(x, t, y=...)`` towards condition ``y`` with ``scale``.

    - ``y``: the condition, e.g. a (B,) LongTensor of labels (or one int, broadcast to the batch).
    - ``uncond``: the null condition; ``None`` (default) calls the network with ``y=None``. For the
      course U-Net, ``uncond=num_classes`` (the null label) lets both branches share one call.
    - ``batched``: when both conditions are tensors, evaluate them in one call of batch 2B (faster
      on a GPU; the same numbers up to float rounding). ``scale`` 0 and 1 need only one call.
    """
    scale = float(scale)

    def _cond(c: Any, x: torch.Tensor) -> Any:
        if isinstance(c, int):
            return torch.full((x.shape[0],), c, dtype=torch.long, device=x.device)
        if isinstance(c, torch.Tensor):
            c = c.to(x.device)
            if c.shape[0] == 1 and x.shape[0] > 1:
                c = c.expand(x.shape[0], *c.shape[1:])
            if c.shape[0] != x.shape[0]:
                raise ValueError(f"condition has batch {c.shape[0]} but x has batch {x.shape[0]}; "
                                 "give one condition per sample (or one for all)")
        return c

    def eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        cond, null = _cond(y, x), _cond(uncond, x)
        if scale == 1.0:
            return model(x, t, y=cond)
        if scale == 0.0:
            return model(x, t, y=null)
        if batched and isinstance(cond, torch.Tensor) and isinstance(null, torch.Tensor):
            e_c, e_u = model(torch.cat([x, x]), torch.cat([t, t]), y=torch.cat([cond, null])).chunk(2)
        else:
            e_c, e_u = model(x, t, y=cond), model(x, t, y=null)
        return e_u + scale * (e_c - e_u)  # ε̃ = ε(∅) + s (ε(y) - ε(∅))

    return eps


def guided_velocity(model, y, scale: float, num_classes: int | None = None, batched: bool = True) -> EpsModel:
    """Classifier-free guidance for a class-conditional velocity model ``model(x, t, y)`` (flow matching):
    ṽ = v(x, t, ∅) + s (v(x, t, y) - v(x, t, ∅)). The combination is linear, so on a Gaussian path it is the
    same whether written on v, ε or x₀ (each is linear in the others at fixed x, t): :func:`cfg_eps_model`
    applies unchanged. The null class is K = ``num_classes`` (else ``model.config.num_classes``)."""
    K = num_classes if num_classes is not None else getattr(getattr(model, "config", None), "num_classes", None)
    if K is None:
        raise ValueError("classifier-free guidance needs a class-conditional model (UNetConfig.num_classes = K, "
                         "trained with p_uncond > 0) or num_classes=; this model is unconditional")
    return cfg_eps_model(lambda x, t, y=None: model(x, t, y), y, scale, uncond=K, batched=batched)



__all__ = ["check_class", "cfg_eps_model", "guided_velocity"]
