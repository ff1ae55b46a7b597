"""Text conditioning: a tokenizer over the caption vocabulary and a small transformer text encoder τ_θ.

    "a thin three" ──tokenize──► [<start>, a, thin, three, <pad>, …] (B, L) ──τ_θ──► tokens (B, L, D), mask (B, L)

- :class:`Tokenizer`: one id per word of the caption vocabulary (``ldmcourse.captions``), a ``<start>``
  token first and ``<pad>`` after, to a fixed length L. A prompt with a word outside the vocabulary
  raises an error that lists the vocabulary. The **empty caption** "" is just ``[<start>, <pad>, …]``:
  its encoding is the *null condition* of classifier-free guidance (as Stable Diffusion's empty prompt),
  and ``y=None`` means exactly that.
- :class:`TextEncoder`: token + learned position embeddings, a few pre-norm transformer layers
  (self-attention with the padding mask, MLP), a final LayerNorm. Every token's embedding is kept
  (not one pooled vector): the backbone's cross-attention chooses which words to look at.
- :class:`TextConditioned`: ``model(x, t, y=token_ids)`` = backbone(x, t, context=τ_θ(y)): the call of
  the class-conditional U-Net, so the training loss, every sampler and ``ldmcourse.guidance`` work
  unchanged (``cfg_eps_model(model, tokens, s, uncond=tokenizer(""))``).

**Trained jointly** with the diffusion model, as in latent diffusion's own text-to-image model
(Rombach et al. 2022, §4.3.2: τ_θ a transformer "jointly optimised" with the U-Net through eq. 3):
there is no pretrained text model to download here (Stable Diffusion's frozen CLIP), the vocabulary
has 27 words whose only meaning is the attributes the denoiser must draw, and the denoising loss is
exactly the signal that says which of them matter; a separately trained encoder would need a second
objective (e.g. contrastive against images) and a second training run for no gain at this size.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn as nn

from .captions import CLASS_WORDS, WORDS
from .nn import CrossAttention

PAD, START = "<pad>", "<start>"
VOCAB: tuple[str, ...] = (PAD, START, "a", "an", "digit", *CLASS_WORDS, *WORDS["thickness"], *WORDS["width"],
                          "upright", "slanted", "to", "the", "left", "right")


class PromptError(ValueError):
    """A prompt the tokenizer cannot read (unknown words, too long)."""


class Tokenizer:
    """Words -> ids over :data:`VOCAB`; ``tokenizer(prompts)`` -> (B, max_len) LongTensor."""

    def __init__(self, vocab: tuple[str, ...] = VOCAB, max_len: int = 12):
        self.vocab, self.max_len = tuple(vocab), max_len
        self.ids = {w: i for i, w in enumerate(self.vocab)}
        self.pad, self.start = self.ids[PAD], self.ids[START]

    def __len__(self) -> int:
        return len(self.vocab)

    def words(self, prompt: str) -> list[str]:
        return re.sub(r"[,.;:!?]", " ", prompt.lower()).split()

    def encode(self, prompt: str) -> list[int]:
        words = self.words(prompt)
        unknown = [w for w in words if w not in self.ids or w in (PAD, START)]
        if unknown:
            known = " ".join(w for w in self.vocab if w not in (PAD, START))
            raise PromptError(f"prompt {prompt!r} has words outside the caption vocabulary: {', '.join(map(repr, unknown))}. "
                              f"Use only: {known} (e.g. 'a thin three', 'a bold wide seven slanted to the right')")
        if len(words) + 1 > self.max_len:
            raise PromptError(f"prompt {prompt!r} has {len(words)} words; at most {self.max_len - 1} fit")
        ids = [self.start] + [self.ids[w] for w in words]
        return ids + [self.pad] * (self.max_len - len(ids))

    def __call__(self, prompts: str | list[str]) -> torch.Tensor:
        if isinstance(prompts, str):
            prompts = [prompts]
        return torch.tensor([self.encode(p) for p in prompts], dtype=torch.long)  # (B, L)

    def decode(self, ids: torch.Tensor) -> list[str]:
        return [" ".join(self.vocab[i] for i in row if i not in (self.pad, self.start)) for row in torch.as_tensor(ids).tolist()]

    def null(self, n: int = 1) -> torch.Tensor:
        """The empty caption, (n, L): the null condition."""
        return self([""] * n)


@dataclass
class TextEncoderConfig:
    """Shape of τ_θ. ``vocab_size`` and ``max_len`` must match the :class:`Tokenizer`."""

    dim: int = 64  # D: the context dimension the backbone's cross-attention reads (context_dim)
    depth: int = 2
    heads: int = 4
    mlp_ratio: int = 4
    dropout: float = 0.0
    vocab_size: int = len(VOCAB)
    max_len: int = 12


class _EncoderLayer(nn.Module):
    """Pre-norm transformer layer: x + SelfAttn(LN(x), mask); x + MLP(LN(x))."""

    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim)
        self.attn = CrossAttention(cfg.dim, heads=cfg.heads)
        self.norm2 = nn.LayerNorm(cfg.dim)
        self.mlp = nn.Sequential(nn.Linear(cfg.dim, cfg.mlp_ratio * cfg.dim), nn.GELU(),
                                 nn.Linear(cfg.mlp_ratio * cfg.dim, cfg.dim))
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.attn(self.norm1(x), mask=mask))
        return x + self.dropout(self.mlp(self.norm2(x)))


class TextEncoder(nn.Module):
    """``encoder(ids)``: (B, L) LongTensor -> token embeddings (B, L, D) and mask (B, L) (True = real token)."""

    def __init__(self, config: TextEncoderConfig | None = None, pad_id: int = 0, **kwargs):
        super().__init__()
        cfg = self.config = config if config is not None else TextEncoderConfig(**kwargs)
        self.pad_id = pad_id
        self.token_embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.max_len, cfg.dim))
        nn.init.normal_(self.token_embed.weight, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.02)
        self.layers = nn.ModuleList(_EncoderLayer(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if ids.ndim != 2 or ids.shape[1] > self.config.max_len:
            raise ValueError(f"expected token ids (B, L <= {self.config.max_len}), got {tuple(ids.shape)}")
        mask = ids != self.pad_id  # (B, L)
        h = self.token_embed(ids) + self.pos_embed[:, :ids.shape[1]]  # (B, L, D)
        for layer in self.layers:
            h = layer(h, mask)
        return self.norm(h), mask


class TextConditioned(nn.Module):
    """``model(x, t, y=None)`` with ``y`` token ids (B, L): the backbone (U-Net or DiT, built with
    ``context_dim = encoder.config.dim``) cross-attends to τ_θ(y). ``y=None`` is the empty caption."""

    def __init__(self, backbone: nn.Module, encoder: TextEncoder, tokenizer: Tokenizer | None = None):
        super().__init__()
        self.backbone, self.encoder = backbone, encoder
        self.tokenizer = tokenizer or Tokenizer(max_len=encoder.config.max_len)
        if len(self.tokenizer) != encoder.config.vocab_size:
            raise ValueError(f"tokenizer has {len(self.tokenizer)} words but the encoder {encoder.config.vocab_size}")
        ctx = getattr(getattr(backbone, "config", None), "context_dim", None)
        if ctx != encoder.config.dim:
            raise ValueError(f"the backbone's context_dim ({ctx}) must equal the text encoder's dim ({encoder.config.dim})")
        self.register_buffer("null_ids", self.tokenizer.null(), persistent=False)  # (1, L)

    @property
    def config(self):
        return self.backbone.config

    def tokenize(self, prompts: str | list[str]) -> torch.Tensor:
        return self.tokenizer(prompts).to(self.null_ids.device)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        ids = self.null_ids.expand(x.shape[0], -1) if y is None else y.to(x.device).long()  # (B, L)
        if ids.ndim != 2 or ids.shape[0] != x.shape[0]:
            raise ValueError(f"y must be token ids (B={x.shape[0]}, L) from the tokenizer, got {tuple(ids.shape)}")
        context, mask = self.encoder(ids)  # (B, L, D), (B, L)
        return self.backbone(x, t, context=context, context_mask=mask)


__all__ = ["VOCAB", "PromptError", "Tokenizer", "TextEncoderConfig", "TextEncoder", "TextConditioned"]
