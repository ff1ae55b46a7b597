"""Building blocks of the diffusion U-Net (``ldmcourse.unet``): named cells composed into the model.

- :mod:`.embeddings`: sinusoidal timestep embedding and its MLP.
- :mod:`.blocks`: ResNet block (GroupNorm, SiLU, time injection, dropout), ConvNeXt block,
  down/up-sampling.
- :mod:`.attention`: full (softmax) self-attention and linear attention over pixels.
- :mod:`.cross_attention`: multi-head attention over a context of tokens (text conditioning, the DiT).

Every block with a time input is called ``block(x, emb)``; the others ``block(x)``.
"""

from .attention import Attention, LinearAttention
from .cross_attention import CrossAttention, SpatialCrossAttention
from .blocks import ConvNeXtBlock, Downsample, ResBlock, Upsample, group_norm
from .embeddings import TimeEmbedding, timestep_embedding

__all__ = ["Attention", "LinearAttention", "CrossAttention", "SpatialCrossAttention", "ConvNeXtBlock", "Downsample", "ResBlock", "Upsample", "group_norm",
           "TimeEmbedding", "timestep_embedding"]
