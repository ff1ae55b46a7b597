"""The DDPM process (Ho et al. 2020): forward noising, prediction types, training losses, the
variational bound and ancestral sampling. A plain module of functions: the network and the
:class:`~ldmcourse.schedules.Schedule` are passed in, nothing here builds either.

Notation (index t = 0 … T-1 stands for the paper's t+1; ᾱ_t = ``schedule.alphas_cumprod[t]``):

    x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε                                   q_sample            (eq. 4)
    v   = √ᾱ_t ε - √(1-ᾱ_t) x_0                                   (Salimans & Ho 2022, §4)
    x_0 = (x_t - √(1-ᾱ_t) ε)/√ᾱ_t = √ᾱ_t x_t - √(1-ᾱ_t) v,   ε = √(1-ᾱ_t) x_t + √ᾱ_t v

The equations themselves live in :mod:`ldmcourse.conversions` (in terms of α_t = √ᾱ_t, σ_t = √(1-ᾱ_t));
here they are looked up on a :class:`Schedule` at a batch of indices t (:func:`to_eps`, :func:`to_x0`,
:func:`target_for`). :func:`as_eps_model` turns an x₀- or v-network into an ε-model, so samplers only
see ε-models ``eps_model(x, t)`` with t a (B,) LongTensor of training indices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from . import conversions as conv
from .conversions import PREDICTIONS
from .metrics import bits_per_dim
from .schedules import SCHEDULES, SPACINGS, Schedule, make_schedule
from .utils import randn_like
LOSSES = ("l1", "l2", "huber")
WEIGHTINGS = ("simple", "sigma2", "sigma", "snr", "min_snr")
VARIANCES = ("beta", "beta_tilde")


def _check(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")


@dataclass
class DiffusionConfig:
    """The diffusion process a network is trained for, its loss, and how it is sampled by default.

    Composed into the model configs of the DDPM and LDM recipes (``DDPMConfig``, ``LDMConfig``), so
    every field is a flag of ``ldmcourse train ddpm|ldm``; the sampling defaults are what
    ``ldmcourse sample`` / ``inpaint`` / ``eval`` and the training picture use unless told otherwise.
    """

    schedule: str = "linear"  # linear | cosine | quadratic | sigmoid (ldmcourse.schedules)
    T: int = 1000  # training timesteps
    prediction: str = "eps"  # eps | x0 | v
    loss: str = "l2"  # l1 | l2 | huber
    weighting: str = "simple"  # simple | sigma2 | sigma | snr | min_snr
    gamma: float = 5.0  # exponent of snr, clip of min_snr
    p_uncond: float = 0.0  # label dropout for classifier-free guidance (class-conditional models)
    variance: str = "beta"  # ancestral sampling and the bound: beta | beta_tilde
    sampler: str = "ddim"  # default sampler (ldmcourse.samplers.SAMPLERS)
    sample_steps: int = 50  # default sampler steps
    spacing: str = "leading"  # leading | trailing | linspace; leading: course FID 28/19/11 vs trailing 44/44/43 at
    # 10/20/50 DDIM steps on the cpu-profile Fashion-MNIST DDPM (benchmarks/results/sampling_grid_cpu.json)
    guidance: float = 1.0  # default classifier-free guidance scale when a class (or prompt) is given; 1: the plain
    # conditional model, 0: unconditional

    def __post_init__(self):
        from .samplers import SAMPLERS  # at call time: ldmcourse.samplers imports this module

        for name, value, choices in (("schedule", self.schedule, SCHEDULES), ("prediction", self.prediction, PREDICTIONS),
                                     ("loss", self.loss, LOSSES), ("weighting", self.weighting, WEIGHTINGS),
                                     ("variance", self.variance, VARIANCES), ("sampler", self.sampler, tuple(SAMPLERS)),
                                     ("spacing", self.spacing, SPACINGS)):
            if value not in choices:
                raise ValueError(f"--{name.replace('_', '-')} {value!r} is not known; choose one of {', '.join(choices)}")
        if self.T < 2:
            raise ValueError(f"--T {self.T}: need at least 2 timesteps")
        if not 1 <= self.sample_steps <= self.T:
            raise ValueError(f"--sample-steps {self.sample_steps} must be between 1 and T={self.T}")
        if not 0.0 <= self.p_uncond < 1.0:
            raise ValueError(f"--p-uncond {self.p_uncond} must be in [0, 1)")
        if self.gamma <= 0:
            raise ValueError(f"--gamma {self.gamma} must be > 0")
        if not self.guidance >= 0:
            raise ValueError(f"--guidance {self.guidance} must be >= 0 (1: the conditional model, 0: unconditional)")

    def make_schedule(self) -> Schedule:
        return make_schedule(self.schedule, self.T)

    def loss_kwargs(self) -> dict:
        """The keyword arguments of :func:`diffusion_loss` this config fixes: ``partial(diffusion_loss, **cfg.loss_kwargs())``."""
        return dict(schedule=self.make_schedule(), prediction=self.prediction, loss=self.loss, weighting=self.weighting,
                    gamma=self.gamma, p_uncond=self.p_uncond)


# ----------------------------------------------------------------------------------------------
# forward process and prediction types
# ----------------------------------------------------------------------------------------------

def alpha_sigma(schedule: Schedule, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(α_t, σ_t) = (√ᾱ_t, √(1-ᾱ_t)) at indices t (B,), shaped (B, 1, ...) like ``like``."""
    return schedule.at("sqrt_alphas_cumprod", t, like), schedule.at("sqrt_one_minus_alphas_cumprod", t, like)


def q_sample(x0: torch.Tensor, t: torch.Tensor, schedule: Schedule, noise: torch.Tensor | None = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw x_t ~ q(x_t | x_0) = N(√ᾱ_t x_0, (1-ᾱ_t) I)  (eq. 4). x0: (B, ...), t: (B,)."""
    if noise is None:
        noise = randn_like(x0, generator)
    return conv.marginal(x0, noise, *alpha_sigma(schedule, t, x0))


def target_for(prediction: str, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """What a network of type ``prediction`` should output for the pair (x_0, ε) at step t."""
    return conv.target(prediction, x0, eps, *alpha_sigma(schedule, t, x0))


def to_eps(pred: torch.Tensor, prediction: str, x_t: torch.Tensor, t: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """The ε implied by a network output ``pred`` of type ``prediction`` at (x_t, t)."""
    return conv.to_eps(pred, prediction, x_t, *alpha_sigma(schedule, t, x_t))


def to_x0(pred: torch.Tensor, prediction: str, x_t: torch.Tensor, t: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """The x_0 implied by a network output ``pred`` of type ``prediction`` at (x_t, t)."""
    return conv.to_x0(pred, prediction, x_t, *alpha_sigma(schedule, t, x_t))


def as_eps_model(model: Callable, schedule: Schedule, prediction: str = "eps") -> Callable:
    """Wrap ``model(x, t, *args, **kw)`` that predicts ``prediction`` into an ε-model with the same call."""
    _check("prediction", prediction, PREDICTIONS)
    if prediction == "eps":
        return model

    def eps_model(x: torch.Tensor, t: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return to_eps(model(x, t, *args, **kwargs), prediction, x, t, schedule)

    eps_model.inner = model  # type: ignore[attr-defined]
    return eps_model


# ----------------------------------------------------------------------------------------------
# training loss
# ----------------------------------------------------------------------------------------------

def loss_weight(weighting: str, t: torch.Tensor, schedule: Schedule, prediction: str = "eps", gamma: float = 5.0) -> torch.Tensor:
    """Per-sample weight λ(t), shape (B,) float64, multiplying the loss in the prediction's own space.

    - ``simple``: 1 (Ho et al.'s L_simple when predicting ε).
    - ``sigma2`` / ``sigma``: σ_t² = 1-ᾱ_t and σ_t (the seed's "unified" weights).
    - ``snr``: SNR_t^γ.
    - ``min_snr`` (Hang et al. 2023): min(SNR_t, γ) on the x₀ error, written in each space:
      min(SNR, γ)/SNR for ε, min(SNR, γ) for x₀, min(SNR, γ)/(SNR+1) for v. γ = 5 in the paper.
    """
    _check("weighting", weighting, WEIGHTINGS)
    t = t.detach().cpu().long()
    ac, snr = schedule.alphas_cumprod[t], schedule.snr[t]
    if weighting == "simple":
        return torch.ones_like(ac)
    if weighting == "sigma2":
        return 1 - ac
    if weighting == "sigma":
        return (1 - ac).sqrt()
    if weighting == "snr":
        return snr**gamma
    clipped = snr.clamp(max=gamma)
    return {"eps": clipped / snr, "x0": clipped, "v": clipped / (snr + 1)}[prediction]


def elementwise_loss(pred: torch.Tensor, target: torch.Tensor, loss: str = "l2", huber_delta: float = 1.0) -> torch.Tensor:
    """(B, ...) -> (B,): mean over all but the batch axis of |·|, (·)² or Huber(·)."""
    _check("loss", loss, LOSSES)
    if loss == "l1":
        e = (pred - target).abs()
    elif loss == "l2":
        e = (pred - target) ** 2
    else:
        e = F.huber_loss(pred, target, reduction="none", delta=huber_delta)
    return e.flatten(1).mean(1)


def call_with_labels(model: Callable, x_t: torch.Tensor, t: torch.Tensor, y, num_classes: int | None,
                     p_uncond: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """``model(x_t, t)`` for an unconditional model (``num_classes`` None), else ``model(x_t, t, y)`` with each
    label replaced by the null class K with probability ``p_uncond`` (classifier-free guidance training,
    Ho & Salimans 2022). Shared by the diffusion and the flow-matching losses."""
    if num_classes is None:
        if p_uncond:
            raise ValueError("p_uncond > 0 needs a class-conditional model (UNetConfig.num_classes) or num_classes=")
        return model(x_t, t)
    if y is None:
        raise ValueError("a class-conditional model needs batches (x, y) with labels y")
    y = y.to(x_t.device).long()
    if p_uncond > 0:
        drop = torch.rand(len(y), generator=generator, device=x_t.device) < p_uncond
        y = torch.where(drop, torch.full_like(y, num_classes), y)
    return model(x_t, t, y)



def diffusion_loss(model, batch, generator: torch.Generator | None = None, *, schedule: Schedule,
                   prediction: str = "eps", loss: str = "l2", weighting: str = "simple", gamma: float = 5.0,
                   huber_delta: float = 1.0, p_uncond: float = 0.0, num_classes: int | None = None,
                   t: torch.Tensor | None = None, noise: torch.Tensor | None = None):
    """The DDPM training loss (Algorithm 1), usable as a ``fit`` loss_fn through ``functools.partial``::

        loss_fn = partial(diffusion_loss, schedule=make_schedule("cosine"), prediction="v", p_uncond=0.1)

    ``batch`` is ``(x0, y)`` or ``x0``. t ~ U{0..T-1}, ε ~ N(0, I) (both from ``generator``),
    x_t = q_sample(x0, t, ε), loss = mean_B λ(t)·ℓ(model(x_t, t[, y]), target). A class-conditional
    model (``num_classes`` given, or ``model.config.num_classes``) gets its labels, each replaced by
    the null class K with probability ``p_uncond`` (classifier-free guidance training). Returns
    (loss, logs) with logs {"loss", "mse_eps"} (mse_eps: the ε-space MSE, comparable across predictions).
    """
    x0, y = (batch[0], batch[1]) if isinstance(batch, (tuple, list)) else (batch, None)
    B = x0.shape[0]
    if t is None:
        t = torch.randint(0, schedule.T, (B,), generator=generator, device=x0.device)
    if noise is None:
        noise = randn_like(x0, generator)
    x_t = q_sample(x0, t, schedule, noise)

    K = num_classes if num_classes is not None else getattr(getattr(model, "config", None), "num_classes", None)
    pred = call_with_labels(model, x_t, t, y, K, p_uncond, generator)

    per_sample = elementwise_loss(pred.float(), target_for(prediction, x0, noise, t, schedule).float(), loss, huber_delta)
    w = loss_weight(weighting, t, schedule, prediction, gamma).to(per_sample)
    total = (w * per_sample).mean()
    with torch.no_grad():
        mse_eps = ((to_eps(pred.float(), prediction, x_t, t, schedule) - noise) ** 2).mean()
    return total, {"loss": float(total.detach()), "mse_eps": float(mse_eps)}


# ----------------------------------------------------------------------------------------------
# ancestral sampling
# ----------------------------------------------------------------------------------------------

@torch.no_grad()
def ddpm_sample(eps_model, x_T: torch.Tensor, schedule, steps: int | None = None,
                generator: torch.Generator | None = None, timesteps=None, spacing: str = "leading",
                callback=None, final_step: bool = True, variance: str = "beta", clip_x0: float | None = None) -> torch.Tensor:
    """DDPM ancestral sampling (Algorithm 2), on the full chain or a respaced sub-sequence.

    From x at point t to the next point s (s = t-1 on the full chain; the last step goes to clean
    data, α = 1, σ = 0), with the equations of :mod:`ldmcourse.conversions`:
        x̂_0 = (x - σ_t ε_θ(x, t)) / α_t                               (eq. 15; clipped if clip_x0)
        μ   = μ̃(x̂_0, x)  posterior mean of q(x_s | x_t, x̂_0)         (eq. 7; unclipped it is eq. 11)
        x_s = μ + σ z,  σ² = σ²_{s->t} (``variance="beta"``: the respaced β' = 1 - ᾱ_t/ᾱ_s)
                        or β̃' = (σ_s²/σ_t²) β' (``"beta_tilde"``)
    The step to clean data adds no noise. ``x_T`` sits at ``timesteps[0]`` (default: ``steps`` from
    :func:`~ldmcourse.schedules.make_timesteps` with ``spacing``; all T when ``steps`` is None).
    ``schedule`` may also be an SDE of :mod:`ldmcourse.sde` (then ``steps`` is required).
    ``final_step=False`` stops at ``timesteps[-1]``. ``callback(i, t, t_next, x, x0_pred)`` runs after
    each step (t_next = -1 for the step to clean data); a tensor it returns replaces x.
    """
    from .samplers.grid import make_grid, run_callback  # here, not at the top: samplers registers this function

    _check("variance", variance, VARIANCES)
    if steps is None and timesteps is None and isinstance(schedule, Schedule):
        steps = schedule.T
    grid = make_grid(schedule, steps, timesteps, spacing, final_step)
    x = x_T
    for k in range(grid.n_steps):
        eps = grid.eps(eps_model, x, k)
        x0 = grid.x0(x, eps, k)
        if clip_x0 is not None:
            x0 = x0.clamp(-clip_x0, clip_x0)
        a_t, s_t, a_s, s_s = grid.alpha[k], grid.sigma[k], grid.alpha[k + 1], grid.sigma[k + 1]
        x = conv.posterior_mean(x0, x, a_t, s_t, a_s, s_s)
        if s_s > 0:
            var = conv.transition(a_t, s_t, a_s, s_s)[1] if variance == "beta" else conv.posterior_variance(a_t, s_t, a_s, s_s)
            x = x + math.sqrt(var) * randn_like(x, generator)
        x = run_callback(callback, k, grid, x, x0)
    return x


# ----------------------------------------------------------------------------------------------
# the variational bound (Ho et al. eq. 5; improved-diffusion's calc_bpd_loop)
# ----------------------------------------------------------------------------------------------

def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, in nats."""
    logvar1, logvar2 = (torch.as_tensor(v, dtype=mean1.dtype, device=mean1.device) for v in (logvar1, logvar2))
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _std_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor, bins: int = 256) -> torch.Tensor:
    """log P(x) elementwise for x in [-1, 1] on ``bins`` levels: the Gaussian's mass over x's bin
    [x - 1/(bins-1), x + 1/(bins-1)], with the edge bins extended to ±∞ (Ho et al. eq. 13)."""
    half = 1.0 / (bins - 1)
    inv_std = torch.exp(-log_scale)
    cdf_plus = _std_normal_cdf(inv_std * (x - mean + half))
    cdf_min = _std_normal_cdf(inv_std * (x - mean - half))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_mid = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_mid))


def model_log_variance(schedule: Schedule, variance: str) -> torch.Tensor:
    """(T,) float64 log σ_t² of p_θ(x_{t-1}|x_t): log β̃_t (β̃_0 replaced by β̃_1), or log β_t with
    β_0 replaced by β̃_1 (improved-diffusion's "fixedlarge"), so that the decoder L_0 is the same."""
    _check("variance", variance, VARIANCES)
    if variance == "beta_tilde":
        return schedule.posterior_log_variance_clipped
    return torch.log(torch.cat([schedule.posterior_variance[1:2], schedule.betas[1:]]))


def vlb_terms(eps_model, x0: torch.Tensor, schedule: Schedule, variance: str = "beta", timesteps=None,
              generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """The terms of −ELBO = L_T + Σ_{t≥1} L_{t-1} + L_0 for a batch x0 in [-1, 1], in nats per image.

    - ``prior`` (B,): L_T = KL(q(x_T|x_0) || N(0, I)).
    - ``kl`` (B, K): L_{t-1} = KL(q(x_{t-1}|x_t, x_0) || p_θ(x_{t-1}|x_t)) for each index t ≥ 1 in
      ``timesteps`` (default all 1..T-1), with x_t drawn from q and the *true* posterior mean μ̃_t(x_t, x_0)
      (eq. 7) against the model's μ̃_t(x_t, x̂_0). (The seed's ELBO uses a DDIM-like mean instead.)
    - ``decoder`` (B,): L_0 = −log p_θ(x_0|x_1), a discretised Gaussian (eq. 13) at index t = 0.
    - ``t`` (K,): the indices used.
    Computed in float64 from the model's float ε.
    """
    B = x0.shape[0]
    x0 = x0.double()
    logvar = model_log_variance(schedule, variance)
    ts = torch.arange(1, schedule.T) if timesteps is None else torch.as_tensor(timesteps).long()
    if bool((ts < 1).any()) or bool((ts >= schedule.T).any()):
        raise ValueError(f"KL terms exist for indices 1..{schedule.T - 1}; index 0 is the decoder term")

    def levels(t_b, like):  # (α_t, σ_t, α_{t-1}, σ_{t-1}), with ᾱ_{-1} = 1
        a_p = schedule.at("alphas_cumprod_prev", t_b, like)
        return (*alpha_sigma(schedule, t_b, like), a_p.sqrt(), (1 - a_p).sqrt())

    def model_mean(x_t, t_b):
        eps = eps_model(x_t.float(), t_b).double()
        a_t, s_t, a_p, s_p = levels(t_b, x_t)
        return conv.posterior_mean(conv.x0_from_eps(x_t, eps, a_t, s_t), x_t, a_t, s_t, a_p, s_p)

    kls = []
    with torch.no_grad():
        for t in ts.tolist():
            t_b = torch.full((B,), t, device=x0.device, dtype=torch.long)
            x_t = q_sample(x0, t_b, schedule, randn_like(x0, generator))
            true_mean = conv.posterior_mean(x0, x_t, *levels(t_b, x_t))
            true_logvar = schedule.at("posterior_log_variance_clipped", t_b, x_t)
            kl = normal_kl(true_mean, true_logvar, model_mean(x_t, t_b), logvar[t].item())
            kls.append(kl.flatten(1).sum(1))
        t0 = torch.zeros(B, device=x0.device, dtype=torch.long)
        x_1 = q_sample(x0, t0, schedule, randn_like(x0, generator))
        mean0 = model_mean(x_1, t0)
        decoder = -discretized_gaussian_log_likelihood(x0, mean0, torch.full_like(x0, 0.5 * logvar[0].item())).flatten(1).sum(1)
        T1 = torch.full((B,), schedule.T - 1, device=x0.device, dtype=torch.long)
        prior = normal_kl(schedule.at("sqrt_alphas_cumprod", T1, x0) * x0,
                          torch.log1p(-schedule.at("alphas_cumprod", T1, x0)), torch.zeros_like(x0), torch.zeros_like(x0))
    return {"prior": prior.flatten(1).sum(1), "kl": torch.stack(kls, 1) if kls else x0.new_zeros(B, 0),
            "decoder": decoder, "t": ts}


def vlb_timesteps(T: int, n_t: int | None = None, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices t ≥ 1 and weights w for an unbiased estimate Σ_t w_t L_{t-1} of Σ_{t=1}^{T-1} L_{t-1}.

    ``n_t=None``: every index, weight 1. Otherwise stratified sampling on geometrically spaced strata
    of 1..T-1 (narrow at small t, where the terms are large and vary fast; the first strata hold a
    single index and are therefore exact): one uniform index per stratum, weighted by its width.
    """
    if n_t is None or n_t >= T - 1:
        return torch.arange(1, T), torch.ones(T - 1, dtype=torch.float64)
    if n_t < 1:
        raise ValueError(f"n_t={n_t} must be >= 1 (or None for all {T - 1} terms)")
    edges = torch.unique(torch.round(torch.logspace(0, math.log10(T), n_t + 1, dtype=torch.float64)).long())
    edges[0], edges[-1] = 1, T
    lo, width = edges[:-1], edges[1:] - edges[:-1]
    u = torch.rand(len(lo), generator=generator, device=generator.device if generator is not None else "cpu").cpu()
    return lo + (u * width).long().clamp(max=width - 1), width.double()


def vlb_bpd(eps_model, data: torch.Tensor, schedule: Schedule, variance: str = "beta", n_t: int | None = None,
            batch_size: int = 256, generator: torch.Generator | None = None, device=None) -> dict[str, float]:
    """−ELBO in bits/dim over ``data`` (N, C, H, W) in [-1, 1] (quantised to 256 levels).

    ``n_t=None`` sums all T-1 KL terms (T model calls per image); ``n_t=K`` uses about K stratified
    indices (:func:`vlb_timesteps`, unbiased). Returns {"bpd", "prior_bpd", "kl_bpd", "decoder_bpd",
    "n", "n_t"}, and "kl_per_t" (bits/dim of each L_{t-1} at the indices "t" used).
    """
    device = torch.device(device) if device is not None else data.device
    dims = data[0].numel()
    ts, w = vlb_timesteps(schedule.T, n_t, generator)
    sums = {"prior": 0.0, "kl": 0.0, "decoder": 0.0}
    kl_t = torch.zeros(len(ts), dtype=torch.float64)
    for i in range(0, len(data), batch_size):
        x = data[i:i + batch_size].to(device)
        terms = vlb_terms(eps_model, x, schedule, variance, ts, generator)
        sums["prior"] += float(terms["prior"].sum())
        kl_t += terms["kl"].sum(0).cpu()
        sums["decoder"] += float(terms["decoder"].sum())
    n = len(data)
    sums["kl"] = float((kl_t * w).sum())
    out = {f"{k}_bpd": bits_per_dim(v / n, dims) for k, v in sums.items()}
    out["bpd"] = out["prior_bpd"] + out["kl_bpd"] + out["decoder_bpd"]
    return {**out, "n": n, "n_t": len(ts), "t": ts.tolist(), "kl_per_t": [bits_per_dim(float(v) / n, dims) for v in kl_t]}


__all__ = ["call_with_labels", "PREDICTIONS", "LOSSES", "WEIGHTINGS", "VARIANCES", "DiffusionConfig", "alpha_sigma", "q_sample", "target_for", "to_eps", "to_x0",
           "as_eps_model", "loss_weight", "elementwise_loss", "diffusion_loss", "ddpm_sample", "normal_kl",
           "discretized_gaussian_log_likelihood", "model_log_variance", "vlb_terms", "vlb_timesteps", "vlb_bpd"]
