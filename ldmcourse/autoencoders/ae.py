"""Deterministic autoencoders: x -> z -> x̂, trained on reconstruction error alone.

- ``MLPAE``: fully connected, images flattened. ``MLPAEConfig.baseline()`` is seed 002's baseline
  (784 -> 128 -> 64 -> 12 -> 3, ReLU); ``MLPAEConfig.improved()`` its improved version (16-D latent,
  784 -> 256 -> 128 -> 64 -> 16, BatchNorm + LeakyReLU).
- ``ConvAE``: stride-2 conv encoder, upsampling decoder. Inputs are halved ``len(channels)`` times,
  then flattened to a ``latent_dim`` vector.
- ``AEConfig`` + ``build_ae``: one config that picks any of the three (``arch``), used by the CLI.
- ``augment``: small random rotations and input noise (training-time options for AEs and VAEs).

All of them take and return images in [-1, 1] (tanh output) and train on ``reconstruction_loss`` (MSE).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..utils import check_counts, check_range


@dataclass
class ConvAEConfig:
    in_channels: int = 1
    image_size: int = 32
    channels: tuple[int, ...] = (32, 64, 128)  # one stride-2 stage per entry
    latent_dim: int = 16  # size of the bottleneck vector

    def __post_init__(self):
        self.channels = tuple(self.channels)
        check_range("in_channels", self.in_channels, 1, integer=True)
        check_range("image_size", self.image_size, 1, integer=True)
        check_counts("channels", self.channels)
        check_range("latent_dim", self.latent_dim, 1, integer=True)
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


# ----------------------------------------------------------------------------------------------
# MLP autoencoders (seed 002)
# ----------------------------------------------------------------------------------------------

@dataclass
class MLPAEConfig:
    in_channels: int = 1
    image_size: int = 28
    hidden: tuple[int, ...] = (128, 64, 12)  # encoder widths; the decoder mirrors them
    latent_dim: int = 3
    batchnorm: bool = False  # BatchNorm1d + LeakyReLU after every hidden layer (else plain ReLU)

    def __post_init__(self):
        self.hidden = tuple(self.hidden)
        check_range("in_channels", self.in_channels, 1, integer=True)
        check_range("image_size", self.image_size, 1, integer=True)
        if self.latent_dim < 1 or any(h < 1 for h in self.hidden):
            raise ValueError(f"latent_dim ({self.latent_dim}) and hidden widths {self.hidden} must be >= 1")

    @classmethod
    def baseline(cls, **kw) -> "MLPAEConfig":
        """Seed 002's baseline: 784-128-64-12-3, ReLU."""
        return cls(**{"hidden": (128, 64, 12), "latent_dim": 3, "batchnorm": False, **kw})

    @classmethod
    def improved(cls, **kw) -> "MLPAEConfig":
        """Seed 002's improved AE: 16-D latent, wider (256-128-64), BatchNorm + LeakyReLU."""
        return cls(**{"hidden": (256, 128, 64), "latent_dim": 16, "batchnorm": True, **kw})


def mlp_layers(widths: list[int], batchnorm: bool) -> list[nn.Module]:
    """Linear layers widths[0] -> ... -> widths[-1], each followed by BatchNorm1d+LeakyReLU or ReLU."""
    layers: list[nn.Module] = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b)] + ([nn.BatchNorm1d(b), nn.LeakyReLU(0.2)] if batchnorm else [nn.ReLU()])
    return layers


class MLPAE(nn.Module):
    def __init__(self, cfg: MLPAEConfig):
        super().__init__()
        self.cfg = cfg
        c, s, h = cfg.in_channels, cfg.image_size, list(cfg.hidden)
        d = c * s * s
        # (B, C, H, W) -> (B, D) -> ... -> (B, latent_dim)
        self.encoder = nn.Sequential(nn.Flatten(), *mlp_layers([d] + h, cfg.batchnorm), nn.Linear(h[-1], cfg.latent_dim))
        # (B, latent_dim) -> ... -> (B, D) -> (B, C, H, W); tanh because images live in [-1, 1]
        self.decoder = nn.Sequential(*mlp_layers([cfg.latent_dim] + h[::-1], cfg.batchnorm), nn.Linear(h[0], d),
                                     nn.Tanh(), nn.Unflatten(1, (c, s, s)))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x, self.cfg.in_channels, self.cfg.image_size, "MLPAE")
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


# ----------------------------------------------------------------------------------------------
# one config for the CLI, augmentation
# ----------------------------------------------------------------------------------------------

AE_ARCHS = ("conv", "mlp-baseline", "mlp-improved")


@dataclass
class AEConfig:
    """Any autoencoder of this module, picked by ``arch``; plus training-time augmentation.

    ``latent_dim=None`` and ``hidden=None`` take the arch's default (conv 16; baseline 3 and (128, 64, 12);
    improved 16 and (256, 128, 64)). A checkpoint written with the older ``ConvAEConfig`` loads as arch="conv".
    """

    arch: str = "conv"
    in_channels: int = 1
    image_size: int = 32
    channels: tuple[int, ...] = (32, 64, 128)  # conv only
    hidden: tuple[int, ...] | None = None  # mlp only
    latent_dim: int | None = None
    rotate_deg: float = 0.0  # augmentation: random rotation of input and target
    noise_std: float = 0.0  # augmentation: Gaussian noise on the input only (a denoising AE)

    def __post_init__(self):
        if self.arch not in AE_ARCHS:
            raise ValueError(f"arch={self.arch!r}: choose one of {AE_ARCHS}")
        self.channels = tuple(self.channels)
        self.hidden = tuple(self.hidden) if self.hidden is not None else None
        check_range("in_channels", self.in_channels, 1, integer=True)
        check_range("image_size", self.image_size, 1, integer=True)
        check_counts("channels", self.channels)
        if self.hidden is not None:
            check_counts("hidden", self.hidden)
        if self.latent_dim is not None:
            check_range("latent_dim", self.latent_dim, 1, integer=True, hint="or none for the arch's default")
        check_range("rotate_deg", self.rotate_deg, 0, 180)
        check_range("noise_std", self.noise_std, 0, hint="0 turns the input noise off")

    def model_config(self) -> ConvAEConfig | MLPAEConfig:
        common = dict(in_channels=self.in_channels, image_size=self.image_size)
        if self.latent_dim is not None:
            common["latent_dim"] = self.latent_dim
        if self.arch == "conv":
            return ConvAEConfig(channels=self.channels, **common)
        if self.hidden is not None:
            common["hidden"] = self.hidden
        return (MLPAEConfig.baseline if self.arch == "mlp-baseline" else MLPAEConfig.improved)(**common)


def build_ae(cfg: AEConfig) -> nn.Module:
    mc = cfg.model_config()
    return ConvAE(mc) if isinstance(mc, ConvAEConfig) else MLPAE(mc)


def rotate(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate image b by ``angles[b]`` radians (counter-clockwise) about its centre; corners fill with background -1."""
    cos, sin, zero = angles.cos(), angles.sin(), torch.zeros_like(angles)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1).to(x.dtype)  # (B, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)  # output pixel -> where to read in x
    return F.grid_sample(x + 1, grid, mode="bilinear", padding_mode="zeros", align_corners=False) - 1


def augment(x: torch.Tensor, generator: torch.Generator | None = None, rotate_deg: float = 0.0,
            noise_std: float = 0.0) -> torch.Tensor:
    """Rotate each image by a uniform angle in [-rotate_deg, rotate_deg], then add N(0, noise_std²) noise.
    x: (B, C, H, W) in [-1, 1]; the same ``generator`` gives the same batch."""
    if rotate_deg:
        u = torch.rand(x.shape[0], generator=generator, device=x.device)
        x = rotate(x, (2 * u - 1) * math.radians(rotate_deg))
    if noise_std:
        x = x + noise_std * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x


def ae_loss(cfg: AEConfig):
    """loss_fn for ``fit``: MSE between the (rotated) target and the reconstruction of its noisy version."""
    if not (cfg.rotate_deg or cfg.noise_std):
        return reconstruction_loss

    def loss_fn(model, batch, generator):
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        x = augment(x, generator, rotate_deg=cfg.rotate_deg)
        x_hat = model(augment(x, generator, noise_std=cfg.noise_std))
        loss = F.mse_loss(x_hat, x)
        return loss, {"mse": float(loss.detach())}

    return loss_fn
