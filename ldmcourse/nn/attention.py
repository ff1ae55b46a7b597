"""Self-attention over the pixels of a feature map, wrapped as a pre-norm residual: x + Attn(GN(x)).

- :class:`Attention`: softmax attention, O((HW)²) memory: used at low resolution / in the middle.
- :class:`LinearAttention` (Shen et al. 2021, "Efficient attention", as in the seed's U-Net):
  softmax over the feature axis of q and the pixel axis of k, then out = q·(kᵀv): O(HW·d²), cheap
  at high resolution.
The output projection is zero-initialised so a new attention layer starts as the identity.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .blocks import group_norm


def _heads(channels: int, head_dim: int) -> int:
    if channels % head_dim:
        raise ValueError(f"attention over {channels} channels needs head_dim dividing it (got head_dim={head_dim})")
    return channels // head_dim


class _PixelAttention(nn.Module):
    """Shared parts: pre-norm, 1x1 qkv projection, zero-initialised 1x1 output projection."""

    def __init__(self, channels: int, head_dim: int = 32, groups: int = 8):
        super().__init__()
        self.heads = _heads(channels, min(head_dim, channels))
        self.norm = group_norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def qkv_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, C, H, W) -> q, k, v each (B, heads, C/heads, H*W)."""
        B, C, H, W = x.shape
        return self.qkv(self.norm(x)).reshape(B, 3, self.heads, C // self.heads, H * W).unbind(1)


class Attention(_PixelAttention):
    """(B, C, H, W) -> (B, C, H, W): x + softmax(QKᵀ/√d)V over the H·W positions, per head."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv_heads(x)  # (B, h, d, N)
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))  # (B, h, N, d)
        return x + self.proj(out.transpose(-1, -2).reshape(x.shape))


class LinearAttention(_PixelAttention):
    """(B, C, H, W) -> (B, C, H, W): x + q·(kᵀv) with q softmaxed over d and k over the N positions."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv_heads(x)  # (B, h, d, N)
        q = q.softmax(dim=-2) * (q.shape[-2] ** -0.5)  # over features d
        k = k.softmax(dim=-1)  # over positions N
        context = torch.einsum("bhdn,bhen->bhde", k, v)  # (B, h, d, d)
        out = torch.einsum("bhde,bhdn->bhen", context, q)  # (B, h, d, N)
        return x + self.proj(out.reshape(x.shape))
