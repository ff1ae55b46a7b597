"""The diffusion U-Net (Ronneberger et al. 2015, as adapted by DDPM / improved-diffusion).

    x (B, C_in, H, W) ──conv_in──► level 0 ──down──► level 1 ──down──► … ─► middle (Res, Attn, Res)
                                     │ skips           │ skips                   │
    out ◄──GN·SiLU·conv── level 0 ◄──up── level 1 ◄──up── … ◄──────────────────┘
                        (each up block concatenates one skip)

- Every level has ``num_res_blocks`` ResNet (or ConvNeXt) blocks at ``base_channels * mult``;
  attention (full or linear) follows each block at the downsampling factors listed.
- Every down-path output is pushed as a skip (conv_in, each block, each downsample); the up path has
  ``num_res_blocks + 1`` blocks per level and pops exactly one skip each, so the two paths pair up by
  construction. (The seed's U-Net tests ``is_last`` on an up path one level shorter than it counts, so its
  full-resolution skip is never used, and its final block expects ``dim`` channels: true as written only
  when ``dim_mults[0] == 1``, and with an up path over every level only when ``init_dim == dim``. Notebook 05
  runs both; neither can happen here.)
- t (a (B,) LongTensor of training indices) enters through a sinusoidal embedding + MLP added in
  every block. With ``num_classes = K`` a label embedding is added to it; labels are 0..K-1 and
  ``y=None`` or ``y == K`` is the null (unconditional) class, used for classifier-free guidance.
- ``checkpointing=True`` recomputes each block in the backward pass (less memory, ~30% slower).
- Text (Rombach et al. 2022, §3.3): with ``context_dim = D`` a cross-attention layer
  (``ldmcourse.nn.SpatialCrossAttention``: queries from the pixels, keys/values from the caption's
  token embeddings (B, L, D), padding masked) follows each block at the downsampling factors in
  ``cross_attention`` (None: every level) and the middle attention; call ``unet(x, t, context=…,
  context_mask=…)``, or wrap it in ``ldmcourse.text.TextConditioned``. With ``context_dim=None``
  (default) nothing changes: the same parameters, created in the same order.

The network knows nothing of schedules or losses: ``unet(x, t, y=None)`` predicts ε, x₀ or v as the
training loss (``ldmcourse.diffusion``) decides.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .nn import Attention, ConvNeXtBlock, Downsample, LinearAttention, ResBlock, TimeEmbedding, Upsample, group_norm
from .nn import SpatialCrossAttention
from .utils import check_counts, check_range


@dataclass
class UNetConfig:
    """Shape of the U-Net. ``attention`` / ``linear_attention`` list downsampling factors (1 = input
    resolution, 2 = half, …) where a full / linear attention layer follows each block."""

    in_channels: int = 1
    out_channels: int | None = None  # None: same as in_channels
    base_channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 2
    attention: tuple[int, ...] = (4,)
    linear_attention: tuple[int, ...] = ()
    mid_attention: bool = True
    head_dim: int = 32
    dropout: float = 0.0
    block: str = "resnet"  # "resnet" | "convnext"
    convnext_mult: int = 2
    groups: int = 8
    num_classes: int | None = None  # K labels; index K is the null class
    checkpointing: bool = False
    context_dim: int | None = None  # text: dimension D of the token embeddings to cross-attend to (None: no text)
    cross_attention: tuple[int, ...] | None = None  # downsampling factors with cross-attention (None: all levels)

    def __post_init__(self):
        self.channel_mult = tuple(self.channel_mult)
        self.attention = tuple(self.attention)
        self.linear_attention = tuple(self.linear_attention)
        if self.block not in ("resnet", "convnext"):
            raise ValueError(f"block={self.block!r}: choose 'resnet' or 'convnext'")
        if not self.channel_mult or self.num_res_blocks < 1:
            raise ValueError("channel_mult must be non-empty and num_res_blocks >= 1")
        if self.num_classes is not None and self.num_classes < 1:
            raise ValueError(f"num_classes={self.num_classes}: use None for an unconditional model, or K >= 1")
        check_range("in_channels", self.in_channels, 1, integer=True)
        if self.out_channels is not None:
            check_range("out_channels", self.out_channels, 1, integer=True, hint="or none for in_channels")
        for name in ("base_channels", "head_dim", "convnext_mult", "groups"):
            check_range(name, getattr(self, name), 1, integer=True)
        check_counts("channel_mult", self.channel_mult)
        check_counts("attention", self.attention, hint="downsampling factors 1, 2, 4, ...")
        check_counts("linear_attention", self.linear_attention, hint="downsampling factors 1, 2, 4, ...")
        check_range("dropout", self.dropout, 0, 1, hi_open=True)
        if self.context_dim is not None:
            check_range("context_dim", self.context_dim, 1, integer=True, hint="or none for no text")
        if self.cross_attention is not None:
            self.cross_attention = tuple(self.cross_attention)
            check_counts("cross_attention", self.cross_attention, hint="downsampling factors 1, 2, 4, ... (or none: every level)")

    @property
    def downsampling(self) -> int:
        """Total downsampling factor: H and W must be divisible by it."""
        return 2 ** (len(self.channel_mult) - 1)


class UNet(nn.Module):
    """``unet(x, t, y=None)``: (B, C_in, H, W), (B,) -> (B, C_out, H, W)."""

    def __init__(self, config: UNetConfig | None = None, **kwargs):
        super().__init__()
        cfg = self.config = config if config is not None else UNetConfig(**kwargs)
        ch0 = cfg.base_channels
        emb_dim = 4 * ch0
        self.time_embed = TimeEmbedding(ch0, emb_dim)
        self.label_embed = nn.Embedding(cfg.num_classes + 1, emb_dim) if cfg.num_classes else None

        def block(cin: int, cout: int) -> nn.Module:
            if cfg.block == "convnext":
                return ConvNeXtBlock(cin, cout, emb_dim, cfg.dropout, cfg.groups, cfg.convnext_mult)
            return ResBlock(cin, cout, emb_dim, cfg.dropout, cfg.groups)

        def attn(ch: int, ds: int) -> nn.Module | None:
            if ds in cfg.attention:
                return Attention(ch, cfg.head_dim, cfg.groups)
            if ds in cfg.linear_attention:
                return LinearAttention(ch, cfg.head_dim, cfg.groups)
            return None

        def xattn(ch: int, ds: int) -> nn.Module | None:
            if cfg.context_dim is None or (cfg.cross_attention is not None and ds not in tuple(cfg.cross_attention)):
                return None
            return SpatialCrossAttention(ch, cfg.context_dim, cfg.head_dim, cfg.groups)

        if cfg.context_dim is not None and cfg.context_dim < 1:
            raise ValueError(f"context_dim={cfg.context_dim}: use None for no text, or the text encoder's dim D >= 1")

        self.conv_in = nn.Conv2d(cfg.in_channels, ch0, 3, padding=1)
        skip_chs = [ch0]
        ch, ds = ch0, 1
        self.down = nn.ModuleList()
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                self.down.append(_Stage(block(ch, ch0 * mult), attn(ch0 * mult, ds), xattn=xattn(ch0 * mult, ds)))
                ch = ch0 * mult
                skip_chs.append(ch)
            if level < len(cfg.channel_mult) - 1:
                self.down.append(_Stage(None, None, Downsample(ch)))
                ds *= 2
                skip_chs.append(ch)

        self.mid = _Stage(block(ch, ch), Attention(ch, cfg.head_dim, cfg.groups) if cfg.mid_attention else None,
                          block2=block(ch, ch),
                          xattn=SpatialCrossAttention(ch, cfg.context_dim, cfg.head_dim, cfg.groups) if cfg.context_dim else None)

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                out = ch0 * mult
                resample = Upsample(out) if (level > 0 and i == cfg.num_res_blocks) else None
                self.up.append(_Stage(block(ch + skip_chs.pop(), out), attn(out, ds), resample, xattn=xattn(out, ds)))
                ch = out
            if level > 0:
                ds //= 2
        assert not skip_chs and ds == 1, "internal error: skip connections do not pair up"

        self.norm_out = group_norm(ch, cfg.groups)
        self.conv_out = nn.Conv2d(ch, cfg.out_channels or cfg.in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def _run(self, stage: nn.Module, h: torch.Tensor, emb: torch.Tensor, context=None, context_mask=None) -> torch.Tensor:
        if self.config.checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(stage, h, emb, context, context_mask, use_reentrant=False)
        return stage(h, emb, context, context_mask)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None,
                context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``context`` (B, L, D) token embeddings and ``context_mask`` (B, L) (True = real token) when text is on."""
        cfg = self.config
        if x.ndim != 4 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"expected x of shape (B, {cfg.in_channels}, H, W), got {tuple(x.shape)}")
        if x.shape[-1] % cfg.downsampling or x.shape[-2] % cfg.downsampling:
            raise ValueError(f"H and W must be divisible by {cfg.downsampling} (= 2^(len(channel_mult)-1)); "
                             f"got {tuple(x.shape[-2:])}: pad the images or use fewer levels")
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        emb = self.time_embed(t)  # (B, E)
        if self.label_embed is not None:
            null = torch.full((x.shape[0],), cfg.num_classes, device=x.device, dtype=torch.long)
            y = null if y is None else y.to(x.device).long()
            if bool(((y < 0) | (y > cfg.num_classes)).any()):
                raise ValueError(f"labels must be in 0..{cfg.num_classes} ({cfg.num_classes} = null class)")
            emb = emb + self.label_embed(y)
        elif y is not None:
            raise ValueError("this U-Net is unconditional (num_classes=None) but labels y were given")

        if cfg.context_dim is None and context is not None:
            raise ValueError("this U-Net has no cross-attention (context_dim=None) but a text context was given")
        if cfg.context_dim is not None and (context is None or context.shape[0] != x.shape[0] or context.shape[-1] != cfg.context_dim):
            raise ValueError(f"this U-Net is text-conditioned: pass context (B={x.shape[0]}, L, {cfg.context_dim}) "
                             "(or wrap it in ldmcourse.text.TextConditioned and pass token ids as y)")
        c = (context, context_mask)

        h = self.conv_in(x)  # (B, ch0, H, W)
        skips = [h]
        for stage in self.down:
            h = self._run(stage, h, emb, *c)  # a block keeps H, W; a downsample halves them
            skips.append(h)
        h = self._run(self.mid, h, emb, *c)
        for stage in self.up:
            h = self._run(stage, torch.cat([h, skips.pop()], dim=1), emb, *c)  # (B, ch + skip_ch, H, W) -> (B, out, ·)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, C_out, H, W)


class _Stage(nn.Module):
    """One step of the U-Net: [block(h, emb)] -> [attention] -> [cross-attention] -> [block2] -> [resample]."""

    def __init__(self, block: nn.Module | None, attn: nn.Module | None, resample: nn.Module | None = None,
                 block2: nn.Module | None = None, xattn: nn.Module | None = None):
        super().__init__()
        self.block, self.attn, self.block2, self.resample = block, attn, block2, resample
        self.xattn = xattn  # registered after the others: a text-off U-Net keeps its parameter order

    def forward(self, h: torch.Tensor, emb: torch.Tensor, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.block is not None:
            h = self.block(h, emb)
        if self.attn is not None:
            h = self.attn(h)
        if self.xattn is not None:
            h = self.xattn(h, context, context_mask)
        if self.block2 is not None:
            h = self.block2(h, emb)
        if self.resample is not None:
            h = self.resample(h)
        return h
