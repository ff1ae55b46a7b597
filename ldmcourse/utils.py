"""Small helpers shared by the CLI and the notebooks: image grids, seeding, broadcasting, timing."""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

import torch


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], clamped."""
    return ((x.detach().float().cpu() + 1) / 2).clamp(0, 1)


def make_grid(images: torch.Tensor, nrow: int = 8, padding: int = 2) -> torch.Tensor:
    """(B, C, H, W) in [-1, 1] -> (C, H', W') in [0, 1]."""
    import torchvision.utils as vutils

    return vutils.make_grid(to_unit(images), nrow=nrow, padding=padding, pad_value=1.0)


def save_grid(images: torch.Tensor, path: str | os.PathLike, nrow: int = 8) -> Path:
    """Save (B, C, H, W) images in [-1, 1] as one PNG grid; returns the path."""
    import torchvision.utils as vutils

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    vutils.save_image(to_unit(images), path, nrow=nrow, padding=2, pad_value=1.0)
    return path


def show_grid(images: torch.Tensor, nrow: int = 8, title: str | None = None, ax=None, figsize=(6, 6)):
    """Draw a grid of (B, C, H, W) images in [-1, 1] with matplotlib (for notebooks)."""
    import matplotlib.pyplot as plt

    grid = make_grid(images, nrow=nrow)
    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    ax.imshow(grid.permute(1, 2, 0).numpy(), cmap="gray" if grid.shape[0] == 1 else None, interpolation="nearest")
    ax.axis("off")
    if title:
        ax.set_title(title)
    return ax


def randn_like(like: torch.Tensor, generator) -> torch.Tensor:
    """Standard normal noise shaped like ``like``. ``generator`` may be one torch.Generator or a sequence
    of generators, one per sample: then sample i's noise depends only on generator i, which makes
    chunked sampling give the same images as one batch (see :func:`~ldmcourse.samplers.sample_chunked`)."""
    if isinstance(generator, Sequence):
        if len(generator) != like.shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {like.shape[0]}")
        return torch.stack([torch.randn(like.shape[1:], generator=g, device=like.device, dtype=like.dtype) for g in generator])
    return torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)


def append_dims(x: torch.Tensor, ndim: int) -> torch.Tensor:
    """Append trailing singleton dims so a per-sample (B,) tensor broadcasts against (B, C, H, W)."""
    if x.ndim > ndim:
        raise ValueError(f"input has {x.ndim} dims but target ndim is {ndim}")
    return x[(...,) + (None,) * (ndim - x.ndim)]


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """'auto' -> CUDA if available else CPU; explicit strings are checked for availability."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device} requested but CUDA is not available (CPU-only torch?); use --device cpu")
    return device


@contextmanager
def timer():
    """``with timer() as t: ...``; then ``t()`` is the elapsed seconds (CUDA-synchronised)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    end: list[float] = []
    yield lambda: (end[0] if end else time.perf_counter()) - start
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    end.append(time.perf_counter())
