"""A diffusion transformer (DiT, Peebles & Xie 2023) for latents, a drop-in for the U-Net.

    z (B, C, H, W) ──patchify──► (B, N, p²C) ──Linear──► + pos ──► DiT block × depth ──► final layer ──unpatchify──► (B, C_out, H, W)
                                 N = (H/p)(W/p) tokens                 ▲ c = emb(t) [+ emb(y)]

- **Patchify** (§3.1): non-overlapping p×p patches of the latent, each flattened and linearly embedded
  (the same as a p×p conv with stride p), plus fixed 2-D sine-cosine position embeddings.
- **adaLN-Zero** (§3.2): the conditioning vector c (timestep embedding, plus a class embedding with
  ``num_classes``) regresses a shift γ, a scale β and a gate α for each of the two sub-layers:
      x = x + α₁ ⊙ SelfAttn(LN(x)·(1 + β₁) + γ₁),   x = x + α₂ ⊙ MLP(LN(x)·(1 + β₂) + γ₂)
  The regression layer is zero-initialised, so every α = 0 and each block starts as the identity;
  the final layer (adaLN, then Linear to p²·C_out) is zero-initialised too, so the net starts at 0.
- **Text** (``context_dim = D``): a cross-attention layer on the caption's token embeddings between
  self-attention and MLP (the "cross-attention block" of §3.2, as in PixArt-α): x = x + CrossAttn(LN(x),
  τ(y), mask), with the *same* :class:`ldmcourse.nn.CrossAttention` as the U-Net's (zero-initialised
  output), so a U-Net/DiT comparison isolates the backbone.
- The call is the U-Net's: ``dit(x, t, y=None, context=None, context_mask=None)``; labels 0..K-1 with
  ``y=None`` / ``y == K`` the null class, so the training loss, samplers and guidance work unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .nn import CrossAttention, TimeEmbedding


@dataclass
class DiTConfig:
    """Shape of the DiT. ``input_size`` (H = W of the latent) is only a default: any H, W divisible by
    ``patch_size`` work, since the position embeddings are computed for the grid at hand."""

    in_channels: int = 4
    out_channels: int | None = None  # None: same as in_channels
    input_size: int = 8
    patch_size: int = 2
    hidden_dim: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    num_classes: int | None = None  # K labels; index K is the null class
    context_dim: int | None = None  # text: dimension of the token embeddings (None: no text)

    def __post_init__(self):
        if self.hidden_dim % self.heads:
            raise ValueError(f"hidden_dim={self.hidden_dim} must be divisible by heads={self.heads}")
        if self.hidden_dim % 4:
            raise ValueError(f"hidden_dim={self.hidden_dim} must be divisible by 4 (2-D sine-cosine positions)")
        if self.input_size % self.patch_size:
            raise ValueError(f"input_size={self.input_size} is not divisible by patch_size={self.patch_size}")
        if self.num_classes is not None and self.num_classes < 1:
            raise ValueError(f"num_classes={self.num_classes}: use None for an unconditional model, or K >= 1")


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, p·p·C), N = (H/p)(W/p) in row-major order; each patch flattened (p, p, C)."""
    B, C, H, W = x.shape
    x = x.reshape(B, C, H // p, p, W // p, p)  # (B, C, h, p, w, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(B, (H // p) * (W // p), p * p * C)  # (B, h·w, p·p·C)


def unpatchify(tokens: torch.Tensor, p: int, channels: int, H: int, W: int) -> torch.Tensor:
    """The inverse of :func:`patchify`: (B, N, p·p·C) -> (B, C, H, W)."""
    B = tokens.shape[0]
    x = tokens.reshape(B, H // p, W // p, p, p, channels)  # (B, h, w, p, p, C)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(B, channels, H, W)


def sincos_2d(dim: int, h: int, w: int) -> torch.Tensor:
    """(h·w, dim) fixed position embeddings: half the features encode the row, half the column (MAE / DiT)."""
    def one_axis(pos: torch.Tensor, d: int) -> torch.Tensor:
        omega = 1.0 / 10000 ** (torch.arange(d // 2, dtype=torch.float64) / (d / 2))
        args = pos.double()[:, None] * omega[None]  # (n, d/2)
        return torch.cat([args.sin(), args.cos()], dim=1)

    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.cat([one_axis(rows.flatten(), dim // 2), one_axis(cols.flatten(), dim // 2)], dim=1).float()


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """LN(x)·(1 + scale) + shift, per sample: (B, N, D), (B, D), (B, D) -> (B, N, D)."""
    return x * (1 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
    """(B, N, D), c (B, D)[, context (B, L, D_c), mask (B, L)] -> (B, N, D); identity at initialisation."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, context_dim: int | None = None):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = CrossAttention(dim, heads=heads)
        self.norm_x = nn.LayerNorm(dim) if context_dim else None
        self.xattn = CrossAttention(dim, context_dim, heads=heads, zero_init=True) if context_dim else None
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))  # c -> (γ₁, β₁, α₁, γ₂, β₂, α₂)
        nn.init.zeros_(self.ada[-1].weight)  # adaLN-Zero: α = 0, the block starts as the identity
        nn.init.zeros_(self.ada[-1].bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor, context: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c).chunk(6, dim=1)  # 6 x (B, D)
        x = x + gate1[:, None] * self.attn(modulate(self.norm1(x), shift1, scale1))
        if self.xattn is not None:
            x = x + self.xattn(self.norm_x(x), context, mask)
        return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))


class FinalLayer(nn.Module):
    """adaLN (shift, scale from c), then Linear to one patch per token: (B, N, D) -> (B, N, p·p·C_out)."""

    def __init__(self, dim: int, patch_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.linear = nn.Linear(dim, patch_dim)
        for layer in (self.ada[-1], self.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.ada(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm(x), shift, scale))


class DiT(nn.Module):
    """``dit(x, t, y=None, context=None, context_mask=None)``: (B, C_in, H, W), (B,) -> (B, C_out, H, W)."""

    def __init__(self, config: DiTConfig | None = None, **kwargs):
        super().__init__()
        cfg = self.config = config if config is not None else DiTConfig(**kwargs)
        D, p = cfg.hidden_dim, cfg.patch_size
        self.out_channels = cfg.out_channels or cfg.in_channels
        self.patch_embed = nn.Linear(p * p * cfg.in_channels, D)  # = Conv2d(C, D, p, stride=p) on patchify's order
        self.time_embed = TimeEmbedding(D, D)
        self.label_embed = nn.Embedding(cfg.num_classes + 1, D) if cfg.num_classes else None
        self.blocks = nn.ModuleList(DiTBlock(D, cfg.heads, cfg.mlp_ratio, cfg.context_dim) for _ in range(cfg.depth))
        self.final = FinalLayer(D, p * p * self.out_channels)
        self._init_weights()

    def _init_weights(self) -> None:
        """DiT's initialisation: Xavier-uniform linears, N(0, 0.02) embeddings; adaLN-Zero and the final
        layer stay zero, and so do the cross-attention output projections."""
        zero = {id(m) for b in self.blocks for m in (b.ada[-1], getattr(b.xattn, "to_out", None)) if m is not None}
        zero |= {id(self.final.ada[-1]), id(self.final.linear)}
        for m in self.modules():
            if isinstance(m, nn.Linear) and id(m) not in zero:
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for layer in (self.time_embed.mlp[0], self.time_embed.mlp[2]):
            nn.init.normal_(layer.weight, std=0.02)
        if self.label_embed is not None:
            nn.init.normal_(self.label_embed.weight, std=0.02)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None,
                context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None) -> torch.Tensor:
        cfg, p = self.config, self.config.patch_size
        if x.ndim != 4 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"expected x of shape (B, {cfg.in_channels}, H, W), got {tuple(x.shape)}")
        B, _, H, W = x.shape
        if H % p or W % p:
            raise ValueError(f"H and W must be divisible by patch_size={p}; got {(H, W)}")
        if cfg.context_dim is None and context is not None:
            raise ValueError("this DiT has no cross-attention (context_dim=None) but a text context was given")
        if cfg.context_dim is not None and (context is None or context.shape[0] != B or context.shape[-1] != cfg.context_dim):
            raise ValueError(f"this DiT is text-conditioned: pass context (B={B}, L, {cfg.context_dim}) "
                             "(or wrap it in ldmcourse.text.TextConditioned and pass token ids as y)")
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(B)
        c = self.time_embed(t)  # (B, D)
        if self.label_embed is not None:
            y = torch.full((B,), cfg.num_classes, device=x.device, dtype=torch.long) if y is None else y.to(x.device).long()
            if bool(((y < 0) | (y > cfg.num_classes)).any()):
                raise ValueError(f"labels must be in 0..{cfg.num_classes} ({cfg.num_classes} = null class)")
            c = c + self.label_embed(y)
        elif y is not None:
            raise ValueError("this DiT is unconditional (num_classes=None) but labels y were given")

        pos = sincos_2d(cfg.hidden_dim, H // p, W // p).to(x.device, x.dtype)  # (N, D)
        h = self.patch_embed(patchify(x, p)) + pos  # (B, C, H, W) -> (B, N, p·p·C) -> (B, N, D)
        for block in self.blocks:
            h = block(h, c, context, context_mask)
        return unpatchify(self.final(h, c), p, self.out_channels, H, W)  # (B, N, p·p·C_out) -> (B, C_out, H, W)


__all__ = ["DiTConfig", "DiT", "DiTBlock", "patchify", "unpatchify", "sincos_2d"]
