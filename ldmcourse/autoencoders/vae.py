"""Variational autoencoders (Kingma & Welling 2014): an encoder q(z|x), a decoder p(x|z), a prior N(0, I).

Public API (used by the notebooks, the NVAE comparison and latent diffusion):

- :class:`VAEConfig` and :class:`VAE` (``arch="mlp"`` or ``"conv"``); ``ConvVAE(cfg)`` / ``MLPVAE(cfg)`` are
  the same class with ``arch`` set. ``encode(x) -> (mu, logvar)``, ``decode(z) -> logits`` (Bernoulli)
  or the mean (Gaussian), ``decode_mean(z)`` -> an image in [-1, 1] for both, ``forward(x, generator)``
  -> ``(decoder_output, mu, logvar, z)``, ``sample_prior(n, generator)``.
- :func:`reparameterize`, :func:`kl_standard_normal` (closed form), :func:`log_likelihood`.
- :func:`elbo` -> per-image ``ELBO(elbo, recon, kl)`` in nats, :func:`iwae_nll` -> per-image
  importance-weighted estimate of -log p(x) in nats (Burda et al. 2016), computed in chunks of
  samples so k = 1000 fits in memory.
- :func:`vae_loss` -> the training objective for :func:`ldmcourse.train.fit` (β, KL warm-up,
  dynamic binarisation, augmentation), :func:`interpolate`.

Conventions. Images enter ``encode`` in [-1, 1] (the course convention). With the Bernoulli
likelihood the *target* is ``(x + 1) / 2``, which must be {0, 1} for log p(x|z) to be a likelihood:
train and evaluate on dynamically binarised images (:func:`ldmcourse.data.dynamic_binarize`,
mapped back to {-1, 1}). With the Gaussian likelihood p(x|z) = N(x; decoder mean, obs_std² I) on x in
[-1, 1]; its reconstruction term is a scaled MSE plus a constant.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .ae import augment, check_images, mlp_layers
from ..utils import check_counts, check_range, randn_like

LIKELIHOODS = ("bernoulli", "gaussian")
ARCHS = ("mlp", "conv")
LOG_2PI = math.log(2 * math.pi)


@dataclass
class VAEConfig:
    """Network (arch, sizes), likelihood, and the training objective's knobs (β, warm-up, augmentation)."""

    arch: str = "conv"  # "mlp" | "conv"
    in_channels: int = 1
    image_size: int = 28
    latent_dim: int = 16
    hidden: tuple[int, ...] = (512, 256)  # mlp: encoder widths (the decoder mirrors them)
    batchnorm: bool = False  # mlp: BatchNorm1d + LeakyReLU (the seed's "improved" VAE) instead of plain ReLU
    channels: tuple[int, ...] = (32, 64)  # conv: one stride-2 stage per entry (28 -> 14 -> 7)
    likelihood: str = "bernoulli"  # "bernoulli" (logits + BCE) | "gaussian" (mean + MSE)
    obs_std: float = 0.1  # gaussian only: std of p(x|z) on [-1, 1] images
    beta: float = 1.0  # weight of the KL term (β-VAE); 1 gives the ELBO
    kl_warmup: int = 0  # steps over which the KL weight ramps linearly 0 -> beta (0: no warm-up)
    binarize: bool = True  # bernoulli: dynamically binarise every training batch (the likelihood protocol)
    rotate_deg: float = 0.0  # augmentation: uniform random rotation in [-rotate_deg, rotate_deg]
    noise_std: float = 0.0  # augmentation: Gaussian noise added to the encoder input only

    def __post_init__(self):
        self.hidden, self.channels = tuple(self.hidden), tuple(self.channels)
        if self.arch not in ARCHS:
            raise ValueError(f"arch={self.arch!r}: choose one of {ARCHS}")
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood={self.likelihood!r}: choose one of {LIKELIHOODS}")
        if self.arch == "conv" and self.image_size % 2 ** len(self.channels):
            raise ValueError(f"image_size={self.image_size} must be divisible by 2**len(channels)={2 ** len(self.channels)} "
                             "(28 works with 2 stages, 32 with up to 5)")
        check_range("in_channels", self.in_channels, 1, integer=True)
        check_range("image_size", self.image_size, 1, integer=True)
        check_counts("hidden", self.hidden)
        check_counts("channels", self.channels)
        check_range("latent_dim", self.latent_dim, 1, integer=True)
        check_range("beta", self.beta, 0, hint="1 gives the ELBO")
        check_range("obs_std", self.obs_std, 0, lo_open=True)
        check_range("kl_warmup", self.kl_warmup, 0, integer=True, hint="0: no warm-up")
        check_range("rotate_deg", self.rotate_deg, 0, 180)
        check_range("noise_std", self.noise_std, 0)


class VAE(nn.Module):
    """Gaussian encoder q(z|x) = N(mu, diag(exp(logvar))), decoder p(x|z), prior N(0, I)."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        c, s = cfg.in_channels, cfg.image_size
        d = c * s * s
        if cfg.arch == "mlp":
            h = list(cfg.hidden)
            self.encoder = nn.Sequential(nn.Flatten(), *mlp_layers([d] + h, cfg.batchnorm))  # (B, C, H, W) -> (B, h[-1])
            feat = h[-1]
            self.decoder = nn.Sequential(*mlp_layers([cfg.latent_dim] + h[::-1], cfg.batchnorm), nn.Linear(h[0], d),
                                         nn.Unflatten(1, (c, s, s)))  # (B, latent) -> (B, C, H, W)
        else:
            # lean on purpose (it must train in minutes on a CPU): the extra 3x3 convs sit at the lowest resolution
            ch = cfg.channels
            enc: list[nn.Module] = []
            prev = c
            for k in ch:  # (B, prev, H, W) -> (B, k, H/2, W/2)
                enc += [nn.Conv2d(prev, k, 4, stride=2, padding=1), nn.SiLU()]
                prev = k
            self.s = s // 2 ** len(ch)
            feat = ch[-1] * self.s * self.s
            enc += [nn.Conv2d(prev, prev, 3, padding=1), nn.SiLU(), nn.Flatten()]  # -> (B, ch[-1]*s*s)
            self.encoder = nn.Sequential(*enc)
            dec: list[nn.Module] = [nn.Linear(cfg.latent_dim, feat), nn.SiLU(), nn.Unflatten(1, (ch[-1], self.s, self.s)),
                                    nn.Conv2d(ch[-1], ch[-1], 3, padding=1), nn.SiLU()]
            for a, b in zip(ch[::-1], list(ch[::-1][1:]) + [ch[0]]):  # (B, a, h, w) -> (B, b, 2h, 2w)
                dec += [nn.ConvTranspose2d(a, b, 4, stride=2, padding=1), nn.SiLU()]
            dec += [nn.Conv2d(ch[0], c, 3, padding=1)]  # (B, ch[0], H, W) -> (B, C, H, W)
            self.decoder = nn.Sequential(*dec)
        self.to_stats = nn.Linear(feat, 2 * cfg.latent_dim)  # (B, feat) -> (B, 2*latent): mu and log sigma^2
        # KL warm-up needs the training step; like BatchNorm's num_batches_tracked it lives in a buffer,
        # so it is checkpointed and an exact resume continues the ramp where it stopped.
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x in [-1, 1], (B, C, H, W) -> (mu, logvar), each (B, latent_dim)."""
        check_images(x, self.cfg.in_channels, self.cfg.image_size, f"VAE(arch={self.cfg.arch!r})")
        mu, logvar = self.to_stats(self.encoder(x)).chunk(2, dim=1)
        return mu, logvar.clamp(-30.0, 20.0)  # keep exp(logvar) finite in float32

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, latent_dim) -> (B, C, H, W): Bernoulli logits, or the Gaussian mean on [-1, 1]."""
        return self.decoder(z)

    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder's mean as an image in [-1, 1] (for pictures and for latent diffusion's decoder)."""
        out = self.decode(z)
        return 2 * torch.sigmoid(out) - 1 if self.cfg.likelihood == "bernoulli" else out.clamp(-1, 1)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None):
        """-> (decoder output, mu, logvar, z) with z ~ q(z|x) drawn by reparameterisation."""
        mu, logvar = self.encode(x)
        z = reparameterize(mu, logvar, generator)
        return self.decode(z), mu, logvar, z

    @torch.no_grad()
    def sample_prior(self, n: int, generator=None, device=None) -> torch.Tensor:
        """n images in [-1, 1] decoded from z ~ N(0, I) (the decoder's mean, not a Bernoulli draw).
        ``generator``: one, or one per sample (then image i depends only on generator i)."""
        device = device if device is not None else next(self.parameters()).device
        z = randn_like(torch.empty(n, self.cfg.latent_dim, device=device), generator)
        return self.decode_mean(z)


class ConvVAE(VAE):
    """A convolutional :class:`VAE`: ``ConvVAE(cfg)`` or ``ConvVAE(latent_dim=8, ...)`` (``arch`` is forced to "conv")."""

    def __init__(self, cfg: VAEConfig | None = None, **overrides):
        super().__init__(dataclasses.replace(cfg or VAEConfig(), **overrides, arch="conv"))


class MLPVAE(VAE):
    """An MLP :class:`VAE` (``arch`` is forced to "mlp")."""

    def __init__(self, cfg: VAEConfig | None = None, **overrides):
        super().__init__(dataclasses.replace(cfg or VAEConfig(), **overrides, arch="mlp"))


# ----------------------------------------------------------------------------------------------
# the pieces of the ELBO
# ----------------------------------------------------------------------------------------------

def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """z = mu + sigma * eps, eps ~ N(0, I): a sample of q(z|x) that gradients flow through."""
    eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    return mu + torch.exp(0.5 * logvar) * eps


def kl_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag e^logvar) || N(0, I)) = ½ Σ_j (mu_j² + σ_j² − 1 − log σ_j²), per row, in nats."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=1)


def log_normal(z: torch.Tensor, mu: torch.Tensor | float = 0.0, logvar: torch.Tensor | float = 0.0) -> torch.Tensor:
    """log N(z; mu, diag e^logvar), summed over the last dimension."""
    logvar = torch.as_tensor(logvar, dtype=z.dtype, device=z.device)
    return -0.5 * (LOG_2PI + logvar + (z - mu).pow(2) * torch.exp(-logvar)).sum(dim=-1)


def log_likelihood(out: torch.Tensor, x: torch.Tensor, likelihood: str, obs_std: float = 0.1) -> torch.Tensor:
    """log p(x|z) per image in nats; ``out`` is the decoder output, x in [-1, 1] (B, C, H, W)."""
    if likelihood == "bernoulli":  # log Bern(t; sigmoid(logits)) = -BCE(logits, t), t = (x+1)/2
        return -F.binary_cross_entropy_with_logits(out, (x + 1) / 2, reduction="none").flatten(1).sum(1)
    d = x[0].numel()  # log N(x; out, s² I) = -||x - out||²/(2 s²) - D log(s sqrt(2π))
    return -((x - out).pow(2).flatten(1).sum(1) / (2 * obs_std ** 2)) - d * (math.log(obs_std) + 0.5 * LOG_2PI)


class ELBO(NamedTuple):
    """Per-image terms in nats: elbo = -recon - kl ≤ log p(x)."""

    elbo: torch.Tensor
    recon: torch.Tensor  # -E_q log p(x|z), one sample
    kl: torch.Tensor  # KL(q(z|x) || p(z)), closed form


def elbo(model: VAE, x: torch.Tensor, generator: torch.Generator | None = None) -> ELBO:
    """One-sample ELBO per image: E_q[log p(x|z)] − KL(q(z|x) || N(0, I)) (Kingma & Welling eq. 10)."""
    out, mu, logvar, _ = model(x, generator)
    recon = -log_likelihood(out, x, model.cfg.likelihood, model.cfg.obs_std)
    kl = kl_standard_normal(mu, logvar)
    return ELBO(-recon - kl, recon, kl)


@torch.no_grad()
def iwae_nll(model: VAE, x: torch.Tensor, k: int = 1000, generator: torch.Generator | None = None,
             chunk: int = 100) -> torch.Tensor:
    """Importance-weighted estimate of −log p(x) per image, in nats (Burda et al. 2016, eq. 8).

    log p(x) ≥ L_k = E[log (1/k) Σ_i p(x, z_i) / q(z_i|x)],  z_i ~ q(z|x);  L_1 is the ELBO, L_k grows
    with k and tends to log p(x). The k samples are drawn ``chunk`` at a time and combined with a running
    logsumexp, so memory is O(B · chunk) whatever k is. Returns −L_k (an upper bound on the NLL).
    Call it on a model in ``eval()`` mode (BatchNorm must not use the statistics of the k·B decoded samples).
    """
    if k < 1 or chunk < 1:
        raise ValueError(f"need k >= 1 and chunk >= 1, got k={k}, chunk={chunk}")
    mu, logvar = model.encode(x)  # (B, D)
    b = x.shape[0]
    acc = torch.full((b,), -math.inf, device=x.device, dtype=torch.float64)  # running logsumexp of log w
    for start in range(0, k, chunk):
        m = min(chunk, k - start)
        eps = torch.randn((m, b, mu.shape[1]), generator=generator, device=x.device, dtype=mu.dtype)
        z = mu + torch.exp(0.5 * logvar) * eps  # (m, B, D)
        out = model.decode(z.flatten(0, 1))  # (m*B, C, H, W)
        xs = x.unsqueeze(0).expand(m, *x.shape).flatten(0, 1)
        log_px_z = log_likelihood(out, xs, model.cfg.likelihood, model.cfg.obs_std).view(m, b)
        log_w = log_px_z + log_normal(z) - log_normal(z, mu, logvar)  # (m, B): log p(x,z) - log q(z|x)
        acc = torch.logaddexp(acc, torch.logsumexp(log_w.double(), dim=0))
    return -(acc - math.log(k)).to(mu.dtype)


# ----------------------------------------------------------------------------------------------
# training objective, interpolation
# ----------------------------------------------------------------------------------------------

def kl_weight(cfg: VAEConfig, step: int) -> float:
    """β, ramped linearly from 0 over the first ``kl_warmup`` steps (Bowman et al. 2016; Sønderby et al. 2016)."""
    if cfg.kl_warmup <= 0:
        return cfg.beta
    return cfg.beta * min(1.0, (step + 1) / cfg.kl_warmup)


def prepare_batch(cfg: VAEConfig, x: torch.Tensor, generator: torch.Generator | None, train: bool = True):
    """-> (encoder input, target), both in [-1, 1]: augment (train only), then binarise (Bernoulli)."""
    if train and (cfg.rotate_deg or cfg.noise_std):
        x = augment(x, generator, rotate_deg=cfg.rotate_deg)
    if cfg.likelihood == "bernoulli" and cfg.binarize:
        from ..data import dynamic_binarize  # data -> {0, 1} samples of the pixel intensities

        x = 2 * dynamic_binarize(x, generator) - 1
    x_in = x
    if train and cfg.noise_std:
        x_in = x + cfg.noise_std * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x_in, x


def vae_loss(cfg: VAEConfig):
    """loss_fn(model, batch, generator) for ``fit``: mean over the batch of recon + w·KL in nats per image,
    with w = β after the KL warm-up. Logs the unweighted ELBO so runs with different β compare."""

    def loss_fn(model, batch, generator):
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        net = getattr(model, "module", model)  # DistributedDataParallel wraps the VAE
        x_in, target = prepare_batch(cfg, x, generator, train=True)
        out, mu, logvar, _ = model(x_in, generator)
        recon = -log_likelihood(out, target, cfg.likelihood, cfg.obs_std).mean()
        kl = kl_standard_normal(mu, logvar).mean()
        w = kl_weight(cfg, int(net.num_updates))
        if net.training:
            net.num_updates += 1
        return recon + w * kl, {"recon": float(recon.detach()), "kl": float(kl.detach()),
                                "elbo": float(-(recon + kl).detach()), "kl_weight": w}

    return loss_fn


@torch.no_grad()
def interpolate(model: VAE, x_a: torch.Tensor, x_b: torch.Tensor, steps: int = 8) -> torch.Tensor:
    """Decode the straight line between the posterior means of two images: (steps, C, H, W) in [-1, 1]."""
    mu_a, _ = model.encode(x_a[None] if x_a.ndim == 3 else x_a)
    mu_b, _ = model.encode(x_b[None] if x_b.ndim == 3 else x_b)
    t = torch.linspace(0, 1, steps, device=mu_a.device, dtype=mu_a.dtype)[:, None]  # (steps, 1)
    return model.decode_mean((1 - t) * mu_a[:1] + t * mu_b[:1])  # (steps, D) -> (steps, C, H, W)


__all__ = ["VAEConfig", "VAE", "ConvVAE", "MLPVAE", "ELBO", "elbo", "iwae_nll", "reparameterize",
           "kl_standard_normal", "log_normal", "log_likelihood", "vae_loss", "kl_weight", "prepare_batch",
           "interpolate"]
