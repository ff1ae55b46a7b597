"""Metrics. Reconstruction metrics live here; FID/KID on the course classifier come with the evaluation issue."""

from __future__ import annotations

import math

import torch


@torch.no_grad()
def mse(x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean squared error over all pixels (images in [-1, 1])."""
    return float(((x.float() - y.float()) ** 2).mean())


@torch.no_grad()
def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB for images in [-1, 1] (peak-to-peak range 2)."""
    m = ((x.float() - y.float()) ** 2).flatten(1).mean(1).clamp_min(1e-12)  # per image
    return float((10 * torch.log10(4.0 / m)).mean())


def bits_per_dim(nats: float, dims: int) -> float:
    """Convert a negative log-likelihood in nats per image to bits per dimension."""
    return nats / (dims * math.log(2))
