"""Exact likelihood of the probability-flow ODE model (Song et al. 2021, appendix D.2; FFJORD).

The ODE dx̄/dσ̄ = v(x̄, σ̄) = ε_θ(α x̄, t(σ̄)) (:mod:`ldmcourse.samplers.continuous`) is a continuous
normalising flow, so by the instantaneous change of variables

    log p_0(x_0) = log p_T(x̄(σ̄_max)) + ∫_{σ̄_min}^{σ̄_max} ∇·v(x̄(σ̄), σ̄) dσ̄,

integrated *upwards* from the data. The divergence is estimated without bias by Hutchinson's trick,
∇·v = E_z[zᵀ (∂v/∂x̄) z] with Rademacher z (one vector-Jacobian product per probe), or exactly
(D backward passes; small D only). The integral uses Heun's method on the process's time grid.

Bits per dimension for 8-bit images in [-1, 1]: with uniform dequantisation over a bin of width
2/255, bpd = (-log p(x + u)) / (D ln 2) + log2(255/2): an upper bound on the discrete NLL, comparable
with the variational bound of notebook 05 (``ldmcourse.diffusion.vlb_bpd``).

:func:`continuous_vlb_bpd` is that bound's T -> ∞ limit, the continuous-time ELBO (Kingma et al. 2021, "Variational
Diffusion Models", eq. 17; Song et al. 2021, "Maximum Likelihood Training of Score-Based Diffusion Models", Thm. 1):

    -log p(x) <= L_prior + L_0 + L_∞,    L_∞ = ½ ∫ E_ε ‖ε - ε_θ(α x + σ ε, t)‖² d(log SNR)    (SNR = α²/σ²)

over the process's noise range. With λ = log(α/σ) = ½ log SNR the integral is ∫ E‖ε - ε_θ‖² dλ.
"""

from __future__ import annotations

import math

import torch

from .sde import as_process


def _v_and_div(eps_model, xbar, alpha, t_model, probes, exact):
    with torch.enable_grad():
        xbar = xbar.detach().requires_grad_(True)
        v = eps_model(alpha * xbar, t_model)
        if exact:
            flat = v.flatten(1)
            div = sum(torch.autograd.grad(flat[:, i].sum(), xbar, retain_graph=True)[0].flatten(1)[:, i]
                      for i in range(flat.shape[1]))
        else:
            div = 0.0
            for j, z in enumerate(probes):
                (vjp,) = torch.autograd.grad((v * z).sum(), xbar, retain_graph=j + 1 < len(probes))
                div = div + (vjp * z).flatten(1).sum(1)
            div = div / len(probes)
    return v.detach(), div.detach().double()


def ode_likelihood(eps_model, x0: torch.Tensor, schedule, steps: int = 100, spacing: str | None = None,
                   generator: torch.Generator | None = None, n_probes: int = 1, exact: bool = False,
                   dequantize: bool = False) -> dict:
    """log p(x0) under the probability-flow ODE of ``eps_model`` (per sample) and bits/dim.

    ``schedule``: a DDPM Schedule (grid: ``steps`` indices, ``linspace`` spacing by default) or an SDE
    (``logsnr`` spacing by default). Returns {"logp" (B,) nats, "bpd" (B,), "nfe"}; with ``dequantize``
    uniform noise within each 8-bit bin is added first (drawn from ``generator``).
    """
    process = as_process(schedule)
    spacing = spacing or ("logsnr" if process.continuous else "linspace")
    times = list(reversed(process.default_times(steps, spacing)))  # ascending: data -> prior
    a, s = process.marginal(torch.tensor(times, dtype=torch.float64))
    alpha, sbar = a.tolist(), (s / a).tolist()
    x = x0.detach()
    if dequantize:
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x = x + (u - 0.5) * (2 / 255)
    B, D = x.shape[0], x[0].numel()
    probes = [torch.randint(0, 2, x.shape, generator=generator, device=x.device).to(x.dtype) * 2 - 1 for _ in range(n_probes)]
    xbar, delta, nfe = x, torch.zeros(B, dtype=torch.float64, device=x.device), 0

    def stage(xb, k):
        return _v_and_div(eps_model, xb, alpha[k], process.model_time(times[k], B, x.device), probes, exact)

    v1, d1 = stage(xbar, 0)
    nfe += 1
    for k in range(len(times) - 1):
        h = sbar[k + 1] - sbar[k]
        v2, d2 = stage(xbar + h * v1, k + 1)  # Heun: Euler predictor, trapezoid corrector
        xbar_new = xbar + h * (v1 + v2) / 2
        delta = delta + h * (d1 + d2) / 2
        xbar = xbar_new
        v1, d1 = stage(xbar, k + 1)
        nfe += 2
    prior = process.prior_logp(alpha[-1] * xbar) + D * math.log(alpha[-1])  # density of x̄ = x/α
    logp = prior.to(delta.device) + delta
    bpd = -logp / (D * math.log(2)) + math.log2(255 / 2)
    return {"logp": logp, "bpd": bpd, "nfe": nfe}


@torch.no_grad()
def continuous_vlb_bpd(eps_model, data: torch.Tensor, schedule, n_t: int = 64, variance: str = "beta",
                       batch_size: int = 64, generator: torch.Generator | None = None, device=None) -> dict:
    """The continuous-time ELBO of a DDPM ``schedule``'s ε-model on ``data`` (N, C, H, W) in [-1, 1], in bits/dim.

    L_∞ = ∫_{λ_min}^{λ_max} E_ε ‖ε - ε_θ(x_λ, t(λ))‖² dλ over the schedule's range, index T-1 (λ_min) to index 0
    (λ_max); it is estimated per image with ``n_t`` levels, one uniform draw in each of ``n_t`` equal bins of λ
    (stratified: unbiased), at the *fractional* index t(λ) of the piecewise-linear log ᾱ (:class:`~ldmcourse.sde.
    DiscreteVP`; the ε-model must accept a float t, as the course U-Net does). The prior term L_T and the
    decoder L_0 = -log p_θ(x | x at index 0) are those of :func:`ldmcourse.diffusion.vlb_terms`, so the three
    terms are a valid bound (Kingma et al. 2021, eq. 11) on the same discrete data as ``vlb_bpd``, whose sum of
    T-1 KL terms this integral replaces. Returns {"bpd", "prior_bpd", "diffusion_bpd", "decoder_bpd",
    "diffusion_bpd_se" (standard error over images), "n", "n_t"}.
    """
    from .diffusion import vlb_terms
    from .metrics import bits_per_dim
    from .sde import DiscreteVP

    process = as_process(schedule)
    if not isinstance(process, DiscreteVP):
        raise TypeError("continuous_vlb_bpd takes a DDPM Schedule (its prior and decoder terms are the discrete chain's)")
    device = torch.device(device) if device is not None else data.device
    lam = process.lambda_(torch.tensor([float(process.T_end), 0.0], dtype=torch.float64))
    lam_lo, lam_hi = float(lam[0]), float(lam[1])
    dims = data[0].numel()
    per_image, prior, decoder = [], 0.0, 0.0
    for i in range(0, len(data), batch_size):
        x = data[i:i + batch_size].to(device).double()
        B = x.shape[0]
        u = torch.rand(B, n_t, generator=generator, dtype=torch.float64)
        lam_k = lam_lo + (torch.arange(n_t, dtype=torch.float64) + u) / n_t * (lam_hi - lam_lo)  # (B, n_t), stratified
        t = process.time_of_sigmabar(torch.exp(-lam_k)).clamp(0, process.T_end)             # fractional indices
        a, s = process.marginal(t)
        eps = torch.randn((B, n_t, *x.shape[1:]), generator=generator, dtype=torch.float64).to(device)
        a_, s_ = (v.to(device).view(B, n_t, *[1] * (x.dim() - 1)) for v in (a, s))
        x_t = a_ * x[:, None] + s_ * eps                                                       # (B, n_t, C, H, W)
        pred = eps_model(x_t.flatten(0, 1).float(), t.flatten().float().to(device)).double().view_as(eps)
        sq = ((pred - eps) ** 2).flatten(2).sum(-1)                                            # (B, n_t)
        per_image.append((lam_hi - lam_lo) * sq.mean(1).cpu())
        terms = vlb_terms(eps_model, x, schedule, variance, timesteps=[1], generator=generator)
        prior += float(terms["prior"].sum())
        decoder += float(terms["decoder"].sum())
    diff = torch.cat(per_image)
    n = len(data)
    out = {"prior_bpd": bits_per_dim(prior / n, dims), "diffusion_bpd": bits_per_dim(float(diff.mean()), dims),
           "decoder_bpd": bits_per_dim(decoder / n, dims),
           "diffusion_bpd_se": bits_per_dim(float(diff.std() / math.sqrt(n)), dims) if n > 1 else float("nan")}
    out["bpd"] = out["prior_bpd"] + out["diffusion_bpd"] + out["decoder_bpd"]
    return {**out, "n": n, "n_t": n_t}


__all__ = ["ode_likelihood", "continuous_vlb_bpd"]
