"""Recipe for pixel-space DDPM (Ho et al. 2020): ``ldmcourse train ddpm``.

    ldmcourse train ddpm --dataset fashion-mnist --schedule cosine --loss l2 --prediction eps --out runs/ddpm
    ldmcourse sample --ckpt runs/ddpm/checkpoint.pt --sampler ddpm --steps 100 --n 64 --out samples.png
    ldmcourse eval --ckpt runs/ddpm/checkpoint.pt --metric bpd --n 500 --option n_t=100
    ldmcourse eval --ckpt runs/ddpm/checkpoint.pt --metric sample_fd --n 1000 --option steps=100
    ldmcourse distill --teacher runs/ddpm/checkpoint.pt --steps 8 --out runs/ddpm_distilled8   (see ldmcourse.distill)

The model config :class:`DDPMConfig` is the U-Net's config plus the process
(:class:`~ldmcourse.diffusion.DiffusionConfig`: schedule, T, prediction, loss, weighting, p_uncond,
variance and the sampling defaults), so every field is a CLI flag. Metrics:

- ``bpd``: −ELBO in bits/dim on the test set (L_0 discretised decoder + Σ L_{t-1} + L_T);
  ``--option n_t=K`` (default 50) estimates the sum over t from K stratified indices (unbiased;
  ``null`` = all T-1); ``--option max_n=N`` (default 500) test images.
- ``sample_fd``: a *proxy* for sample quality until the course FID (evaluation issue) lands: the
  Fréchet distance between Gaussian fits of samples and test images in the space of the first 32
  principal components of the training pixels ("pixel-PCA FD"), next to the same distance between
  a held-out half of the training set and the test set (the real-vs-real floor). Lower is better;
  it sees global shape and contrast, not fine texture.
- ``fid`` / ``kid``: the course FID and KID (features of ``ldmcourse train classifier`` on the same
  dataset and size), with bootstrap interval, real-vs-real floor and sample counts; ``--option
  sampler=ddim --option steps=50 --option classifier=PATH``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..configs import from_dict
from ..diffusion import DiffusionConfig, as_eps_model, vlb_bpd
from ..distill import sampling_grid
from ..guidance import cfg_eps_model, check_class
from ..metrics import frechet_distance, gaussian_stats
from ..samplers import check_options
from ..unet import UNet, UNetConfig
from . import Recipe
from .classifier import fid_metric


@dataclass
class DDPMConfig(UNetConfig, DiffusionConfig):
    """The U-Net (all of :class:`UNetConfig`) plus the diffusion process it is trained for (:class:`DiffusionConfig`)."""

    clip_x0: float | None = 1.0  # clip x̂0 to [-c, c] in DDPM ancestral sampling of images (None: off)

    def __post_init__(self):
        UNetConfig.__post_init__(self)
        DiffusionConfig.__post_init__(self)
        if self.p_uncond and not self.num_classes:
            raise ValueError("--p-uncond > 0 needs a class-conditional model: add --num-classes K")
        if self.clip_x0 is not None and self.clip_x0 <= 0:
            raise ValueError(f"--clip-x0 {self.clip_x0} must be > 0 (or none)")

    def unet_config(self) -> UNetConfig:
        return from_dict(UNetConfig, dataclasses.asdict(self))


SIZES = {
    "smoke": {"fit": dict(steps=20, batch_size=16, lr=1e-3, warmup=5, log_every=5),
              "model": dict(base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention=(2,), head_dim=8, schedule="cosine",
                            sample_steps=10),
              "data": dict(n_train=256)},
    # ~0.28M parameters, batch 32: about 0.2 CPU-seconds per step, ~5 min on 2 idle cores (measured: see notebook 05)
    "cpu": {"fit": dict(steps=1500, batch_size=32, lr=2e-3, warmup=100, log_every=50, ema_decay=0.995),
            "model": dict(base_channels=16, channel_mult=(1, 2, 2), num_res_blocks=1, attention=(4,), head_dim=16,
                          schedule="cosine"),
            "data": dict(dataset="fashion-mnist")},
    # ~9M parameters (DDPM's CIFAR net at half width): a few hours on one GPU. Not measured: no GPU lent.
    "gpu": {"fit": dict(steps=100_000, batch_size=128, lr=2e-4, warmup=1000, log_every=500, ema_decay=0.9999, amp="bf16"),
            "model": dict(base_channels=64, channel_mult=(1, 2, 2, 2), num_res_blocks=2, attention=(2,), head_dim=64,
                          dropout=0.1, schedule="cosine"),
            "data": dict(dataset="fashion-mnist")},
}


def build(cfg: DDPMConfig) -> UNet:
    return UNet(cfg.unet_config())


def loss(cfg: DDPMConfig):
    from functools import partial

    from ..diffusion import diffusion_loss

    return partial(diffusion_loss, **cfg.loss_kwargs())


def _cfg(meta) -> DDPMConfig:
    return RECIPES["ddpm"].config(meta["model_config"])


def class_eps_model(eps, cfg, y, guidance: float | None):
    """ε-model for class ``y`` (an int) with classifier-free guidance ``guidance`` (None: plain conditional)."""
    if y is None:
        if guidance is not None:
            raise ValueError("--guidance needs a class to guide towards: add --class C")
        return eps
    check_class(y, cfg.num_classes)
    return cfg_eps_model(eps, int(y), cfg.guidance if guidance is None else guidance, uncond=cfg.num_classes)


def sample_with(model, cfg: DDPMConfig, shape, n, generator, device, sampler=None, steps=None, batch_size=256,
                guidance=None, y=None, meta=None, **options):
    """``n`` images (n, *shape) from ``SAMPLERS[sampler]``; None means the config's ``sampler`` / ``sample_steps``
    / ``spacing``. A checkpoint written by ``ldmcourse distill`` (``meta["distill"]``) is sampled on its own grid
    at its step count (:func:`ldmcourse.distill.sampling_grid`). Options go to the sampler (e.g. ``eta=0.5``)."""
    from ..samplers import sample_chunked

    sampler = sampler or cfg.sampler
    check_options(sampler, options)
    steps, grid = sampling_grid(meta, steps)
    steps = steps or cfg.sample_steps
    if grid is not None and "timesteps" not in options:
        options["timesteps"] = grid
    if sampler == "ddpm":
        options = {"variance": cfg.variance, "clip_x0": cfg.clip_x0, **options}
    options.setdefault("spacing", cfg.spacing)
    sched = cfg.make_schedule()
    net = class_eps_model(model, cfg, y, guidance)
    eps = as_eps_model(net, sched, cfg.prediction)
    x = sample_chunked(sampler, eps, shape, n, batch_size, generator, schedule=sched, device=device, steps=steps, **options)
    return x.clamp(-1, 1)


@torch.no_grad()
def sample(model, meta, n, generator, device, sampler=None, steps=None, batch_size=256, guidance=None, y=None, **options):
    """The recipe's ``sample``: :func:`sample_with` on the checkpoint's config and image shape."""
    return sample_with(model, _cfg(meta), tuple(meta["image_shape"]), n, generator, device, sampler, steps, batch_size,
                       guidance, y, meta=meta, **options)


@torch.no_grad()
def inpaint(model, meta, x_known, keep, generator, device, sampler=None, steps=None, spacing=None, **kwargs):
    """Used by ``ldmcourse inpaint``: fill ``keep == 0`` of ``x_known`` with any sampler (:func:`ldmcourse.inpaint.inpaint`)."""
    from ..inpaint import inpaint as fill
    from ..samplers import get_sampler

    cfg = _cfg(meta)
    sampler = sampler or cfg.sampler
    check_options(sampler, {k: v for k, v in kwargs.items() if k not in ("method", "jump_length", "resample")})
    steps, grid = sampling_grid(meta, steps)  # a distilled student inpaints on the grid it learnt
    sched = cfg.make_schedule()
    out = fill(get_sampler(sampler), as_eps_model(model, sched, cfg.prediction), x_known.to(device), keep.to(device), sched,
               steps=steps or cfg.sample_steps, spacing=spacing or cfg.spacing, timesteps=grid, generator=generator, **kwargs)
    return out.clamp(-1, 1).cpu()


def picture(model, cfg: DDPMConfig, data, device, generator):
    """32 samples with the config's default sampler, steps and grid, from the EMA model."""
    x = sample_with(model, cfg, tuple(data[0][0].shape), 32, generator, device, batch_size=32)
    return x.cpu(), "samples.png"


def _known(options, allowed, metric) -> None:
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"--option {unknown[0]}: the {metric} metric has no such option; its options are {', '.join(allowed)}")


def _defaults(meta, options, **cpu) -> dict:
    """Metric options with defaults; the smoke profile (CI) gets tiny ones."""
    smoke = meta.get("profile") == "smoke"
    return {**{k: (v[1] if smoke else v[0]) for k, v in cpu.items()}, **options}


@torch.no_grad()
def bpd_metric(model, meta, test_data, device, options):
    """−ELBO in bits/dim on (up to ``max_n`` = 500 of) the test set; ``--option n_t=K`` stratified
    indices for Σ L_{t-1} (default 50; ``null`` = all T-1 terms, T model calls per image)."""
    cfg = _cfg(meta)
    _known(options, ("n_t", "max_n", "seed", "variance", "batch_size"), "bpd")
    opts = _defaults(meta, options, n_t=(50, 5), max_n=(500, 32))
    sched = cfg.make_schedule()
    x, _ = test_data.tensors()
    x = x[: opts["max_n"]]
    g = torch.Generator(device=device).manual_seed(int(opts.get("seed", 0)))
    res = vlb_bpd(as_eps_model(model, sched, cfg.prediction), x, sched, variance=opts.get("variance", cfg.variance),
                  n_t=opts["n_t"], batch_size=int(opts.get("batch_size", 250)), generator=g, device=device)
    return {k: v for k, v in res.items() if k not in ("t", "kl_per_t")}


def pca_basis(x: torch.Tensor, k: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean (D,), components (D, k)) of the pixels of x (N, C, H, W), in float64."""
    flat = x.flatten(1).double()
    mean = flat.mean(0)
    _, _, v = torch.linalg.svd(flat - mean, full_matrices=False)
    return mean, v[:k].T


def pixel_pca_fd(samples: torch.Tensor, reference: torch.Tensor, basis) -> float:
    """Fréchet distance (:func:`ldmcourse.metrics.frechet_distance`) of Gaussian fits in the PCA basis."""
    mean, comps = basis
    f = lambda x: gaussian_stats((x.flatten(1).double() - mean) @ comps)  # noqa: E731
    return frechet_distance(*f(samples), *f(reference))


@torch.no_grad()
def sample_fd_report(sample_fn, model, meta, test_data, device, opts: dict, sampler: str) -> dict:
    """Pixel-PCA Fréchet distance of n = min(len(test), ``max_n``) samples of ``sample_fn`` to n test images, and
    the real-vs-real floor (n held-out training images vs the same test images). ``opts`` (with ``steps`` and
    ``max_n`` already defaulted) go to ``sample_fn``; ``sampler``: the one used when ``opts`` names none."""
    from ..data import load_dataset

    n = min(len(test_data), int(opts.pop("max_n")))
    g = torch.Generator(device=device).manual_seed(int(opts.pop("seed", 0)))
    k = int(opts.pop("k", 32))
    x = sample_fn(model, meta, n, g, device, **opts).cpu()
    train = load_dataset(meta["dataset"], "train", size=meta["image_shape"][-1], root=meta.get("data_root"), download=False)
    tr, _ = train.tensors()
    perm = torch.randperm(len(tr), generator=torch.Generator().manual_seed(0))
    basis = pca_basis(tr[perm[: len(tr) // 2]], k)
    test, _ = test_data.tensors()
    test = test[:n]
    return {"pixel_pca_fd": pixel_pca_fd(x, test, basis), "floor_train_vs_test": pixel_pca_fd(tr[perm[len(tr) // 2:][:n]], test, basis),
            "n": n, "steps": opts["steps"], "sampler": opts.get("sampler") or sampler}


def sample_fd_metric(model, meta, test_data, device, options):
    """:func:`sample_fd_report` on ddpm's ancestral sampler (100 steps; 5 and 32 images for smoke)."""
    opts = _defaults(meta, options, steps=(100, 5), max_n=(1000, 32))
    opts.setdefault("sampler", "ddpm")
    return sample_fd_report(sample, model, meta, test_data, device, opts, "ddpm")


RECIPES = {
    "ddpm": Recipe(
        name="ddpm", model_config=DDPMConfig, build=build, loss=loss, sizes=SIZES, picture=picture, sample=sample,
        metrics={"bpd": bpd_metric, "sample_fd": sample_fd_metric, "fid": fid_metric, "kid": fid_metric},
        description="pixel-space DDPM with a U-Net (ε, x0 or v prediction)", inpaint=inpaint, guidance=True,
    ),
}
