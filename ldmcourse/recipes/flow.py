"""Recipe for flow matching / rectified flow (Lipman et al. 2023; Liu et al. 2022), in pixels or on the
latents of a course first stage: ``ldmcourse train flow``.

    ldmcourse train flow --dataset fashion-mnist --path linear --t-sampling logit_normal --out runs/flow
    ldmcourse train flow --first-stage runs/kl/checkpoint.pt --out runs/latent-flow      (latent, as ``train ldm``)
    ldmcourse sample --ckpt runs/flow/checkpoint.pt --sampler euler --steps 8 --n 64 --out samples.png
    ldmcourse sample --ckpt runs/flow/checkpoint.pt --sampler ddim --steps 8 --out samples.png   (the ε-samplers too)
    ldmcourse eval --ckpt runs/flow/checkpoint.pt --metric fid --option sampler=heun --option steps=16
    ldmcourse train flow --reflow-from runs/flow/checkpoint.pt --reflow-pairs 10000 --out runs/flow-2rf      (reflow)
    ldmcourse train flow --reflow-from zoo:rf-mnist5k --out runs/flow-2rf    (the teacher: a zoo entry, reused or trained)
    ldmcourse train flow --reflow-from runs/flow-2rf/checkpoint.pt --one-step true --out runs/flow-2rf-1step
    ldmcourse sample --ckpt runs/flow-2rf-1step/checkpoint.pt --sampler euler --steps 1 --out one_step.png

The model is a :class:`ldmcourse.latent.LatentDiffusion` (a frozen first stage, read as ``train ldm``
reads it, plus the U-Net; ``--first-stage none``, the default, is pixel space; ``--first-stage auto`` is
the zoo's first stage for the dataset, as for ``train ldm``). The U-Net predicts the velocity v(x_t, t); it is called with 1000·t (``time_scale``), the range its
sinusoidal embedding was built for (SD3 does the same). Samplers: ``euler``, ``heun``, ``midpoint``
integrate the velocity from t = 1 to 0 (NFE = steps, 2·steps, 2·steps); any other name of
``ldmcourse.samplers.SAMPLERS`` (ddim, dpm_solver++_2m, …) runs on the path as a process, on the
model converted to an ε-model. Reflow (``--reflow-from``) starts from the teacher's weights and trains on
``--reflow-pairs`` (sample, noise) pairs of its ODE, drawn once at the first step (regenerated identically on
``--resume``); ``--dataset`` should be the teacher's (pictures, metrics), its images are not trained on. The initial noise is drawn exactly as ``sample_chunked`` draws it
(one seed per sample), so the same ``--seed`` gives the same x_T for every sampler and for the ε-models
of the ddpm recipe: comparisons are paired (the ε-samplers start at t = 0.999 with x_T scaled by σ = 0.999).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import torch

from ..configs import from_dict
from ..flow import FLOW_SAMPLERS, PATHS, T_SAMPLINGS, eps_from_velocity, get_flow_sampler, make_path, time_grid
from ..guidance import check_class, guided_velocity
from ..samplers import SAMPLERS
from ..unet import UNet, UNetConfig
from ..utils import check_range
from . import Recipe
from .classifier import fid_metric


@dataclass
class FlowConfig(UNetConfig):
    """The U-Net (all of :class:`UNetConfig`), the first stage (as in ``LDMConfig``) and the probability path."""

    image_size: int = 32
    first_stage: str = "none"  # checkpoint of a first stage (kl-autoencoder, vae, nvae); "auto": the zoo's (ldmcourse.zoo); "none": pixels
    first_stage_kind: str = ""  # filled in from the checkpoint
    first_stage_config: str = ""  # filled in: the first stage's config as JSON
    latent_shape: tuple[int, ...] = ()  # filled in: (c, h, w)
    scale_factor: float | None = None  # None: 1/std of the first batch's latents (pixels: 1)

    path: str = "linear"  # linear | vp | cosine
    t_sampling: str = "logit_normal"  # uniform | logit_normal (Esser et al. 2024: lognorm(0, 1) ranked best)
    t_loc: float = 0.0  # logit-normal location m
    t_scale: float = 1.0  # logit-normal scale s
    p_uncond: float = 0.0  # label dropout (class-conditional models)
    time_scale: float = 1000.0  # the network sees time_scale·t
    shift: float = 1.0  # sampling-grid shift t -> s t / (1 + (s - 1) t) (SD3 eq. 23)
    sampler: str = "euler"  # default sampler: euler | heun | midpoint (the velocity ODE) or any ldmcourse.samplers name
    sample_steps: int = 50  # default sampler steps (NFE = steps for euler, 2·steps for heun / midpoint)
    # reflow / one-step distillation (Liu et al. 2022): start from a trained flow and train on its own pairs
    reflow_from: str = ""  # a flow checkpoint (the teacher): its architecture, path, first stage and weights are copied
    reflow_pairs: int = 10_000  # (sample, noise) pairs drawn from the teacher's ODE
    reflow_ode_steps: int = 32  # Heun steps of the teacher per pair (NFE 64)
    reflow_seed: int = 0  # seed of the pairs' noise (and labels)
    reflow_guidance: float = 1.0  # the teacher's classifier-free guidance scale for the pairs (the student learns the guided map)
    one_step: bool = False  # with reflow_from: distil the one-step map z -> z - v(z, 1) (train at t = 1 only)
    teacher_config: str = ""  # filled in: the teacher's model config as JSON

    def __post_init__(self):
        super().__post_init__()
        self.latent_shape = tuple(self.latent_shape)
        for name, value, choices in (("path", self.path, PATHS), ("t-sampling", self.t_sampling, T_SAMPLINGS),
                                     ("sampler", self.sampler, (*FLOW_SAMPLERS, *SAMPLERS))):
            if value not in choices:
                raise ValueError(f"--{name} {value!r} is not known; choose one of {', '.join(choices)}")
        check_range("p_uncond", self.p_uncond, 0.0, 1.0, hi_open=True)
        if self.p_uncond and not self.num_classes:
            raise ValueError("p_uncond > 0 needs a class-conditional model: add --num-classes K")
        for name in ("t_scale", "time_scale", "shift"):
            check_range(name, getattr(self, name), 0.0, lo_open=True)
        check_range("sample_steps", self.sample_steps, 1, integer=True)
        if self.one_step and not self.reflow_from:
            raise ValueError("--one-step distils a trained flow on its own pairs: give --reflow-from CKPT")
        if self.reflow_from:
            check_range("reflow_pairs", self.reflow_pairs, 1, integer=True)
            check_range("reflow_ode_steps", self.reflow_ode_steps, 1, integer=True)
            if not self.teacher_config and self.first_stage not in ("", "none"):  # before the first build
                raise ValueError(f"--first-stage {self.first_stage}: a reflowed student inherits its teacher's first stage "
                                 "(and path, architecture, weights); drop --first-stage")

    def unet_config(self) -> UNetConfig:
        return from_dict(UNetConfig, dataclasses.asdict(self))


def _sizes_of_ldm() -> dict:
    """The latent-diffusion recipe's sizes, less what a flow has not (the diffusion process's fields): the same
    U-Net and training budget per profile as ``train ldm`` (and the zoo's ``ldm-mnist5k``), so a flow and an
    ε-model in the same latent space (or both in pixels, ``--first-stage none``) are compared at equal cost."""
    from .ldm import SIZES as LDM_SIZES

    names = {f.name for f in dataclasses.fields(FlowConfig)}
    return {profile: {part: ({k: v for k, v in over.items() if k in names} if part == "model" else dict(over))
                      for part, over in sizes.items()} for profile, sizes in LDM_SIZES.items()}


SIZES = _sizes_of_ldm()
# reflow / distillation only (inert otherwise): few pairs for CI; for cpu 10,000 pairs (Liu et al.'s minimum in issue 16)
# of a 16-step Heun solve (NFE 32, the teacher's near-converged FID; flow_nfe.py measures it)
SIZES["smoke"]["model"].update(reflow_pairs=64, reflow_ode_steps=2)
SIZES["cpu"]["model"].update(reflow_pairs=10_000, reflow_ode_steps=16)


# what a reflowed / distilled student inherits from its teacher (the rest, e.g. t_sampling and p_uncond, is its own)
_INHERITED = tuple(f.name for f in dataclasses.fields(UNetConfig)) + (
    "image_size", "first_stage", "first_stage_kind", "first_stage_config", "latent_shape", "scale_factor", "path", "time_scale")


def build(cfg: FlowConfig):
    from ..latent import LatentDiffusion
    from .ldm import _build_first_stage  # the one reader of first-stage checkpoints (shared with train ldm)

    state = None
    if cfg.reflow_from and not cfg.teacher_config:  # first build of a student: the teacher's architecture and weights
        from ..checkpoint import load_checkpoint

        ck = load_checkpoint(cfg.reflow_from)
        if ck["meta"]["kind"] != "flow":
            raise ValueError(f"--reflow-from {cfg.reflow_from} is a {ck['meta']['kind']!r} checkpoint; reflow needs a flow model")
        teacher = ck["meta"]["model_config"]
        for k in _INHERITED:
            setattr(cfg, k, tuple(teacher[k]) if isinstance(teacher[k], list) else teacher[k])
        cfg.teacher_config = json.dumps(teacher)
        state = ck["ema"] if ck.get("ema") is not None else ck["model"]
    fs = _build_first_stage(cfg)
    cfg.in_channels, cfg.latent_shape = fs.latent_shape[0], fs.latent_shape  # recorded in the checkpoint's meta
    scale = cfg.scale_factor if cfg.scale_factor is not None else (1.0 if fs.kind == "identity" else None)
    model = LatentDiffusion(fs, UNet(cfg.unet_config()), scale_factor=scale)
    if state is not None:
        model.load_state_dict(state)  # Liu et al. initialise k+1-rectified flow from k-rectified flow
    return model


@torch.no_grad()
def teacher_pairs(cfg: FlowConfig, device) -> tuple[torch.Tensor, ...]:
    """(x, z[, y]): ``reflow_pairs`` latents x = Φ(z) of the teacher's ODE (Heun, ``reflow_ode_steps``), the noise z
    they came from and, for a class-conditional teacher, the uniformly drawn labels y it was conditioned on (with
    classifier-free guidance ``reflow_guidance``: the student then learns the guided map and samples unguided)."""
    from ..run import load_model

    teacher, _, _ = load_model(cfg.reflow_from, torch.device(device))
    g = torch.Generator(device="cpu").manual_seed(cfg.reflow_seed)
    n, K = cfg.reflow_pairs, cfg.num_classes
    if cfg.reflow_guidance != 1.0 and not K:
        raise ValueError("--reflow-guidance needs a class-conditional teacher (trained with --num-classes K)")
    z = torch.randn(n, *teacher.latent_shape, generator=g)
    y = torch.randint(0, K, (n,), generator=g) if K else None
    path = make_path(cfg.path)
    times = time_grid(cfg.reflow_ode_steps, path.t_range[1], path.t_range[0])
    print(f"[ldmcourse] reflow: {n} pairs from {cfg.reflow_from} (Heun, {cfg.reflow_ode_steps} steps, "
          f"guidance {cfg.reflow_guidance:g})", flush=True)
    xs = []
    for a in range(0, n, 256):
        yb = y[a:a + 256].to(device) if K else None
        v = velocity_model(teacher, cfg, yb, cfg.reflow_guidance if cfg.reflow_guidance != 1.0 else None)
        xs.append(get_flow_sampler("heun")(v, z[a:a + 256].to(device), times))
    return (torch.cat(xs), z.to(device)) + ((y.to(device),) if K else ())


def loss(cfg: FlowConfig):
    """Encode the batch with the frozen first stage (setting the scale on the first batch), then the flow loss.
    With ``reflow_from``: the batches give only the batch size; the loss is on a random batch of the
    teacher's pairs (generated on the first call), and at t = 1 only with ``one_step``."""
    from functools import partial

    from ..flow import flow_loss, reflow_loss

    kw = dict(path=make_path(cfg.path), t_sampling=cfg.t_sampling, loc=cfg.t_loc, scale=cfg.t_scale, p_uncond=cfg.p_uncond,
              time_scale=cfg.time_scale)
    fn = partial(flow_loss, **kw)
    pairs: list = []

    def loss_fn(model, batch, generator=None, **kwargs):  # kwargs: flow_loss's t=, noise= (fixed draws)
        x, y = (batch[0], batch[1]) if isinstance(batch, (tuple, list)) else (batch, None)
        if cfg.reflow_from:
            if not pairs:
                pairs.extend(teacher_pairs(cfg, x.device))
            idx = torch.randint(0, pairs[0].shape[0], (x.shape[0],), generator=generator, device=x.device)
            return reflow_loss(model.unet, tuple(p[idx] for p in pairs), generator, one_step=cfg.one_step, **kw)
        if not model.scale_is_set:
            model.set_scale_factor(x, generator)
        z = model.encode(x, generator)  # (B, C, H, W) -> (B, c, h, w); identity for pixels
        return fn(model.unet, (z, y) if y is not None else z, generator, **kwargs)

    return loss_fn


def _cfg(meta) -> FlowConfig:
    return RECIPES["flow"].config(meta["model_config"])


def velocity_model(model, cfg: FlowConfig, y=None, guidance: float | None = None):
    """``v(x, t)`` for path times t from the U-Net (which sees time_scale·t); ``y`` a class label (int, or one
    per sample of the batch), with ``guidance`` s the classifier-free guidance scale (default 1: conditional)."""
    net = lambda x, t, y=None: model(x, cfg.time_scale * t.float(), y)  # noqa: E731
    if guidance is not None and y is None:
        raise ValueError("--guidance needs --class C (the label to guide towards)")
    if y is None:
        return lambda x, t: net(x, t)
    if cfg.num_classes is None:
        raise ValueError("this flow model is unconditional: --class / --guidance need one trained with --num-classes K")
    check_class(y, cfg.num_classes)
    return guided_velocity(net, y, 1.0 if guidance is None else guidance, num_classes=cfg.num_classes)


def _prior(n: int, shape, generator, device, dtype=torch.float32) -> list[torch.Tensor]:
    """One x_T per sample, drawn as ``ldmcourse.samplers.sample_chunked`` draws it (seeds from ``generator``)."""
    seeds = torch.randint(0, 2**62, (n,), generator=generator, device=generator.device if generator is not None else "cpu").tolist()
    return [torch.randn(tuple(shape), generator=torch.Generator(device=device).manual_seed(s), device=device, dtype=dtype)
            for s in seeds]


@torch.no_grad()
def sample_with(model, cfg: FlowConfig, n, generator, device, sampler=None, steps=None, batch_size=256, y=None,
                guidance=None, **options):
    """``n`` images. ``euler`` / ``heun`` / ``midpoint``: ``steps`` steps of the velocity ODE on
    ``time_grid(steps, shift=cfg.shift)`` (option ``shift=``); other samplers: ``ldmcourse.samplers`` on the path.
    None for ``sampler`` / ``steps`` means the config's. ``y``: None, one label, or (n,) labels."""
    sampler, steps, batch_size = sampler or cfg.sampler, steps or cfg.sample_steps, batch_size or n
    path = make_path(cfg.path)
    shape = tuple(model.latent_shape)
    device = torch.device(device)
    if isinstance(y, torch.Tensor) and y.ndim == 0:
        y = int(y)
    if isinstance(y, torch.Tensor) and y.shape != (n,):
        raise ValueError(f"y must be one label or {n} labels, got shape {tuple(y.shape)}")
    chunks = [(a, min(n, a + batch_size)) for a in range(0, n, batch_size)]
    v_of = lambda a, b: velocity_model(model, cfg, y[a:b].to(device) if isinstance(y, torch.Tensor) else y, guidance)  # noqa: E731
    if sampler in FLOW_SAMPLERS:
        fn = get_flow_sampler(sampler)
        times = options.pop("times", None) or time_grid(steps, path.t_range[1], path.t_range[0], options.pop("shift", cfg.shift))
        if options:
            raise ValueError(f"unknown option(s) {sorted(options)} for flow sampler {sampler!r} (known: shift, times)")
        x_T = _prior(n, shape, generator, device)
        xs = [model.decode(fn(v_of(a, b), torch.stack(x_T[a:b]), times)).cpu() for a, b in chunks]
        return torch.cat(xs).clamp(-1, 1)
    from ..samplers import sample_chunked

    options.setdefault("spacing", "linspace")
    kw = dict(schedule=path, device=device, out_device=device, prior_std=path.prior_std(), steps=steps, **options)
    if isinstance(y, torch.Tensor):  # per-sample labels: one velocity model per chunk (x_T depends on batch_size)
        z = torch.cat([sample_chunked(sampler, eps_from_velocity(v_of(a, b), path), shape, b - a, b - a, generator, **kw)
                       for a, b in chunks])
    else:
        z = sample_chunked(sampler, eps_from_velocity(v_of(0, n), path), shape, n, batch_size, generator, **kw)
    return torch.cat([model.decode(z[a:b]).cpu() for a, b in chunks]).clamp(-1, 1)


def sample(model, meta, n, generator, device, sampler=None, steps=None, batch_size=256, y=None, guidance=None, **options):
    return sample_with(model, _cfg(meta), n, generator, device, sampler, steps, batch_size, y, guidance, **options)


def picture(model, cfg: FlowConfig, data, device, generator):
    """32 samples with the config's default sampler and steps; class-conditional models draw classes 0..K-1 in turn."""
    y = torch.arange(32) % cfg.num_classes if cfg.num_classes else None
    return sample_with(model, cfg, 32, generator, device, batch_size=32, y=y), "samples.png"


def sample_fd_metric(model, meta, test_data, device, options):
    """The pixel-PCA Fréchet distance of the ddpm recipe (a proxy until FID: see ``recipes/ddpm.py``),
    on this recipe's samples; options ``sampler`` (the config's, euler), ``steps`` (the config's sample_steps; 5 for smoke), ``max_n`` (1000; 32)."""
    from .ddpm import _defaults, sample_fd_report

    opts = _defaults(meta, options, steps=(_cfg(meta).sample_steps, 5), max_n=(1000, 32))
    return sample_fd_report(sample, model, meta, test_data, device, opts, _cfg(meta).sampler)


RECIPES = {
    "flow": Recipe(
        name="flow", model_config=FlowConfig, build=build, loss=loss, sizes=SIZES, picture=picture, sample=sample,
        metrics={"sample_fd": sample_fd_metric, "fid": fid_metric, "kid": fid_metric},
        description="flow matching / rectified flow: a velocity U-Net on pixels or on a first stage's latents (--first-stage)",
        guidance=True,
    ),
}
