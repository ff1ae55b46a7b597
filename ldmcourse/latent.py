"""Latent diffusion (Rombach et al. 2022): encode → diffuse in latent space → sample → decode.

This is a *wiring* module: it joins a first stage (any autoencoder), an ε-network (the course U-Net)
and the diffusion process (``ldmcourse.diffusion``); none of those import each other.

    x (B, 1, 32, 32) ──encode──▶ z = s·E(x) (B, 4, 8, 8) ──diffusion loss / any sampler──▶ ẑ ──decode D(ẑ/s)──▶ x̂

- :class:`FirstStage` adapts any autoencoder to ``encode(x) -> z (B, c, h, w)`` and ``decode(z) -> x``:
  the KL autoencoder (``ldmcourse.autoencoders.kl``), the VAE of notebook 02 (vector latent, reshaped
  to a small map), the NVAE of notebook 03 (diffusion models its *top* group z_1; decoding runs the
  top-down path with the finer groups at their conditional prior means — a two-level latent model in
  the spirit of LSGM / NVAE + diffusion), or the identity (pixel diffusion through the very same code
  path: what the speed benchmark compares against).
- :class:`LatentDiffusion` holds the frozen first stage, the ε-network and the scale factor
  s = 1/std(z). latent-diffusion's ``scale_by_std``: the first stage's latents have an arbitrary scale
  (the tiny KL weight barely constrains it; SD's is 1/0.18215 ≈ 5.5), while the diffusion schedule
  assumes unit-variance data — with std(z) ≫ 1 the signal survives far into the chain, with std ≪ 1
  it is drowned at once. s is estimated on the first training batch (as LDM does) or set explicitly.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn

from .diffusion import as_eps_model, diffusion_loss
from .guidance import cfg_eps_model, check_class
from .inpaint import inpaint_latent
from .samplers import get_sampler, sample_chunked
from .schedules import Schedule


class FirstStage(nn.Module):
    """``encode(x, generator) -> z`` (B, c, h, w) and ``decode(z) -> x`` for any autoencoder.

    ``kind``: ``auto`` (guess from the model), ``kl`` (``encode`` returns a posterior with
    ``.sample``/``.mode``), ``vae`` (``encode`` returns ``(mu, logvar)``; the vector latent is reshaped to
    ``latent_shape``), ``nvae`` (``encode_latent``/``decode_latent`` methods), ``identity`` (pixels).
    ``sample``: encode with a posterior sample (LDM's default) rather than its mean.
    """

    KINDS = ("kl", "vae", "nvae", "identity")

    def __init__(self, model: nn.Module | None, kind: str = "auto", latent_shape: tuple[int, ...] | None = None,
                 image_shape: tuple[int, int, int] | None = None, sample: bool = True):
        super().__init__()
        if kind == "auto":
            kind = self._guess(model)
        if kind not in self.KINDS:
            raise ValueError(f"first-stage kind {kind!r}: choose one of {', '.join(self.KINDS)} (or 'auto')")
        self.kind, self.sample = kind, sample
        self.model = model.eval().requires_grad_(False) if model is not None else None
        cfg = getattr(model, "cfg", None) or getattr(model, "config", None)
        if image_shape is None and cfg is not None:
            image_shape = (cfg.in_channels, cfg.image_size, cfg.image_size)
        if kind == "identity":
            if image_shape is None:
                raise ValueError("FirstStage(None, 'identity') needs image_shape=(C, H, W)")
            latent_shape = tuple(image_shape)
        elif kind == "kl" and latent_shape is None:
            latent_shape = tuple(cfg.latent_shape)
        elif kind == "nvae" and latent_shape is None:
            latent_shape = tuple(model.latent_shapes[0])  # the top (coarsest) group z_1
        elif kind == "vae" and latent_shape is None:
            d = cfg.latent_dim  # a vector latent: make it the most square single-channel map
            side = int(math.isqrt(d))
            if side * side != d:
                raise ValueError(f"VAE latent_dim={d} is not a square: pass latent_shape=(c, h, w) with c*h*w = {d}")
            latent_shape = (1, side, side)
        if latent_shape is None:
            raise ValueError(f"first stage of kind {kind!r}: pass latent_shape=(c, h, w)")
        self.latent_shape = tuple(int(v) for v in latent_shape)
        self.image_shape = tuple(image_shape) if image_shape is not None else None

    @staticmethod
    def _guess(model) -> str:
        if model is None:
            return "identity"
        if hasattr(model, "top_posterior"):
            return "nvae"
        if hasattr(model, "decode_mean"):
            return "vae"
        if hasattr(model, "encode") and hasattr(model, "decode"):
            return "kl"
        raise ValueError(f"cannot tell what kind of first stage a {type(model).__name__} is; pass kind=")

    def train(self, mode: bool = True):  # the first stage is frozen: always eval (BatchNorm, dropout)
        super().train(mode)
        if self.model is not None:
            self.model.eval()
        return self

    @property
    def factor(self) -> int | None:
        """Spatial downsampling factor f (None when latent pixels do not correspond to image patches)."""
        if self.kind == "identity":
            return 1
        if self.kind == "kl":
            return self.model.cfg.factor
        if self.kind == "nvae":
            return self.image_shape[-1] // self.latent_shape[-1]
        return None

    @torch.no_grad()
    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None, sample: bool | None = None) -> torch.Tensor:
        """x -> z; ``sample`` (default: the adapter's setting) draws from q(z|x) instead of taking its mean."""
        sample = self.sample if sample is None else sample
        if self.kind == "identity":
            return x
        if self.kind == "kl":
            post = self.model.encode(x)
            return post.sample(generator) if sample else post.mode()  # (B, c, h, w)
        if self.kind == "vae":
            mu, logvar = self.model.encode(x)
            z = mu
            if sample:
                z = mu + (0.5 * logvar).exp() * torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
            return z.reshape(-1, *self.latent_shape)  # (B, d) -> (B, c, h, w)
        return self._nvae_encode_top(x, generator, sample)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        if self.kind == "identity":
            return z
        if self.kind == "kl":
            return self.model.decode(z)
        if self.kind == "vae":
            return self.model.decode_mean(z.flatten(1))  # (B, c, h, w) -> (B, d) -> image
        return self._nvae_decode_top(z)

    # --- NVAE: the top group z_1 is the latent; q(z_1 | x) = N(μ, σ) (p(z_1) = N(0, I))
    def _nvae_encode_top(self, x, generator, sample):
        mu, log_sigma = self.model.top_posterior(x)  # 2 x (B, Z, h, w)
        if not sample:
            return mu.contiguous()
        return (mu + log_sigma.exp() * torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)).contiguous()

    def _nvae_decode_top(self, z1):
        # finer groups at their conditional prior means (NVAE's temperature-0 sampling, given z_1)
        return torch.sigmoid(self.model.sample(z1.shape[0], temperature=0.0, z_top=z1)) * 2 - 1  # Bernoulli mean, in [-1, 1]


class LatentDiffusion(nn.Module):
    """Frozen first stage + ε-network on latents + scale factor. ``forward(z, t, y)`` is the network.

    ``encode``/``decode`` include the scale: ``encode(x) = s·E(x)``, ``decode(z) = D(z/s)``.
    """

    def __init__(self, first_stage: FirstStage, unet: nn.Module, scale_factor: float | None = None):
        super().__init__()
        self.first_stage = first_stage
        self.unet = unet
        self.register_buffer("scale_factor", torch.tensor(float("nan") if scale_factor is None else float(scale_factor)))

    @property
    def config(self):  # diffusion_loss reads num_classes from here
        return getattr(self.unet, "config", None)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return self.first_stage.latent_shape

    @property
    def scale_is_set(self) -> bool:
        return bool(torch.isfinite(self.scale_factor))

    @torch.no_grad()
    def set_scale_factor(self, x: torch.Tensor, generator: torch.Generator | None = None) -> float:
        """s = 1 / std(E(x)) over all elements of a batch of images (latent-diffusion's ``scale_by_std``)."""
        z = self.first_stage.encode(x, generator)
        s = 1.0 / float(z.float().flatten().std())
        self.scale_factor.fill_(s)
        return s

    def _scale(self) -> torch.Tensor:
        if not self.scale_is_set:
            raise RuntimeError("the latent scale factor is not set: call model.set_scale_factor(x_batch) first "
                               "(training with latent_diffusion_loss sets it on the first batch)")
        return self.scale_factor

    @torch.no_grad()
    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None, sample: bool | None = None) -> torch.Tensor:
        return self._scale() * self.first_stage.encode(x, generator, sample)  # (B, C, H, W) -> (B, c, h, w)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.first_stage.decode(z / self._scale())  # (B, c, h, w) -> (B, C, H, W)

    def forward(self, z: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.unet(z, t, y) if y is not None else self.unet(z, t)


def latent_diffusion_loss(schedule: Schedule, **kwargs) -> Callable:
    """``loss_fn(model, batch, generator)`` for ``fit``: encode the batch, then the diffusion loss on latents.

    ``kwargs`` go to :func:`ldmcourse.diffusion.diffusion_loss` (``prediction``, ``p_uncond``, …).
    The scale factor is set from the first batch if it is not set yet.
    """

    def loss_fn(model: LatentDiffusion, batch, generator: torch.Generator | None = None):
        x, y = (batch[0], batch[1]) if isinstance(batch, (tuple, list)) else (batch, None)
        if not model.scale_is_set:
            model.set_scale_factor(x, generator)
        z = model.encode(x, generator)  # no gradient into the frozen first stage
        return diffusion_loss(model.unet, (z, y) if y is not None else z, generator, schedule=schedule, **kwargs)

    return loss_fn


def latent_eps_model(model: LatentDiffusion, schedule: Schedule, prediction: str = "eps", y=None,
                     guidance: float | None = None, uncond=None) -> Callable:
    """The ε-model a sampler sees: prediction type converted, and classifier-free guidance if ``y`` is given."""
    net = model.unet
    check_class(y, getattr(model.config, "num_classes", None))
    if y is not None:
        scale = 1.0 if guidance is None else guidance
        if uncond is None and getattr(model.config, "num_classes", None):
            uncond = model.config.num_classes  # the null label: both branches in one batched call
        net = cfg_eps_model(model.unet, y, scale, uncond=uncond)
    elif guidance is not None and guidance != 1.0:
        raise ValueError("guidance needs a class: pass y= (CLI: --class C)")
    return as_eps_model(net, schedule, prediction)


@torch.no_grad()
def sample_latent(model: LatentDiffusion, sampler: Callable | str, schedule: Schedule, n: int, steps: int = 50,
                  generator: torch.Generator | None = None, device: str | torch.device = "cpu", y=None,
                  guidance: float | None = None, prediction: str = "eps", decode: bool = True,
                  batch_size: int | None = None, **options) -> torch.Tensor:
    """Draw ``n`` samples: x_T ~ N(0, I) in latent space, ``sampler`` (a function or a SAMPLERS name),
    then decode (unless ``decode=False``). Returns them on ``device``.

    ``y``: None (unconditional), one label (int) for all, or (n,) labels; ``guidance``: the CFG scale.
    With ``y`` None or an int, chunks of ``batch_size`` go through ``sample_chunked``: the same images
    whatever the chunk size.
    """
    device = torch.device(device)
    fn = get_sampler(sampler)
    bs = batch_size or n
    if y is None or isinstance(y, int):
        eps = latent_eps_model(model, schedule, prediction, y, guidance)
        z = sample_chunked(fn, eps, model.latent_shape, n, bs, generator, schedule=schedule, device=device,
                           out_device=device, steps=steps, **options)
    else:
        y = torch.as_tensor(y).long()
        if y.shape != (n,):
            raise ValueError(f"y must be one label or {n} labels, got shape {tuple(y.shape)}")
        zs = []
        for a in range(0, n, bs):
            b = min(n, a + bs)
            x_T = torch.randn((b - a, *model.latent_shape), generator=generator, device=device)
            eps = latent_eps_model(model, schedule, prediction, y[a:b].to(device), guidance)
            zs.append(fn(eps, x_T, schedule, steps=steps, generator=generator, **options))
        z = torch.cat(zs)
    if not decode:
        return z
    return torch.cat([model.decode(z[a:a + bs]) for a in range(0, n, bs)])


@torch.no_grad()
def inpaint_with(model: LatentDiffusion, sampler: Callable | str, schedule: Schedule, x_known: torch.Tensor,
                 keep: torch.Tensor, prediction: str = "eps", **kwargs) -> torch.Tensor:
    """Inpaint with a :class:`LatentDiffusion` (pixel space when its first stage is the identity).

    The known image is encoded with the posterior *mean*; ``kwargs`` go to :func:`ldmcourse.inpaint.inpaint`
    (``steps``, ``method``, ``jump_length``, ``resample``, ``generator``, sampler options).
    """
    f = model.first_stage.factor
    if f is None:
        raise ValueError(f"a {model.first_stage.kind!r} first stage has no spatial latent (latent pixels do not "
                         "match image patches), so it cannot inpaint in latent space; use a KL autoencoder or pixels")
    eps = as_eps_model(model.unet, schedule, prediction)
    return inpaint_latent(get_sampler(sampler), eps, x_known, keep, schedule,
                          encode=lambda x: model.encode(x, sample=False), decode=model.decode, factor=f, **kwargs)


__all__ = ["FirstStage", "LatentDiffusion", "latent_diffusion_loss", "latent_eps_model", "sample_latent", "inpaint_with"]
