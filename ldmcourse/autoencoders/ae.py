"""Deterministic autoencoders: x -> z -> x̂, trained on reconstruction error alone.

``ConvAE``: stride-2 conv encoder, upsampling decoder. 32x32 inputs are halved ``len(channels)``
times; the latent is a small spatial map (or a vector when ``latent_dim`` is set).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class ConvAEConfig:
    in_channels: int = 1
    image_size: int = 32
    channels: tuple[int, ...] = (32, 64, 128)  # one stride-2 stage per entry
    latent_dim: int = 16  # size of the bottleneck vector

    def __post_init__(self):
        self.channels = tuple(self.channels)
        down = 2 ** len(self.channels)
        if self.image_size % down:
            raise ValueError(f"image_size={self.image_size} must be divisible by 2**len(channels)={down}")


def check_images(x: torch.Tensor, channels: int, size: int, who: str) -> None:
    """Raise a clear error for inputs of the wrong shape (a common mistake: 28x28 MNIST, RGB vs grey)."""
    if x.ndim != 4 or x.shape[1] != channels or x.shape[-2:] != (size, size):
        raise ValueError(
            f"{who} expects images of shape (B, {channels}, {size}, {size}), got {tuple(x.shape)}. "
            f"Load data with ldmcourse.data.load_dataset(..., size={size}) (which pads 28x28 to 32x32), "
            f"or build the model with in_channels={x.shape[1] if x.ndim == 4 else '?'} / image_size={x.shape[-1]}."
        )


class ConvAE(nn.Module):
    def __init__(self, cfg: ConvAEConfig):
        super().__init__()
        self.cfg = cfg
        c = cfg.channels
        enc: list[nn.Module] = []
        prev = cfg.in_channels
        for ch in c:  # (B, prev, H, W) -> (B, ch, H/2, W/2)
            enc += [nn.Conv2d(prev, ch, 4, stride=2, padding=1), nn.BatchNorm2d(ch), nn.LeakyReLU(0.2)]
            prev = ch
        self.encoder = nn.Sequential(*enc)
        self.s = cfg.image_size // 2 ** len(c)
        self.to_z = nn.Linear(c[-1] * self.s * self.s, cfg.latent_dim)  # (B, C*s*s) -> (B, latent_dim)
        self.from_z = nn.Linear(cfg.latent_dim, c[-1] * self.s * self.s)
        dec: list[nn.Module] = []
        for ch_in, ch_out in zip(c[::-1], list(c[::-1][1:]) + [c[0]]):  # (B, ch_in, h, w) -> (B, ch_out, 2h, 2w)
            dec += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch_in, ch_out, 3, padding=1),
                    nn.BatchNorm2d(ch_out), nn.LeakyReLU(0.2)]
        dec += [nn.Conv2d(c[0], cfg.in_channels, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x, self.cfg.in_channels, self.cfg.image_size, "ConvAE")
        h = self.encoder(x)  # (B, C, s, s)
        return self.to_z(h.flatten(1))  # (B, latent_dim)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        h = self.from_z(z).view(-1, self.cfg.channels[-1], self.s, self.s)
        return torch.tanh(self.decoder(h))  # (B, C_in, H, W) in [-1, 1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


def reconstruction_loss(model: nn.Module, batch, generator: torch.Generator | None = None):
    """Mean squared error between x and its reconstruction; the AE's whole objective."""
    x = batch[0] if isinstance(batch, (list, tuple)) else batch
    x_hat = model(x)
    loss = F.mse_loss(x_hat, x)
    return loss, {"mse": float(loss.detach())}
