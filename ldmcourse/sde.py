"""Diffusion as a stochastic differential equation (Song et al. 2021, "Score-Based Generative Modeling
through SDEs"): the forward SDE, its marginals and the prior (the score <-> ε conversion lives in
:mod:`ldmcourse.conversions` and is re-exported here).

Every process here has a *linear* drift, dx = f(t) x dt + g(t) dw, so its marginal is Gaussian,

    p_t(x | x_0) = N(α(t) x_0, σ(t)² I),   d log α/dt = f(t),   dσ²/dt = 2 f(t) σ² + g(t)²,

and the score of p_t(x | x_0) is -(x - α x_0)/σ² = -ε/σ. Hence, for a network ε_θ trained on
x_t = α x_0 + σ ε:   score s_θ(x, t) = -ε_θ(x, t) / σ(t)   (the seed post feeds ε where the score is
expected; the two differ by the factor -σ, which goes from ~1 to ~0.01 along the chain).

- :class:`VPSDE`  dx = -½β(t) x dt + √β(t) dw,               β(t) = β_min + t(β_max - β_min)   (eq. 11)
- :class:`SubVPSDE` dx = -½β(t) x dt + √(β(t)(1 - e^{-2∫β})) dw                                  (eq. 12)
- :class:`VESDE`  dx = √(dσ²/dt) dw,                         σ(t) = σ_min (σ_max/σ_min)^t       (eq. 9)
- :class:`DiscreteVP` a discrete DDPM :class:`~ldmcourse.schedules.Schedule` seen as a VP process
  whose "time" is the training index u ∈ {0, …, T-1} (fractional u interpolates log ᾱ linearly, as
  DPM-Solver's discrete noise schedule does). The model is called with ``u`` as a LongTensor.

The samplers only need, from a process: (α, σ) at a time, a default time grid, the time tensor to
hand the model, and the SDE increments over a step (for Euler–Maruyama). ``as_process`` turns a
``Schedule`` into a :class:`DiscreteVP` and passes SDEs through.
"""

from __future__ import annotations

import math

import torch

from .conversions import eps_from_score, score_from_eps  # noqa: F401  (re-exported: the SDE view of ε)
from .schedules import Schedule, make_timesteps, ve_sigma, vp_marginal


def _f64(t) -> torch.Tensor:
    return torch.as_tensor(t, dtype=torch.float64)


class _Process:
    """Shared helpers; subclasses define ``marginal``, ``f_g2`` and the time range."""

    T_end: float = 1.0  # the noisy end of the time axis
    t_min: float = 1e-3  # the smallest time the model is evaluated at
    clean_time: float = 0.0  # the time passed to callbacks for the final step to clean data
    continuous = True

    def marginal(self, t) -> tuple[torch.Tensor, torch.Tensor]:  # (α(t), σ(t)), float64
        raise NotImplementedError

    def f_g2(self, t) -> tuple[torch.Tensor, torch.Tensor]:  # drift coefficient f(t), g(t)²
        raise NotImplementedError

    def sde(self, x: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
        """(drift f(t) x, diffusion g(t)) as in score_sde's ``sde_lib``; ``t`` a float."""
        f, g2 = self.f_g2(t)
        return float(f) * x, torch.as_tensor(float(g2) ** 0.5, dtype=x.dtype, device=x.device)

    def marginal_prob(self, x0: torch.Tensor, t) -> tuple[torch.Tensor, float]:
        """Mean α(t) x_0 and std σ(t) of p_t(x | x_0)."""
        a, s = self.marginal(t)
        return float(a) * x0, float(s)

    def prior_std(self) -> float:
        return float(self.marginal(self.T_end)[1])

    def prior_sampling(self, shape, generator: torch.Generator | None = None, device=None,
                       dtype=torch.float32) -> torch.Tensor:
        """x_T ~ N(0, σ(T)² I): ≈ N(0, I) for VP and sub-VP, N(0, σ_max² I) for VE."""
        device = torch.device(device) if device is not None else (generator.device if generator is not None else torch.device("cpu"))
        return self.prior_std() * torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)

    def prior_logp(self, x: torch.Tensor) -> torch.Tensor:
        """log N(x; 0, σ(T)² I) per sample (B,)."""
        s = self.prior_std()
        d = x[0].numel()
        return -0.5 * (x.flatten(1).double() ** 2).sum(1) / s**2 - d * (math.log(s) + 0.5 * math.log(2 * math.pi))

    # --- what the samplers use ------------------------------------------------------------------
    def default_times(self, steps: int, spacing: str = "linspace") -> list[float]:
        """``steps`` times from T_end down to t_min: uniform in λ = log α/σ for ``spacing="logsnr"``
        (DPM-Solver's choice), else uniform in t (``leading``/``trailing``/``linspace`` all mean that here:
        they are conventions for integer training indices)."""
        if steps < 1:
            raise ValueError(f"steps={steps} must be >= 1")
        if steps == 1:
            return [self.T_end]
        if spacing == "logsnr":
            lam = torch.linspace(float(self.lambda_(self.T_end)), float(self.lambda_(self.t_min)), steps, dtype=torch.float64)
            ts = self.time_of_sigmabar(torch.exp(-lam))
            ts[0], ts[-1] = self.T_end, self.t_min
            return ts.tolist()
        return torch.linspace(self.T_end, self.t_min, steps, dtype=torch.float64).tolist()

    def check_times(self, times) -> list[float]:
        ts = [float(v) for v in torch.as_tensor(times, dtype=torch.float64).flatten().tolist()]
        if not ts or any(a <= b for a, b in zip(ts, ts[1:])) or ts[0] > self.T_end or ts[-1] <= 0:
            raise ValueError(f"timesteps must be strictly descending times in (0, {self.T_end}], got {ts[:4]}…")
        return ts

    def model_time(self, t: float, batch: int, device) -> torch.Tensor:
        return torch.full((batch,), float(t), device=device, dtype=torch.float32)

    def increments(self, t: float, s: float) -> tuple[float, float]:
        """(∫_s^t f, ∫_s^t g²) over one reverse step t -> s, Euler's left-point rule: f(t)h, g(t)²h."""
        f, g2 = self.f_g2(t)
        h = t - s
        return float(f) * h, float(g2) * h

    def lambda_(self, t) -> torch.Tensor:
        """λ(t) = log α(t)/σ(t) (half the log-SNR), decreasing in t."""
        a, s = self.marginal(t)
        return torch.log(a) - torch.log(s)

    def time_of_sigmabar(self, sbar: torch.Tensor) -> torch.Tensor:
        """Inverse of σ̄(t) = σ(t)/α(t), by bisection (σ̄ is increasing in t)."""
        sbar = _f64(sbar)
        lo, hi = torch.zeros_like(sbar), torch.full_like(sbar, self.T_end)
        for _ in range(60):
            mid = (lo + hi) / 2
            a, s = self.marginal(mid)
            up = s / a < sbar
            lo, hi = torch.where(up, mid, lo), torch.where(up, hi, mid)
        return (lo + hi) / 2


class VPSDE(_Process):
    """Variance preserving: dx = -½β(t)x dt + √β(t) dw. DDPM's linear schedule is its discretisation
    with β_i = β(t_i)/T (β_min = 0.1, β_max = 20 <-> 1e-4, 0.02 at T = 1000)."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3):
        self.beta_min, self.beta_max, self.t_min = beta_min, beta_max, t_min

    def beta(self, t) -> torch.Tensor:
        return self.beta_min + _f64(t) * (self.beta_max - self.beta_min)

    def marginal(self, t):
        return vp_marginal(_f64(t), self.beta_min, self.beta_max)

    def f_g2(self, t):
        b = self.beta(t)
        return -0.5 * b, b

    def __repr__(self):
        return f"VPSDE(beta_min={self.beta_min}, beta_max={self.beta_max})"


class SubVPSDE(VPSDE):
    """Sub-VP: same drift and mean as VP, g² = β(t)(1 - e^{-2∫β}), σ(t) = 1 - α(t)² (<= VP's σ²)."""

    def marginal(self, t):
        a, _ = vp_marginal(_f64(t), self.beta_min, self.beta_max)
        return a, 1.0 - a**2

    def f_g2(self, t):
        b = self.beta(t)
        a, _ = vp_marginal(_f64(t), self.beta_min, self.beta_max)
        return -0.5 * b, b * (1.0 - a**4)

    def __repr__(self):
        return f"SubVPSDE(beta_min={self.beta_min}, beta_max={self.beta_max})"


class VESDE(_Process):
    """Variance exploding (SMLD): dx = σ(t)√(2 log(σ_max/σ_min)) dw; α = 1, σ(t) = σ_min(σ_max/σ_min)^t.
    (The seed post writes g = √(σ(t)·2 log(σ_max/σ_min)), forgetting to square σ.)"""

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, t_min: float = 1e-5):
        self.sigma_min, self.sigma_max, self.t_min = sigma_min, sigma_max, t_min

    def marginal(self, t):
        s = ve_sigma(_f64(t), self.sigma_min, self.sigma_max)
        return torch.ones_like(s), s

    def f_g2(self, t):
        s = ve_sigma(_f64(t), self.sigma_min, self.sigma_max)
        return torch.zeros_like(s), 2 * s**2 * math.log(self.sigma_max / self.sigma_min)

    def time_of_sigmabar(self, sbar):
        return torch.log(_f64(sbar) / self.sigma_min) / math.log(self.sigma_max / self.sigma_min)

    def __repr__(self):
        return f"VESDE(sigma_min={self.sigma_min}, sigma_max={self.sigma_max})"


class DiscreteVP(_Process):
    """A DDPM :class:`Schedule` as a process in index time u ∈ [0, T-1]; u = -1 is clean data (ᾱ = 1).

    log ᾱ is interpolated linearly between integer indices (exact at integers). The SDE increments
    over a step u -> s are the exact integrals of the discrete chain: ∫f = ½ log(ᾱ_u/ᾱ_s),
    ∫g² = (1-ᾱ_u) - (ᾱ_u/ᾱ_s)(1-ᾱ_s), which is β_u for s = u-1 (so Euler–Maruyama on all T steps is
    DDPM's chain up to O(β²)).
    """

    continuous = False
    clean_time = -1

    def __init__(self, schedule: Schedule):
        self.schedule = schedule
        self.T_end = schedule.T - 1
        self.t_min = 0
        self._log_ac = torch.cat([torch.zeros(1, dtype=torch.float64), torch.log(schedule.alphas_cumprod)])  # index u+1

    def alpha_bar(self, u) -> torch.Tensor:
        u = _f64(u).clamp(-1, self.T_end) + 1  # position in _log_ac
        lo = u.floor().long().clamp(max=len(self._log_ac) - 2)
        w = u - lo
        return torch.exp(self._log_ac[lo] * (1 - w) + self._log_ac[lo + 1] * w)

    def marginal(self, u):
        ac = self.alpha_bar(u)
        return ac.sqrt(), (1 - ac).sqrt()

    def default_times(self, steps: int, spacing: str = "leading") -> list[int]:
        return make_timesteps(self.schedule.T, steps, spacing).tolist()

    def check_times(self, times) -> list[int]:
        ts = [int(v) for v in torch.as_tensor(times).flatten().tolist()]
        if not ts or any(a <= b for a, b in zip(ts, ts[1:])) or ts[0] >= self.schedule.T or ts[-1] < 0:
            raise ValueError(f"timesteps must be strictly descending indices in [0, {self.schedule.T}), got {ts[:5]}…")
        return ts

    def model_time(self, t, batch: int, device) -> torch.Tensor:
        if float(t) != int(t):  # only the adaptive solver and likelihood visit fractional indices
            return torch.full((batch,), float(t), device=device, dtype=torch.float32)
        return torch.full((batch,), int(t), device=device, dtype=torch.long)

    def increments(self, t, s):
        at, as_ = float(self.alpha_bar(t)), float(self.alpha_bar(s))
        return 0.5 * math.log(at / as_), (1 - at) - (at / as_) * (1 - as_)

    def f_g2(self, u):  # per unit of index time: β(u) ≈ -d log ᾱ/du
        u = _f64(u)
        b = -(torch.log(self.alpha_bar(u + 0.5)) - torch.log(self.alpha_bar(u - 0.5)))
        return -0.5 * b, b

    def time_of_sigmabar(self, sbar):
        # log σ̄² = log(1-ᾱ) - log ᾱ is increasing in u; invert the piecewise-linear log ᾱ table
        target = -torch.log1p(_f64(sbar) ** 2)  # log ᾱ = -log(1 + σ̄²)
        table = self._log_ac.flip(0)  # increasing: log ᾱ_{T-1} … log ᾱ_{-1} = 0
        idx = torch.searchsorted(table, target).clamp(1, len(table) - 1)
        lo, hi = table[idx - 1], table[idx]
        w = (target - lo) / (hi - lo)
        pos = (idx - 1) + w  # position in flipped table
        return (len(table) - 1 - pos) - 1

    def __repr__(self):
        return f"DiscreteVP({self.schedule.name}, T={self.schedule.T})"


def as_process(schedule) -> _Process:
    """A :class:`Schedule` -> :class:`DiscreteVP`; a VP/sub-VP/VE SDE is returned as is."""
    if isinstance(schedule, Schedule):
        return DiscreteVP(schedule)
    if isinstance(schedule, _Process):
        return schedule
    raise TypeError(f"expected a ldmcourse.schedules.Schedule or an SDE from ldmcourse.sde, got {type(schedule).__name__}")


SDES = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE}

__all__ = ["score_from_eps", "eps_from_score", "VPSDE", "SubVPSDE", "VESDE", "DiscreteVP", "as_process", "SDES"]
