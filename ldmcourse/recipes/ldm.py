"""Recipe for latent diffusion (``ldmcourse train ldm --first-stage CKPT``).

The model is a :class:`ldmcourse.latent.LatentDiffusion`: a frozen first stage read from a checkpoint
written by ``ldmcourse train kl-autoencoder`` (or ``vae`` / ``nvae``), plus a U-Net on its latents.
``--first-stage none`` trains the *same* U-Net on pixels: the baseline of the speed benchmark.

The first stage's architecture is copied into this model's config (``first_stage_kind``,
``first_stage_config``) and its weights into this checkpoint, so ``sample`` / ``inpaint`` / ``eval``
need only the one file. The diffusion part of the config is the same
:class:`~ldmcourse.diffusion.DiffusionConfig` as the DDPM recipe's (schedule, T, prediction, loss,
weighting with min-SNR, p_uncond, sampling defaults). Class conditioning: ``--num-classes 10
--p-uncond 0.1``; then ``ldmcourse sample --guidance S --class C``.

Text conditioning (issue 17; ``ldmcourse.text_ldm``): ``--text [--backbone unet|dit]`` trains on
measured captions of mnist / mnist5k digits at 32 px (the caption carries the class, so ``num_classes``
is None; ``p_uncond`` drops the whole caption for classifier-free guidance); then ``ldmcourse sample
--prompt "a thin three" [--guidance S]``. With ``--text`` off nothing here changes.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import torch

from ..checkpoint import load_checkpoint
from ..configs import from_dict
from ..diffusion import DiffusionConfig
from ..latent import FirstStage, LatentDiffusion, inpaint_with, latent_diffusion_loss, sample_latent
from ..samplers import check_options
from ..text_ldm import (EVAL_PROMPTS, CaptionedData, TextOptions, build_from_options, ceiling_adherence,
                        loss_from_options, picture_prompts, prompt_adherence, sample_prompts)
from ..unet import UNet, UNetConfig
from . import Recipe, get_recipe, metric_options

TEXT_DATASETS = ("mnist", "mnist5k")  # the caption bins (ldmcourse.captions.DEFAULT_THRESHOLDS) are mnist5k's at 32 px


@dataclass
class LDMConfig(UNetConfig, DiffusionConfig, TextOptions):
    """The U-Net's fields (``in_channels`` is set from the first stage's latent), the diffusion process
    (:class:`DiffusionConfig`), the text conditioning (:class:`~ldmcourse.text_ldm.TextOptions`, off by
    default), plus the latent-diffusion ones."""

    image_size: int = 32
    first_stage: str = "auto"  # checkpoint of a first stage; "auto": the zoo's for the dataset (ldmcourse.zoo); "none": pixels
    first_stage_kind: str = ""  # filled in from the checkpoint
    first_stage_config: str = ""  # filled in: the first stage's config as JSON
    latent_shape: tuple[int, ...] = ()  # filled in: (c, h, w)
    scale_factor: float | None = None  # None: 1/std of the first batch's latents (pixels: 1)

    def __post_init__(self):
        UNetConfig.__post_init__(self)
        DiffusionConfig.__post_init__(self)
        self.latent_shape = tuple(self.latent_shape)
        TextOptions.check(self)
        if self.text:
            self.num_classes = None  # the caption carries the class (the profiles' num_classes=10 does not apply)
        elif self.p_uncond and not self.num_classes:
            raise ValueError("p_uncond > 0 needs a class-conditional model: add --num-classes K (or --text: captions)")


def _build_first_stage(cfg: LDMConfig) -> FirstStage:
    if cfg.first_stage in ("", "none"):
        return FirstStage(None, "identity", image_shape=(cfg.in_channels, cfg.image_size, cfg.image_size))
    if cfg.first_stage == "auto":  # resolved by `ldmcourse train ldm|flow` (ldmcourse.zoo.resolve_first_stage)
        raise ValueError("first_stage='auto' is resolved by `ldmcourse train ldm` (or flow); in code pass a checkpoint: ldmcourse.zoo.path('kl-f4-mnist5k')")
    state = None
    if not cfg.first_stage_config:  # first build: read architecture and weights from the checkpoint
        ck = load_checkpoint(cfg.first_stage)
        cfg.first_stage_kind = ck["meta"]["kind"]
        cfg.first_stage_config = json.dumps(ck["meta"]["model_config"])
        state = ck["ema"] if ck.get("ema") is not None else ck["model"]
    recipe = get_recipe(cfg.first_stage_kind)
    model = recipe.build(recipe.config(json.loads(cfg.first_stage_config)))
    if state is not None:
        model.load_state_dict(state)
    if getattr(model, "discriminator", None) is not None:  # a training-only part of the KL autoencoder
        model.discriminator = None
    fs = FirstStage(model)
    if fs.image_shape is not None and fs.image_shape[-1] != cfg.image_size:
        raise ValueError(f"the first stage {cfg.first_stage} was trained on {fs.image_shape[-1]}px images but this "
                         f"run uses {cfg.image_size}px: pass --image-size {fs.image_shape[-1]}")
    return fs


def build(cfg: LDMConfig) -> LatentDiffusion:
    fs = _build_first_stage(cfg)
    cfg.in_channels, cfg.latent_shape = fs.latent_shape[0], fs.latent_shape  # recorded in the checkpoint's meta
    unet_cfg = from_dict(UNetConfig, dataclasses.asdict(cfg))
    if cfg.text:  # TextConditioned(U-Net or DiT, text encoder); the U-Net's fields shape the U-Net
        return build_from_options(fs, unet_cfg, cfg, scale_factor=cfg.scale_factor)
    unet = UNet(unet_cfg)
    scale = cfg.scale_factor if cfg.scale_factor is not None else (1.0 if fs.kind == "identity" else None)
    return LatentDiffusion(fs, unet, scale_factor=scale)


def loss(cfg: LDMConfig):
    if cfg.text:  # batches (x, codes): attribute dropout, caption dropout (p_uncond), then the same diffusion loss
        kw = cfg.loss_kwargs()
        return loss_from_options(kw.pop("schedule"), cfg, **kw)
    return latent_diffusion_loss(**cfg.loss_kwargs())


def wrap_data(cfg: LDMConfig, data):
    """Text-conditioned: ``CaptionedData(data)`` (batches ``(x, codes)``, the attributes measured once); else ``data``."""
    if not cfg.text:
        return data
    name = getattr(data, "name", "?")
    size = tuple(data[0][0].shape[-2:]) if len(data) else None
    if name not in TEXT_DATASETS or size != (32, 32):
        raise ValueError(f"--text trains on captions measured from mnist / mnist5k digits at 32x32 (the caption bins are "
                         f"mnist5k's); got {name} at {size}: pass --dataset mnist5k (and no --image-size)")
    return CaptionedData(data)


def _cfg(meta) -> LDMConfig:
    return RECIPES["ldm"].config(meta["model_config"])


def sample_with(model, cfg: LDMConfig, n, generator, device, sampler=None, steps=None, batch_size=None, guidance=None,
                y=None, prompt=None, **options):
    """``n`` decoded samples; None for ``sampler`` / ``steps`` / ``spacing`` means the config's defaults.

    Text-conditioned models: ``prompt`` (one string for all, or ``n`` strings; None: the empty caption,
    unconditional) with guidance scale ``guidance`` (None: the config's ``guidance``)."""
    sampler = sampler or cfg.sampler
    check_options(sampler, options)
    options.setdefault("spacing", cfg.spacing)
    if guidance is None and (y is not None or prompt is not None):
        guidance = cfg.guidance  # the config's default scale (3 in the ldm sizes: measured class agreement)
    if prompt is not None and not cfg.text:
        raise ValueError("this ldm model is not text-conditioned: --prompt needs a model trained with "
                         "`ldmcourse train ldm --text`" + (" (this one takes --class C)" if cfg.num_classes else ""))
    if cfg.text:
        if y is not None:
            raise ValueError("a text-conditioned ldm model takes --prompt \"a thin three\", not --class "
                             "(the caption carries the class)")
        prompts = [""] * n if prompt is None else ([prompt] * n if isinstance(prompt, str) else list(prompt))
        if len(prompts) != n:
            raise ValueError(f"prompt: give one prompt or {n}, got {len(prompts)}")
        x = sample_prompts(model, prompts, cfg.make_schedule(), sampler=sampler, steps=steps or cfg.sample_steps,
                           guidance=1.0 if guidance is None else guidance, generator=generator, device=device,
                           prediction=cfg.prediction, batch_size=batch_size or 256, **options)
        return x.clamp(-1, 1).cpu()
    x = sample_latent(model, sampler, cfg.make_schedule(), n, steps=steps or cfg.sample_steps, generator=generator,
                      device=device, y=y, guidance=guidance, prediction=cfg.prediction, batch_size=batch_size, **options)
    return x.clamp(-1, 1).cpu()


def sample(model, meta, n, generator, device, sampler=None, steps=None, batch_size=None, guidance=None, y=None,
           prompt=None, **options):
    return sample_with(model, _cfg(meta), n, generator, device, sampler, steps, batch_size, guidance, y, prompt, **options)


def inpaint(model, meta, x_known, keep, generator, device, sampler=None, steps=None, spacing=None, **kwargs):
    """Used by ``ldmcourse inpaint``: fill ``keep == 0`` of ``x_known`` (pixels or latents, as trained)."""
    cfg = _cfg(meta)
    sampler = sampler or cfg.sampler
    check_options(sampler, {k: v for k, v in kwargs.items() if k not in ("method", "jump_length", "resample")})
    out = inpaint_with(model, sampler, cfg.make_schedule(), x_known.to(device), keep.to(device), prediction=cfg.prediction,
                       steps=steps or cfg.sample_steps, spacing=spacing or cfg.spacing, generator=generator, **kwargs)
    return out.clamp(-1, 1).cpu()


def picture(model, cfg: LDMConfig, data, device, generator):
    """32 samples with the config's default sampler and steps; class-conditional models draw classes 0..K-1 in turn;
    text-conditioned ones the prompts of ``text_ldm.PICTURE_PROMPTS`` (4 each, one row per prompt pair)."""
    if cfg.text:
        x, _ = picture_prompts(model, cfg.make_schedule(), generator, device, prediction=cfg.prediction,
                               steps=cfg.sample_steps)
        return x, "prompts.png"
    y = torch.arange(32) % cfg.num_classes if cfg.num_classes else None
    return sample_with(model, cfg, 32, generator, device, y=y), "samples.png"


SIZES = {
    "smoke": {"fit": dict(steps=20, batch_size=32, lr=1e-3, warmup=5, log_every=5),
              "model": dict(base_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention=(), sample_steps=10,
                            num_classes=10, p_uncond=0.1, guidance=3.0),
              "data": dict(n_train=256)},
    # class-conditional by default (every dataset here has 10 classes); `--num-classes none --p-uncond 0` for unconditional.
    # cpu (issue 14): on the 400-step kl-f4 first stage, 2,000 steps = 221 s on 1 thread. Guided samples (DDIM 25)
    # agree with the requested class 72 / 92 / 95 / 96 % at guidance 1 / 2 / 3 / 4 (n = 500, seed 1; after 500 steps,
    # n = 200: 21 / 31 / - / 42 %); at guidance 3 on 1,000 fresh samples 96.9 % [95.6, 97.8], FID 0.84 (floor 0.32).
    "cpu": {"fit": dict(steps=2000, batch_size=64, lr=1e-3, warmup=100, log_every=50, ema_decay=0.995),
            "model": dict(base_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1, attention=(4,), num_classes=10, p_uncond=0.1,
                          guidance=3.0)},
    "gpu": {"fit": dict(steps=50000, batch_size=128, lr=2e-4, warmup=1000, log_every=200),
            "model": dict(base_channels=128, channel_mult=(1, 2, 2), num_res_blocks=2, attention=(2, 4), num_classes=10, p_uncond=0.1,
                          guidance=3.0),
            "data": dict(dataset="fashion-mnist")},
}


@torch.no_grad()
def test_loss_metric(model, meta, test_data, device, options):
    """The training loss on test images, with fixed noise and timesteps (seed ``seed``): cheap, comparable."""
    cfg = _cfg(meta)
    loss_fn = loss(cfg)
    g = torch.Generator(device=device).manual_seed(int(options.get("seed", 0)))
    x, y = test_data.tensors()
    if cfg.text:  # the captions' attribute codes take the labels' place
        y = wrap_data(cfg, test_data).codes
    total, n = 0.0, 0
    for a in range(0, len(x), 256):
        xb, yb = x[a:a + 256].to(device), y[a:a + 256].to(device)
        l, _ = loss_fn(model, (xb, yb) if cfg.num_classes or cfg.text else xb, g)
        total, n = total + float(l) * len(xb), n + len(xb)
    return {"test_loss": total / max(n, 1), "n": n}


def fid_metric(model, meta, test_data, device, options):
    """FID on the course classifier's features (``ldmcourse eval --metric fid``; see recipes.classifier)."""
    from .classifier import fid_metric as classifier_fid

    return classifier_fid(model, meta, test_data, device, options)


@metric_options(passes_rest=True, classifier=(str, None), guidance=(float, 0), repeats=(int, 1), sampler=(str, None),
                steps=(int, 1), batch_size=(int, 1), ceiling=(int, 0))
@torch.no_grad()
def adherence_metric(model, meta, test_data, device, options):
    """Caption adherence of a text-conditioned model (``ldmcourse eval --metric adherence``): ``repeats``
    samples of each of the 60 :data:`~ldmcourse.text_ldm.EVAL_PROMPTS` (default: about ``--n`` in all),
    the class scored by the course classifier (as for FID), each attribute by the caption measures;
    ``ceiling=1`` (default) adds the first stage's reconstructions of the ``--n`` test digits against their
    own captions. Options: ``guidance`` (default 3), ``repeats``, ``sampler``, ``steps``, ``batch_size``,
    ``classifier``, ``ceiling``, ``seed``."""
    from .classifier import course_classifier

    cfg = _cfg(meta)
    if not cfg.text:
        raise ValueError("--metric adherence needs a text-conditioned model (`ldmcourse train ldm --text`)")
    opts = dict(options)
    net, path = course_classifier(meta, opts.pop("classifier", None), device)
    seed, guidance = int(opts.pop("seed", 0)), float(opts.pop("guidance", 3.0))
    repeats = int(opts.pop("repeats", max(1, -(-len(test_data) // len(EVAL_PROMPTS)))))
    ceiling = bool(opts.pop("ceiling", 1))
    prompts = [p for p in EVAL_PROMPTS for _ in range(repeats)]
    g = torch.Generator(device=device).manual_seed(seed)
    x = sample_with(model, cfg, len(prompts), g, device, opts.pop("sampler", None), opts.pop("steps", None),
                    opts.pop("batch_size", 256), guidance, prompt=prompts, **opts)

    def classify(images):
        return torch.cat([net(images[a:a + 500].to(device)).argmax(1).cpu() for a in range(0, len(images), 500)])

    out = {"adherence": prompt_adherence(x, prompts, predicted_class=classify(x)), "n": len(prompts), "repeats": repeats,
           "guidance": guidance, "classifier": str(path)}
    if ceiling:
        out["ceiling"] = ceiling_adherence(model, test_data, classify=classify)
        out["n_ceiling"] = len(test_data)
    return out


RECIPES = {
    "ldm": Recipe(
        name="ldm", model_config=LDMConfig, build=build, loss=loss, sizes=SIZES, picture=picture, sample=sample,
        metrics={"test_loss": test_loss_metric, "fid": fid_metric, "kid": fid_metric, "adherence": adherence_metric},
        description="latent diffusion: a U-Net on the latents of a first-stage checkpoint (--first-stage none: pixels)",
        inpaint=inpaint, guidance=True, renamed={"diffusion_steps": "T"}, wrap_data=wrap_data, prompts=True,
    ),
}
