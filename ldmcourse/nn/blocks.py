"""Convolutional cells of the U-Net: ResNet block, ConvNeXt block, down- and up-sampling.

ResBlock (DDPM / improved-diffusion, pre-activation):
    h = Conv(SiLU(GN(x)));  h = h + Linear(SiLU(emb))   (time injection, broadcast over H, W)
    h = Conv(Dropout(SiLU(GN(h))));  out = skip(x) + h  (skip = 1x1 conv when channels change)
The last conv is zero-initialised so every block starts as the identity (a stable start).

ConvNeXt block (Liu et al. 2022, as in the seed's U-Net): depthwise 7x7 conv, time injection,
GN -> 3x3 conv (widen ×mult) -> GELU -> GN -> 3x3 conv, plus the skip.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def group_norm(channels: int, groups: int = 8) -> nn.GroupNorm:
    """GroupNorm with ``groups`` groups, or fewer when ``channels`` is not divisible (e.g. 4-channel latents)."""
    g = min(groups, channels)
    while channels % g:
        g -= 1
    return nn.GroupNorm(g, channels)


class ResBlock(nn.Module):
    """(B, C_in, H, W), (B, E) -> (B, C_out, H, W)."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float = 0.0, groups: int = 8):
        super().__init__()
        self.norm1 = group_norm(in_ch, groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, out_ch)
        self.norm2 = group_norm(out_ch, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, C_out, H, W)
        h = h + self.emb(F.silu(emb))[:, :, None, None]  # time injection: (B, C_out) -> (B, C_out, 1, 1)
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class ConvNeXtBlock(nn.Module):
    """(B, C_in, H, W), (B, E) -> (B, C_out, H, W); the seed's alternative to the ResNet block."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float = 0.0, groups: int = 8, mult: int = 2):
        super().__init__()
        self.dw = nn.Conv2d(in_ch, in_ch, 7, padding=3, groups=in_ch)  # depthwise 7x7
        self.emb = nn.Linear(emb_dim, in_ch)
        self.net = nn.Sequential(
            nn.GroupNorm(1, in_ch),
            nn.Conv2d(in_ch, out_ch * mult, 3, padding=1),
            nn.GELU(),
            nn.Dropout(dropout),
            group_norm(out_ch * mult, groups),
            nn.Conv2d(out_ch * mult, out_ch, 3, padding=1),
        )
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.dw(x) + self.emb(F.gelu(emb))[:, :, None, None]
        return self.skip(x) + self.net(h)


class Downsample(nn.Module):
    """Strided 3x3 conv: (B, C, H, W) -> (B, C_out, H/2, W/2)."""

    def __init__(self, ch: int, out_ch: int | None = None):
        super().__init__()
        self.conv = nn.Conv2d(ch, out_ch or ch, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest ×2 then 3x3 conv: (B, C, H, W) -> (B, C_out, 2H, 2W)."""

    def __init__(self, ch: int, out_ch: int | None = None):
        super().__init__()
        self.conv = nn.Conv2d(ch, out_ch or ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
