"""Gaussian probability paths x_t = α_t x_0 + σ_t ε (t = 0 data, t = 1 noise) and their velocities.

Convention: t = 0 is data and t = 1 is noise, as in the course's diffusion, Stable Diffusion 3 and
diffusers' ``FlowMatchEulerDiscreteScheduler``. (facebookresearch's ``flow_matching`` runs the other
way, t' = 1 - t: its x_1 is our data, its x_0 our noise and its velocity is minus ours.)

For a data point x_0 and noise ε ~ N(0, I) the path moves along

    x_t = α_t x_0 + σ_t ε,          u_t(x_t | x_0, ε) = α'_t x_0 + σ'_t ε        (conditional velocity)

and the *marginal* velocity u_t(x) = E[u_t | x_t = x] generates the marginals p_t: integrating
dx/dt = u_t(x) from t = 1 (x ~ N(0, I)) down to t = 0 gives data (Lipman et al. 2023, Thm. 1;
Liu et al. 2022). Flow matching regresses a network on u_t(x_t | x_0, ε) (:mod:`.loss`).

- :class:`LinearPath`: α = 1 - t, σ = t, u = ε - x_0 (rectified flow, Liu et al. 2022; the
  "conditional OT" path of Lipman et al. 2023 with σ_min = 0; Stable Diffusion 3).
- :class:`ProcessPath`: the marginals of one of the course's diffusions (VP SDE, or a discrete
  DDPM schedule mapped to t = (u + 1)/T) read as a path; α', σ' by automatic differentiation.
  On the VP SDE the marginal velocity is the probability-flow ODE's drift (Song et al. 2021, eq. 13).

Every path is also a process of :mod:`ldmcourse.sde` (it subclasses ``_Process``: ``marginal``,
``f_g2``, ``default_times``, …), so the ε-samplers of :mod:`ldmcourse.samplers` (DDIM, DPM-Solver,
Heun in σ̄, …) run on it given an ε-model (:func:`ldmcourse.flow.eps_from_velocity`). Those samplers
divide by α, so as a process the linear path stops at ``T_end = 1 - 1e-3``; the velocity samplers of
:mod:`.sampling` run to t = 1 exactly.
"""

from __future__ import annotations

import torch

from ..conversions import bcast
from ..sde import DiscreteVP, VPSDE, _f64, _Process, as_process


class GaussianPath(_Process):
    """x_t = α_t x_0 + σ_t ε on t ∈ [0, 1]; subclasses define :meth:`coefficients`.

    ``t_range``: where the velocity is finite and the model is trained and sampled (flow side).
    ``T_end``/``t_min``: the range the ε-samplers of :mod:`ldmcourse.samplers` use (α > 0, σ > 0).
    """

    name = "gaussian"
    t_range: tuple[float, float] = (0.0, 1.0)

    def coefficients(self, t) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(α_t, σ_t, α'_t, σ'_t), float64, same shape as t."""
        raise NotImplementedError

    def coefficients_like(self, t, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The four coefficients at per-sample times t (B,) (or one float), broadcast against x, in x's dtype."""
        t = _f64(t).cpu()
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        return tuple(bcast(c, x) for c in self.coefficients(t))  # each (B,) -> (B, 1, ..., 1)

    def sample(self, x0: torch.Tensor, eps: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_t, u_t): the point on the conditional path and the velocity target at times t (B,).

            x_t = α_t x_0 + σ_t ε,   u_t = α'_t x_0 + σ'_t ε
        """
        a, s, da, ds = self.coefficients_like(t, x0)
        return a * x0 + s * eps, da * x0 + ds * eps

    def network_time(self, t: torch.Tensor) -> torch.Tensor:
        """The time an ε-model trained on the underlying process expects (path time, unless overridden)."""
        return t

    # --- the process interface of ldmcourse.sde (what the ε-samplers use) --------------------------
    def marginal(self, t):
        a, s, _, _ = self.coefficients(t)
        return a, s

    def model_time(self, t: float, batch: int, device) -> torch.Tensor:
        """Path times in float64 (the adapters cast to the model's dtype): exact coefficients near α = 0."""
        return torch.full((batch,), float(t), device=device, dtype=torch.float64)

    def f_g2(self, t):
        """Linear drift f = α'/α and g² = dσ²/dt - 2 f σ² of the SDE with these marginals (sde.py)."""
        a, s, da, ds = self.coefficients(t)
        f = da / a
        return f, 2 * s * ds - 2 * f * s**2

    def __repr__(self):
        return f"{type(self).__name__}()"


class LinearPath(GaussianPath):
    """Rectified flow / conditional OT: x_t = (1 - t) x_0 + t ε, u_t = ε - x_0 (constant along each line)."""

    name = "linear"
    T_end = 1.0 - 1e-3  # the ε-samplers divide by α = 1 - t
    t_min = 1e-3

    def coefficients(self, t):
        t = _f64(t)
        return 1 - t, t.clone(), -torch.ones_like(t), torch.ones_like(t)

    def time_of_sigmabar(self, sbar):  # σ̄ = t/(1 - t)  <=>  t = σ̄/(1 + σ̄)
        sbar = _f64(sbar)
        return sbar / (1 + sbar)


class ProcessPath(GaussianPath):
    """The marginals of a course diffusion as a path: a VP / sub-VP :mod:`~ldmcourse.sde` process in its
    own time t ∈ [0, 1], or a discrete :class:`~ldmcourse.schedules.Schedule` with index u = tT - 1
    (t = 0 is clean data, u = -1; t = 1 is u = T - 1). α'_t, σ'_t come from autograd through the
    process's ``marginal`` (exact for the VP SDE; piecewise constant for a schedule, whose log ᾱ is
    interpolated linearly between indices). σ'_t → ∞ as t → 0 (σ ~ √t), so ``t_range`` starts at
    ``t_min`` = 1e-3."""

    def __init__(self, process=None, t_min: float = 1e-3, name: str = "vp"):
        self.process = as_process(process if process is not None else VPSDE())
        if self.process.prior_std() > 1.5:
            raise ValueError(f"{self.process!r} is variance exploding (σ(1) = {self.process.prior_std():.3g}): "
                             "a flow path here needs α(1) ≈ 0, σ(1) ≈ 1 (use a VP process or a DDPM schedule)")
        self.discrete = isinstance(self.process, DiscreteVP)
        self.T = self.process.schedule.T if self.discrete else None
        self.t_min, self.T_end, self.t_range, self.name = t_min, 1.0, (t_min, 1.0), name

    def _inner(self, t: torch.Tensor) -> torch.Tensor:
        return t * self.T - 1 if self.discrete else t

    def coefficients(self, t):
        t = _f64(t).detach().clone().requires_grad_(True)
        with torch.enable_grad():
            a, s = self.process.marginal(self._inner(t))
            da, = torch.autograd.grad(a.sum(), t, retain_graph=True)
            ds, = torch.autograd.grad(s.sum(), t)
        return a.detach(), s.detach(), da, ds

    def network_time(self, t: torch.Tensor) -> torch.Tensor:
        """Index u = tT - 1 (a LongTensor when integral, as the course's U-Net is trained) for a schedule."""
        if not self.discrete:
            return t
        u = t.double() * self.T - 1
        return u.round().long() if bool(((u - u.round()).abs() < 1e-4).all()) else u.float()

    def __repr__(self):
        return f"ProcessPath({self.process!r})"


def _cosine_path():
    from ..schedules import make_schedule

    return ProcessPath(make_schedule("cosine", 1000), name="cosine")


PATHS = {"linear": LinearPath, "vp": ProcessPath, "cosine": _cosine_path}


def make_path(name_or_path) -> GaussianPath:
    """``"linear"`` (rectified flow), ``"vp"`` (the VP SDE, β ∈ [0.1, 20]), ``"cosine"`` (the course's
    cosine DDPM schedule, T = 1000); a :class:`GaussianPath` passes through."""
    if isinstance(name_or_path, GaussianPath):
        return name_or_path
    if name_or_path not in PATHS:
        raise ValueError(f"unknown path {name_or_path!r}; choose one of {', '.join(PATHS)}")
    return PATHS[name_or_path]()


def mixture_velocity(mixture, path):
    """The exact marginal velocity of a :class:`~ldmcourse.analytic.GaussianMixture` on ``path``:

        u_t(x) = E[α'_t x_0 + σ'_t ε | x_t = x] = α'_t E[x_0 | x] + σ'_t E[ε | x]

    with both posterior means in closed form (defined at t = 1 and t = 0 too). Returns ``v(x, t)``
    for float times t (one per sample or one for all)."""
    path = make_path(path)

    def velocity(x: torch.Tensor, t) -> torch.Tensor:
        t = _f64(t).flatten().cpu()
        if t.numel() > 1 and bool((t != t[0]).any()):  # different times per sample: one at a time
            return torch.cat([velocity(x[i:i + 1], t[i]) for i in range(x.shape[0])])
        a, s, da, ds = (float(c) for c in path.coefficients(t[0]))
        return da * mixture.x0_mean(x, a, s) + ds * mixture.eps(x, a, s)

    velocity.mixture = mixture  # type: ignore[attr-defined]
    return velocity


__all__ = ["GaussianPath", "LinearPath", "ProcessPath", "PATHS", "make_path", "mixture_velocity"]
