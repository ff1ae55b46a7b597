"""Optimisation pieces of :func:`ldmcourse.train.fit`: the EMA of the weights, the learning-rate schedule
(linear warm-up, then cosine decay), and mixed precision (autocast)."""

from __future__ import annotations

import contextlib
import copy
import math
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn as nn

if TYPE_CHECKING:
    from .train import FitConfig


class EMA:
    """Exponential moving average of parameters (and a copy of buffers): θ_ema ← d·θ_ema + (1-d)·θ.

    The decay warms up as d_n = min(decay, (1 + n) / (10 + n)) after n updates, so a short run is not
    dominated by its random initial weights (with a fixed d = 0.999, the initial weights would still
    carry 0.999^600 ≈ 55 % of the average after 600 steps).
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    def decay_at(self, n: int) -> float:
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int, copy_only: bool = False, every: int = 1) -> None:
        ema_p = list(self.module.parameters())
        p = [q.detach() for q in model.parameters()]
        if copy_only:
            torch._foreach_copy_(ema_p, p)
        else:
            torch._foreach_lerp_(ema_p, p, 1.0 - self.decay_at(step) ** every)  # k steps at once: decay**k
        for b_ema, b in zip(self.module.buffers(), model.buffers()):
            b_ema.copy_(b)


def lr_lambda(cfg: FitConfig, start: int = 0) -> Callable[[int], float]:
    """Linear warm-up over ``cfg.warmup`` steps, then cosine from 1 to ``cfg.min_lr_ratio`` at ``cfg.steps``.

    ``start``: the global step at which this schedule begins (0, or where ``reset_optimizer`` restarted it);
    the argument is the number of steps since then (what ``LambdaLR`` counts)."""

    def f(k: int) -> float:
        if cfg.warmup > 0 and k < cfg.warmup:
            return (k + 1) / cfg.warmup
        span = max(1, cfg.steps - start - cfg.warmup)
        progress = min(1.0, (k - cfg.warmup) / span)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def autocast_context(amp: str, device: torch.device):
    if amp == "none":
        return contextlib.nullcontext()
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("amp='fp16' needs CUDA (fp16 on CPU is slow and unsupported); use amp='bf16' or 'none'")
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)
