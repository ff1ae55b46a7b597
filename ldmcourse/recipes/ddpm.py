"""Recipe for pixel-space DDPM (Ho et al. 2020): ``ldmcourse train ddpm``.

    ldmcourse train ddpm --dataset fashion-mnist --schedule cosine --loss l2 --prediction eps --out runs/ddpm
    ldmcourse sample --ckpt runs/ddpm/checkpoint.pt --sampler ddpm --steps 100 --n 64 --out samples.png
    ldmcourse eval --ckpt runs/ddpm/checkpoint.pt --metric bpd --n 500 --option n_t=100
    ldmcourse eval --ckpt runs/ddpm/checkpoint.pt --metric sample_fd --n 1000 --option steps=100
    ldmcourse distill --teacher runs/ddpm/checkpoint.pt --steps 8 --out runs/ddpm_distilled8   (see ldmcourse.distill)

The model config :class:`DDPMConfig` is the U-Net's config plus the process (schedule, T, prediction
type, loss, weighting, p_uncond, sampling variance), so every field is a CLI flag. Metrics:

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

from ..diffusion import LOSSES, PREDICTIONS, VARIANCES, WEIGHTINGS, as_eps_model, vlb_bpd
from ..schedules import SCHEDULES, make_schedule
from ..unet import UNet, UNetConfig
from . import Recipe
from .classifier import fid_metric


@dataclass
class DDPMConfig(UNetConfig):
    """The U-Net (all of :class:`UNetConfig`) plus the diffusion process it is trained for."""

    schedule: str = "linear"
    T: int = 1000
    prediction: str = "eps"  # eps | x0 | v
    loss: str = "l2"  # l1 | l2 | huber
    weighting: str = "simple"  # simple | sigma2 | sigma | snr | min_snr
    gamma: float = 5.0  # exponent of snr, clip of min_snr
    p_uncond: float = 0.0  # label dropout (class-conditional models)
    variance: str = "beta"  # ancestral sampling / bound: beta | beta_tilde
    clip_x0: float | None = 1.0  # clip x̂0 to [-c, c] while sampling images (None: off)

    def __post_init__(self):
        super().__post_init__()
        for name, value, choices in (("schedule", self.schedule, SCHEDULES), ("prediction", self.prediction, PREDICTIONS),
                                     ("loss", self.loss, LOSSES), ("weighting", self.weighting, WEIGHTINGS),
                                     ("variance", self.variance, VARIANCES)):
            if value not in choices:
                raise ValueError(f"--{name} {value!r} is not known; choose one of {', '.join(choices)}")

    def unet_config(self) -> UNetConfig:
        return UNetConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(UNetConfig)})

    def make_schedule(self):
        return make_schedule(self.schedule, self.T)


SIZES = {
    "smoke": {"fit": dict(steps=20, batch_size=16, lr=1e-3, warmup=5, log_every=5),
              "model": dict(base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention=(2,), head_dim=8, schedule="cosine"),
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
    model = UNet(cfg.unet_config())
    model.ddpm_config = cfg  # plain attribute (not in the state dict): lets picture() find the process
    return model


def loss(cfg: DDPMConfig):
    from functools import partial

    from ..diffusion import diffusion_loss

    return partial(diffusion_loss, schedule=cfg.make_schedule(), prediction=cfg.prediction, loss=cfg.loss,
                   weighting=cfg.weighting, gamma=cfg.gamma, p_uncond=cfg.p_uncond)


def _cfg(model, meta=None) -> DDPMConfig:
    if meta is not None:
        from ..cli import config_from_dict

        return config_from_dict(DDPMConfig, meta["model_config"])
    return model.ddpm_config


@torch.no_grad()
def sample(model, meta, n, generator, device, sampler="ddpm", steps=100, batch_size=256, y=None, **options):
    """``n`` images from ``SAMPLERS[sampler]`` (default DDPM ancestral, ``steps`` respaced steps).

    ``y``: a class label for a class-conditional model (default: the null class, i.e. unconditional).
    A checkpoint written by ``ldmcourse distill`` records its student grid (``meta["distill"]``); at that
    number of steps it is sampled on that grid. Other options go to the sampler (e.g. ``variance="beta_tilde"``, ``spacing="trailing"``, ``eta=0.5``).
    """
    from ..samplers import sample_chunked

    cfg = _cfg(model, meta)
    sched = cfg.make_schedule()
    eps = as_eps_model(model, sched, cfg.prediction)
    if y is not None:
        label, net = int(y), eps
        eps = lambda x, t: net(x, t, torch.full((x.shape[0],), label, device=x.device, dtype=torch.long))  # noqa: E731
    if sampler == "ddpm":
        options = {"variance": cfg.variance, "clip_x0": cfg.clip_x0, **options}
    options.setdefault("spacing", "trailing")
    grid = (meta or {}).get("distill")  # a progressively distilled student (ldmcourse distill): sample on its grid
    if grid and "timesteps" not in options and steps == grid["steps"]:
        options["timesteps"] = grid["timesteps"]
    shape = tuple(meta["image_shape"]) if meta is not None else (cfg.in_channels, 32, 32)
    x = sample_chunked(sampler, eps, shape, n, batch_size, generator, schedule=sched, device=device, steps=steps, **options)
    return x.clamp(-1, 1)


def picture(model, data, device, generator):
    """32 DDPM samples (100 respaced steps) from the EMA model."""
    c, h, w = data[0][0].shape
    x = sample(model, {"model_config": dataclasses.asdict(model.ddpm_config), "image_shape": [c, h, w]}, 32, generator, device,
               steps=100 if model.ddpm_config.base_channels >= 16 else 10, batch_size=32)
    return x.cpu(), "samples.png"


def _defaults(meta, options, **cpu) -> dict:
    """Metric options with defaults; the smoke profile (CI) gets tiny ones."""
    smoke = meta.get("profile") == "smoke"
    return {**{k: (v[1] if smoke else v[0]) for k, v in cpu.items()}, **options}


@torch.no_grad()
def bpd_metric(model, meta, test_data, device, options):
    """−ELBO in bits/dim on (up to ``max_n`` = 500 of) the test set; ``--option n_t=K`` stratified
    indices for Σ L_{t-1} (default 50; ``null`` = all T-1 terms, T model calls per image)."""
    cfg = _cfg(model, meta)
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


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖μ_a − μ_b‖² + Tr(Σ_a + Σ_b − 2(Σ_a Σ_b)^½) between Gaussian fits of feature rows a, b."""
    import scipy.linalg

    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = torch.cov(a.T).numpy(), torch.cov(b.T).numpy()
    covmean = scipy.linalg.sqrtm(ca @ cb).real
    return float(((mu_a - mu_b) ** 2).sum()) + float(ca.trace() + cb.trace() - 2 * covmean.trace())


def pixel_pca_fd(samples: torch.Tensor, reference: torch.Tensor, basis) -> float:
    mean, comps = basis
    f = lambda x: (x.flatten(1).double() - mean) @ comps  # noqa: E731
    return frechet_distance(f(samples), f(reference))


@torch.no_grad()
def sample_fd_metric(model, meta, test_data, device, options):
    """Pixel-PCA Fréchet distance of n = min(len(test), ``max_n``=1000) samples to n test images, and the
    real-vs-real floor (n held-out training images vs the same test images)."""
    from ..data import load_dataset

    opts = _defaults(meta, options, steps=(100, 5), max_n=(1000, 32))
    n = min(len(test_data), int(opts.pop("max_n")))
    g = torch.Generator(device=device).manual_seed(int(opts.pop("seed", 0)))
    k = int(opts.pop("k", 32))
    x = sample(model, meta, n, g, device, **opts).cpu()
    train = load_dataset(meta["dataset"], "train", size=meta["image_shape"][-1], root=meta.get("data_root"), download=False)
    tr, _ = train.tensors()
    perm = torch.randperm(len(tr), generator=torch.Generator().manual_seed(0))
    basis = pca_basis(tr[perm[: len(tr) // 2]], k)
    test, _ = test_data.tensors()
    test = test[:n]
    return {"pixel_pca_fd": pixel_pca_fd(x, test, basis), "floor_train_vs_test": pixel_pca_fd(tr[perm[len(tr) // 2:][:n]], test, basis),
            "n": n, "steps": opts["steps"], "sampler": opts.get("sampler", "ddpm")}


RECIPES = {
    "ddpm": Recipe(
        name="ddpm", model_config=DDPMConfig, build=build, loss=loss, sizes=SIZES, picture=picture, sample=sample,
        metrics={"bpd": bpd_metric, "sample_fd": sample_fd_metric, "fid": fid_metric, "kid": fid_metric},
        description="pixel-space DDPM with a U-Net (ε, x0 or v prediction)",
    ),
}
