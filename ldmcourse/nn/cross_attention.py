"""Multi-head attention over a context of tokens (Vaswani et al. 2017), as latent diffusion's
cross-attention conditions the U-Net on text (Rombach et al. 2022, §3.3, eq. 3):

    Attention(Q, K, V) = softmax(Q Kᵀ / √d) V,   Q = W_Q φ(x),  K = W_K τ(y),  V = W_V τ(y)

queries from the image features φ(x) (B, N, D_q) (N = H·W pixels or DiT patches), keys and values from
the token embeddings τ(y) (B, L, D_c) of the text encoder. ``mask`` (B, L) bool marks real tokens
(True) against padding (False): a padded key gets weight 0. With ``context=None`` it is
self-attention (the text encoder's and the DiT's).

- :class:`CrossAttention`: the attention itself on token sequences (used by the text encoder, the DiT
  and, through the next class, the U-Net), so the two backbones share one implementation.
- :class:`SpatialCrossAttention`: the U-Net's wrapper: x + Attn(GN(x) as H·W tokens, context),
  output projection zero-initialised so a new layer starts as the identity (LDM's SpatialTransformer
  zero-initialises its ``proj_out`` for the same reason).

``keep_weights = True`` stores the last softmax weights (B, heads, N, L) in ``.weights``: the maps of
which word each pixel attends to (notebook 12).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .blocks import group_norm


class CrossAttention(nn.Module):
    """(B, N, D_q), context (B, L, D_c), mask (B, L) -> (B, N, D_q)."""

    def __init__(self, query_dim: int, context_dim: int | None = None, heads: int = 4, head_dim: int | None = None,
                 zero_init: bool = False):
        super().__init__()
        context_dim = context_dim or query_dim
        head_dim = head_dim or query_dim // heads
        if heads * head_dim == 0:
            raise ValueError(f"attention over {query_dim} features with {heads} heads has an empty head")
        self.heads, self.head_dim = heads, head_dim
        inner = heads * head_dim
        self.to_q = nn.Linear(query_dim, inner, bias=False)  # W_Q
        self.to_k = nn.Linear(context_dim, inner, bias=False)  # W_K
        self.to_v = nn.Linear(context_dim, inner, bias=False)  # W_V
        self.to_out = nn.Linear(inner, query_dim)
        if zero_init:
            nn.init.zeros_(self.to_out.weight)
            nn.init.zeros_(self.to_out.bias)
        self.keep_weights = False
        self.weights: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        B, N, _ = x.shape
        L = context.shape[1]
        split = lambda z, n: z.reshape(B, n, self.heads, self.head_dim).transpose(1, 2)  # noqa: E731  (B, n, h·d) -> (B, h, n, d)
        q, k, v = split(self.to_q(x), N), split(self.to_k(context), L), split(self.to_v(context), L)
        keep = None if mask is None else mask.to(torch.bool)[:, None, None, :]  # (B, 1, 1, L): True = attend
        if self.keep_weights:
            logits = q @ k.transpose(-1, -2) * self.head_dim**-0.5  # (B, h, N, L) = QKᵀ/√d
            if keep is not None:
                logits = logits.masked_fill(~keep, float("-inf"))
            w = logits.softmax(-1)  # (B, h, N, L): each query's weights over the tokens
            self.weights = w.detach()
            out = w @ v  # (B, h, N, d)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)  # the same softmax(QKᵀ/√d)V, fused
        return self.to_out(out.transpose(1, 2).reshape(B, N, self.heads * self.head_dim))  # (B, N, D_q)


class SpatialCrossAttention(nn.Module):
    """(B, C, H, W), context (B, L, D_c), mask (B, L) -> (B, C, H, W): x + CrossAttn(GN(x), context)."""

    def __init__(self, channels: int, context_dim: int, head_dim: int = 32, groups: int = 8):
        super().__init__()
        head_dim = min(head_dim, channels)
        if channels % head_dim:
            raise ValueError(f"cross-attention over {channels} channels needs head_dim dividing it (got {head_dim})")
        self.norm = group_norm(channels, groups)
        self.attn = CrossAttention(channels, context_dim, heads=channels // head_dim, head_dim=head_dim, zero_init=True)

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B, C, H, W = x.shape
        h = self.norm(x).flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, H·W, C): one query per pixel
        h = self.attn(h, context, mask)
        return x + h.transpose(1, 2).reshape(B, C, H, W)
