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


def per_sample_generators(generator: torch.Generator | None, n: int, device=None) -> list[torch.Generator]:
    """One generator per sample, seeded by ``n`` draws from ``generator`` (as :func:`~ldmcourse.samplers.sample_chunked`
    does): whatever chunks the samples are then drawn in, sample i's noise is the same."""
    src = generator.device if generator is not None else "cpu"
    seeds = torch.randint(0, 2**62, (n,), generator=generator, device=src).tolist()
    device = torch.device(device) if device is not None else torch.device(src)
    return [torch.Generator(device=device).manual_seed(s) for s in seeds]


def append_dims(x: torch.Tensor, ndim: int) -> torch.Tensor:
    """Append trailing singleton dims so a per-sample (B,) tensor broadcasts against (B, C, H, W)."""
    if x.ndim > ndim:
        raise ValueError(f"input has {x.ndim} dims but target ndim is {ndim}")
    return x[(...,) + (None,) * (ndim - x.ndim)]


def resolve_device(device: str | torch.device | None = "auto", profile: str | None = None) -> torch.device:
    """The one device rule of the package: 'auto' -> CUDA if available else CPU (always CPU in the smoke
    profile: CI has no GPU); explicit strings are checked for availability."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() and profile != "smoke" else "cpu")
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


# ----------------------------------------------------------------------------------------------
# progress: tqdm on a terminal, plain lines elsewhere
# ----------------------------------------------------------------------------------------------

class Progress:
    """Progress of ``total`` units. On a terminal: a tqdm bar. Elsewhere (CI logs, ``nohup``, a notebook's
    captured stderr, where tqdm's carriage-return frames pile up on one line): one plain line per ``every``
    of the total (5 %) and one at the end, e.g. ``[nll] 250/1000 (25%) 12s, loss=0.12``.

    ``with Progress(n, "nll") as p: ... p.update(len(batch))``; ``p.update(1, loss=0.1)`` sets a postfix.
    """

    def __init__(self, total: int, desc: str, initial: int = 0, enabled: bool = True, every: float = 0.05, stream=None):
        import sys

        self.total, self.desc, self.n, self.enabled = int(total), desc, int(initial), enabled
        self.stream = stream if stream is not None else sys.stderr
        self.postfix: dict[str, object] = {}
        self._step = max(1, int(round(every * self.total)))
        self._next = (self.n // self._step + 1) * self._step
        self._t0 = time.perf_counter()
        self._bar = None
        if enabled and self.stream.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, initial=self.n, desc=desc, mininterval=1.0, dynamic_ncols=True, file=self.stream)

    def update(self, n: int = 1, **postfix) -> None:
        self.n += n
        self.postfix.update(postfix)
        if self._bar is not None:
            self._bar.update(n)
            if postfix:
                self._bar.set_postfix({k: _fmt(v) for k, v in self.postfix.items()}, refresh=False)
        elif self.enabled and (self.n >= self._next or self.n >= self.total):
            self._next = (self.n // self._step + 1) * self._step
            self._line()

    def _line(self) -> None:
        pct = 100 * self.n / max(1, self.total)
        extra = ", ".join(f"{k}={_fmt(v)}" for k, v in self.postfix.items())
        print(f"[{self.desc}] {self.n}/{self.total} ({pct:.0f}%) {time.perf_counter() - self._t0:.0f}s"
              + (f", {extra}" if extra else ""), file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


# ----------------------------------------------------------------------------------------------
# value checks for the config dataclasses' __post_init__ (one message style everywhere)
# ----------------------------------------------------------------------------------------------

def check_range(name: str, value, lo=None, hi=None, *, lo_open: bool = False, hi_open: bool = False,
                integer: bool = False, hint: str = "") -> None:
    """Raise ``ValueError("name=value must be ...; hint")`` unless ``lo <= value <= hi`` (``<`` where open).

    ``integer``: the value must also be an int (bools are refused: ``True`` is not a count)."""
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type:
        raise ValueError(f"{name}={value!r} must be {'an integer' if integer else 'a number'}" + (f"; {hint}" if hint else ""))
    bad = (lo is not None and (value <= lo if lo_open else value < lo)) or \
          (hi is not None and (value >= hi if hi_open else value > hi)) or value != value  # NaN
    if bad:
        parts = []
        if lo is not None:
            parts.append(f"{'>' if lo_open else '>='} {lo}")
        if hi is not None:
            parts.append(f"{'<' if hi_open else '<='} {hi}")
        raise ValueError(f"{name}={value!r} must be {' and '.join(parts)}" + (f"; {hint}" if hint else ""))


def check_counts(name: str, values, lo: int = 1, hint: str = "") -> None:
    """Every entry of a tuple of counts (channel widths, groups...) is an int >= ``lo``."""
    for v in values:
        check_range(f"{name} entry", v, lo, integer=True, hint=hint or f"{name}={tuple(values)!r}")


def check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r}: choose one of {', '.join(map(repr, choices))}")
