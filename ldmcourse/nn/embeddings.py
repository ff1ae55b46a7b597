"""Sinusoidal timestep embeddings (Vaswani et al. 2017, §3.5; used by DDPM, Ho et al. 2020, App. B).

The network learns one shared denoiser for every noise level; it is told which level through
emb(t) = [sin(t·ω_0), …, sin(t·ω_{d/2-1}), cos(t·ω_0), …, cos(t·ω_{d/2-1})], ω_i = 10000^(-i/(d/2)),
followed by a small MLP. Nearby t get nearby embeddings; the frequencies span periods 2π … 2π·10⁴.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """(B,) timesteps (int or float) -> (B, dim) float32 sinusoidal embedding (sin half, then cos half).

    Same convention as improved-diffusion / diffusers ``get_timestep_embedding(flip_sin_to_cos=False,
    downscale_freq_shift=0)``: ω_i = max_period^(-i / (dim/2)). An odd ``dim`` gets one zero column.
    """
    if t.ndim != 1:
        raise ValueError(f"timesteps must be a 1-D tensor (B,), got shape {tuple(t.shape)}")
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None, :]  # (B, half)
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)  # (B, 2*half)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimeEmbedding(nn.Module):
    """t -> sinusoidal(t, dim) -> Linear -> SiLU -> Linear: (B,) -> (B, emb_dim)."""

    def __init__(self, dim: int, emb_dim: int):
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        emb = timestep_embedding(t, self.dim).to(self.mlp[0].weight.dtype)
        return self.mlp(emb)
