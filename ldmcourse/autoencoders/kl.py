"""The KL autoencoder: Stable Diffusion's first stage (``AutoencoderKL``), scaled down for 32x32 images.

Rombach et al. 2022 ("High-Resolution Image Synthesis with Latent Diffusion Models", sec. 3.1 and
appendix G) compress an image x ∈ R^{H×W×3} to a latent z ∈ R^{h×w×c} with h = H/f, then diffuse z.
The autoencoder is built from the same parts as the U-Net:

    encoder:  conv_in → [ResNet blocks → downsample] per level → mid (ResNet, attention, ResNet)
              → GroupNorm, SiLU, conv_out → 2c channels (mean, log-variance) → 1x1 "quant_conv"
    decoder:  1x1 "post_quant_conv" → conv_in → mid (ResNet, attention, ResNet)
              → [ResNet blocks → upsample] per level → GroupNorm, SiLU, conv_out

``channels`` has one entry per level, so the downsampling factor is f = 2^(len(channels) - 1):
(32, 64, 64) maps 32x32 → 8x8 (f = 4, "KL-f4" in the paper's Table 8).

The posterior q(z|x) = N(μ, diag σ²) (:class:`DiagonalGaussian`). The loss (latent-diffusion's
``LPIPSWithDiscriminator``) is

    L = |x - x̂|₁ (or ²) + w_p · d_perc(x, x̂) + w_KL · KL(q(z|x) ‖ N(0, I)) [+ w_d · L_GAN]

with a *tiny* KL weight (1e-6 in the paper, relative to a reconstruction error summed over pixels;
we average per pixel and divide the KL sum by the number of pixels, which keeps that meaning). The KL
term only stops the latent from drifting to huge values; it does not make q(z|x) match the prior, so
decoding z ~ N(0, I) gives garbage (notebook 08 shows it) — the diffusion model learns the latent
distribution instead. Latent diffusion then rescales z by 1/std (``ldmcourse.latent``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .ae import check_images
from .perceptual import PerceptualLoss, classifier_features, random_features
from ..utils import check_counts, check_range

REC_LOSSES = ("l1", "l2")


@dataclass
class KLAutoencoderConfig:
    in_channels: int = 1
    image_size: int = 32
    channels: tuple[int, ...] = (32, 64, 64)  # one level each; f = 2**(len(channels) - 1)
    num_res_blocks: int = 1  # ResNet blocks per level in the encoder (decoder: one more, as in SD)
    latent_channels: int = 4  # c
    attention: bool = True  # self-attention in the middle block
    groups: int = 8  # GroupNorm groups (SD uses 32 with wider channels)
    # --- loss -------------------------------------------------------------------------------
    rec_loss: str = "l1"  # "l1" | "l2"
    perceptual_weight: float = 1.0  # 0 disables the perceptual term
    perceptual_net: str = "random"  # "random" (frozen random conv features) | path to a classifier checkpoint
    kl_weight: float = 1e-5
    disc_weight: float = 0.0  # > 0 adds a patch discriminator (hinge loss)
    disc_start: int = 0  # training step at which the adversarial term switches on
    disc_channels: int = 32
    disc_layers: int = 2

    def __post_init__(self):
        self.channels = tuple(self.channels)
        if not self.channels:
            raise ValueError("channels must have at least one entry, e.g. (32, 64, 64) for f = 4")
        check_range("in_channels", self.in_channels, 1, integer=True)
        check_range("image_size", self.image_size, 1, integer=True)
        check_counts("channels", self.channels)
        for name in ("num_res_blocks", "latent_channels", "groups", "disc_channels", "disc_layers"):
            check_range(name, getattr(self, name), 1, integer=True)
        for name in ("perceptual_weight", "kl_weight", "disc_weight"):
            check_range(name, getattr(self, name), 0, hint="0 turns the term off")
        check_range("disc_start", self.disc_start, 0, integer=True)
        if self.image_size % self.factor:
            raise ValueError(f"image_size={self.image_size} is not divisible by f={self.factor} "
                             f"(= 2**(len(channels)-1) with channels={self.channels})")
        if any(c % self.groups for c in self.channels):
            raise ValueError(f"every entry of channels={self.channels} must be divisible by groups={self.groups}")
        if self.rec_loss not in REC_LOSSES:
            raise ValueError(f"rec_loss={self.rec_loss!r}: choose one of {REC_LOSSES}")

    @property
    def factor(self) -> int:
        return 2 ** (len(self.channels) - 1)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        s = self.image_size // self.factor
        return (self.latent_channels, s, s)


# ------------------------------------------------------------------------------------------------
# building blocks (the same cells as SD's VAE)
# ------------------------------------------------------------------------------------------------

class ResnetBlock(nn.Module):
    """x + conv(SiLU(GN(conv(SiLU(GN(x)))))), with a 1x1 conv on the skip when channels change."""

    def __init__(self, c_in: int, c_out: int, groups: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(groups, c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2, self.conv2 = nn.GroupNorm(groups, c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the h·w positions, residual."""

    def __init__(self, c: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, c)
        self.qkv = nn.Conv2d(c, 3 * c, 1)
        self.proj = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(-1, -2).unbind(1)  # 3 x (B, hw, C)
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q kᵀ/√C) v: (B, hw, C)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


def _mid(c: int, groups: int, attention: bool) -> nn.Sequential:
    return nn.Sequential(ResnetBlock(c, c, groups), AttnBlock(c, groups) if attention else nn.Identity(),
                         ResnetBlock(c, c, groups))


class Encoder(nn.Module):
    def __init__(self, cfg: KLAutoencoderConfig):
        super().__init__()
        ch, g = cfg.channels, cfg.groups
        self.conv_in = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)
        blocks: list[nn.Module] = []
        prev = ch[0]
        for i, c in enumerate(ch):
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResnetBlock(prev, c, g))
                prev = c
            if i < len(ch) - 1:  # (B, c, H, W) -> (B, c, H/2, W/2)
                blocks.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
        self.down = nn.Sequential(*blocks)
        self.mid = _mid(prev, g, cfg.attention)
        self.out = nn.Sequential(nn.GroupNorm(g, prev), nn.SiLU(), nn.Conv2d(prev, 2 * cfg.latent_channels, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.mid(self.down(self.conv_in(x))))  # (B, C_in, H, W) -> (B, 2c, H/f, W/f)


class Decoder(nn.Module):
    def __init__(self, cfg: KLAutoencoderConfig):
        super().__init__()
        ch, g = cfg.channels, cfg.groups
        self.conv_in = nn.Conv2d(cfg.latent_channels, ch[-1], 3, padding=1)
        self.mid = _mid(ch[-1], g, cfg.attention)
        blocks: list[nn.Module] = []
        prev = ch[-1]
        for i in reversed(range(len(ch))):
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResnetBlock(prev, ch[i], g))
                prev = ch[i]
            if i > 0:  # (B, c, h, w) -> (B, c, 2h, 2w)
                blocks += [nn.Upsample(scale_factor=2.0, mode="nearest"), nn.Conv2d(prev, prev, 3, padding=1)]
        self.up = nn.Sequential(*blocks)
        self.out = nn.Sequential(nn.GroupNorm(g, prev), nn.SiLU(), nn.Conv2d(prev, cfg.in_channels, 3, padding=1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.out(self.up(self.mid(self.conv_in(z))))  # (B, c, h, w) -> (B, C_in, h*f, w*f)


class DiagonalGaussian:
    """q(z|x) = N(μ, diag σ²) from the encoder's 2c output channels (first c: μ, last c: log σ²)."""

    def __init__(self, moments: torch.Tensor):
        self.mean, logvar = moments.chunk(2, dim=1)  # (B, 2c, h, w) -> 2 x (B, c, h, w)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """z = μ + σ ⊙ ε (reparameterisation)."""
        eps = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * eps

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL(N(μ, σ²) ‖ N(0, I)) = ½ Σ (μ² + σ² - 1 - log σ²), per image: (B,)."""
        return 0.5 * (self.mean**2 + self.logvar.exp() - 1.0 - self.logvar).flatten(1).sum(1)


class PatchDiscriminator(nn.Module):
    """PatchGAN (Isola et al. 2017): a logit per overlapping patch, (B, 1, h', w')."""

    def __init__(self, in_channels: int, channels: int = 32, layers: int = 2):
        super().__init__()
        mods: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        c = channels
        for _ in range(layers - 1):  # (B, c, H, W) -> (B, 2c, H/2, W/2)
            mods += [nn.Conv2d(c, 2 * c, 4, stride=2, padding=1), nn.GroupNorm(8, 2 * c), nn.LeakyReLU(0.2)]
            c *= 2
        mods += [nn.Conv2d(c, 1, 3, padding=1)]
        self.net = nn.Sequential(*mods)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))  # training steps seen (for disc_start)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class KLAutoencoder(nn.Module):
    """``encode(x) -> DiagonalGaussian``; ``decode(z) -> x̂``; ``forward(x) -> (x̂, posterior)``."""

    def __init__(self, cfg: KLAutoencoderConfig):
        super().__init__()
        self.cfg = cfg
        c = cfg.latent_channels
        self.encoder = Encoder(cfg)
        self.quant_conv = nn.Conv2d(2 * c, 2 * c, 1)
        self.post_quant_conv = nn.Conv2d(c, c, 1)
        self.decoder = Decoder(cfg)
        self.discriminator = (PatchDiscriminator(cfg.in_channels, cfg.disc_channels, cfg.disc_layers)
                              if cfg.disc_weight > 0 else None)

    @property
    def factor(self) -> int:
        return self.cfg.factor

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        check_images(x, self.cfg.in_channels, self.cfg.image_size, "KLAutoencoder")
        return DiagonalGaussian(self.quant_conv(self.encoder(x)))  # moments (B, 2c, H/f, W/f)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        c, h, w = self.cfg.latent_shape
        if z.ndim != 4 or z.shape[1] != c:
            raise ValueError(f"KLAutoencoder.decode expects latents (B, {c}, {h}, {w}), got {tuple(z.shape)}")
        return self.decoder(self.post_quant_conv(z))  # (B, C_in, H, W), unbounded (clamp to [-1, 1] to view)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None, sample: bool = True):
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample else posterior.mode()
        return self.decode(z), posterior


# ------------------------------------------------------------------------------------------------
# loss
# ------------------------------------------------------------------------------------------------

def make_perceptual(cfg: KLAutoencoderConfig) -> PerceptualLoss | None:
    """The frozen feature net for the perceptual term (None when its weight is 0)."""
    if cfg.perceptual_weight <= 0:
        return None
    if cfg.perceptual_net == "random":
        return PerceptualLoss(random_features(cfg.in_channels))
    from ..classifier import load_classifier  # the course classifier (evaluation issue)

    clf, _ = load_classifier(cfg.perceptual_net)
    return PerceptualLoss(classifier_features(clf))


def _no_grad_params_call(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` with gradients to x but none to the module's parameters (the generator's view of D)."""
    params = {k: v.detach() for k, v in module.named_parameters()}
    return torch.func.functional_call(module, {**params, **dict(module.named_buffers())}, (x,))


def kl_autoencoder_loss(cfg: KLAutoencoderConfig):
    """``loss_fn(model, batch, generator) -> (loss, logs)`` for :func:`ldmcourse.train.fit`.

    With a discriminator, one optimiser trains both players: the generator term sees D through
    detached parameters (so it only moves the autoencoder), and D's hinge loss sees x̂ detached (so it
    only moves D). This equals the usual two-optimiser alternation with simultaneous updates.
    """
    perceptual = make_perceptual(cfg)

    def loss_fn(model: KLAutoencoder, batch, generator: torch.Generator | None = None):
        nonlocal perceptual
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        x_hat, posterior = model(x, generator)
        rec = (x_hat - x).abs() if cfg.rec_loss == "l1" else (x_hat - x) ** 2
        rec = rec.flatten(1).mean(1)  # (B,) per-pixel mean
        logs: dict[str, float] = {"rec": float(rec.mean().detach())}
        nll = rec
        if perceptual is not None:
            perceptual = perceptual.to(x.device)
            p = perceptual(x_hat, x)  # (B,)
            nll = nll + cfg.perceptual_weight * p
            logs["perceptual"] = float(p.mean().detach())
        kl = posterior.kl() / x[0].numel()  # (B,) KL per pixel: keeps LDM's meaning of kl_weight
        loss = (nll + cfg.kl_weight * kl).mean()
        logs["kl"] = float(kl.mean().detach())
        disc = getattr(model, "discriminator", None)
        if disc is not None and model.training:
            disc.step += 1
            if int(disc.step) > cfg.disc_start:
                g_loss = -_no_grad_params_call(disc, x_hat).mean()  # generator: make D call x̂ real
                d_loss = 0.5 * (F.relu(1.0 - disc(x)).mean() + F.relu(1.0 + disc(x_hat.detach())).mean())  # hinge
                loss = loss + cfg.disc_weight * g_loss + d_loss
                logs.update(g_loss=float(g_loss.detach()), d_loss=float(d_loss.detach()))
        return loss, logs

    return loss_fn


__all__ = ["KLAutoencoderConfig", "KLAutoencoder", "DiagonalGaussian", "PatchDiscriminator", "ResnetBlock",
           "AttnBlock", "kl_autoencoder_loss", "make_perceptual"]
