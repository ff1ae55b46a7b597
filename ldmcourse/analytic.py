"""A data distribution whose diffusion is known in closed form: a mixture of Gaussians.

If x_0 ~ Σ_k w_k N(μ_k, diag(v_k)) and x_t = α x_0 + σ ε, then x_t ~ Σ_k w_k N(α μ_k, diag(α² v_k + σ²)),
so the exact score and the exact (optimal) noise prediction are

    ∇ log p_t(x) = Σ_k r_k(x) · (-(x - α μ_k) / (α² v_k + σ²)),   r_k = posterior responsibility,
    ε*(x, t) = -σ ∇ log p_t(x)  (= E[ε | x_t = x]).

ε* depends on the time only through (α, σ), so the same mixture gives the exact ε-model for any
schedule or SDE (:meth:`GaussianMixture.eps_model`). Samplers run on ε* have no network error: what
is left is pure discretisation error, which is what the tests and notebooks 06/07 measure.
Works for any sample shape: 2-D points for plots, (C, H, W) "images" for tests.
"""

from __future__ import annotations

import math

import torch

from .sde import as_process


class GaussianMixture:
    """Σ_k w_k N(μ_k, diag(v_k)). ``means`` (K, *shape); ``stds`` (K,) or (K, *shape); ``weights`` (K,)."""

    def __init__(self, means: torch.Tensor, stds, weights: torch.Tensor | None = None):
        means = torch.as_tensor(means, dtype=torch.float64)
        K = means.shape[0]
        self.shape = tuple(means.shape[1:])
        self.means = means.reshape(K, -1)  # (K, D)
        stds = torch.as_tensor(stds, dtype=torch.float64)
        self.vars = (stds.reshape(K, -1) ** 2).expand_as(self.means).clone() if stds.ndim > 1 else (stds[:, None] ** 2).expand_as(self.means).clone()
        w = torch.ones(K, dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        if (self.vars <= 0).any() or (w <= 0).any():
            raise ValueError("mixture stds and weights must be positive")
        self.log_w = torch.log(w / w.sum())

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, n: int, generator: torch.Generator | None = None, dtype=torch.float32) -> torch.Tensor:
        """n samples (n, *shape) on the CPU."""
        k = torch.multinomial(self.log_w.exp(), n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return (self.means[k] + self.vars[k].sqrt() * z).reshape(n, *self.shape).to(dtype)

    def _components(self, x: torch.Tensor, alpha, sigma):
        """Per-component log-density (B, K) and (x - αμ_k)/v_k (B, K, D) of p_t at x."""
        xf = x.reshape(x.shape[0], -1).to(torch.float64)
        means, vars_ = self.means.to(xf.device), self.vars.to(xf.device)
        var = alpha**2 * vars_ + sigma**2  # (K, D)
        diff = xf[:, None, :] - alpha * means[None]  # (B, K, D)
        logp = -0.5 * ((diff**2 / var).sum(-1) + torch.log(2 * math.pi * var).sum(-1)[None])
        return logp + self.log_w.to(xf.device)[None], diff / var

    def log_prob(self, x: torch.Tensor, alpha: float = 1.0, sigma: float = 0.0) -> torch.Tensor:
        """log p_t(x) (B,) for the marginal at (α, σ); (1, 0) is the data density."""
        logp, _ = self._components(x, alpha, sigma)
        return torch.logsumexp(logp, 1)

    def score(self, x: torch.Tensor, alpha: float, sigma: float) -> torch.Tensor:
        """∇_x log p_t(x), same shape and dtype as x."""
        logp, d = self._components(x, alpha, sigma)
        r = torch.softmax(logp, 1)  # (B, K) responsibilities
        return (-(r[..., None] * d).sum(1)).reshape(x.shape).to(x.dtype)

    def eps(self, x: torch.Tensor, alpha: float, sigma: float) -> torch.Tensor:
        """ε*(x) = -σ ∇ log p_t(x): the best possible ε-prediction at noise level (α, σ)."""
        logp, d = self._components(x, alpha, sigma)
        r = torch.softmax(logp, 1)
        return (sigma * (r[..., None] * d).sum(1)).reshape(x.shape).to(x.dtype)

    def x0_mean(self, x: torch.Tensor, alpha: float, sigma: float) -> torch.Tensor:
        """E[x_0 | x_t = x] = Σ_k r_k (μ_k + α v_k (x - α μ_k)/(α² v_k + σ²)): the best x₀-prediction
        (defined at α = 0 too, where it is the data mean; used for the exact flow velocity)."""
        logp, d = self._components(x, alpha, sigma)
        r = torch.softmax(logp, 1)
        post = self.means.to(d.device)[None] + alpha * self.vars.to(d.device)[None] * d  # (B, K, D)
        return (r[..., None] * post).sum(1).reshape(x.shape).to(x.dtype)

    def eps_model(self, schedule, dtype=None):
        """The exact ε-model ``eps_model(x, t)`` for a discrete ``Schedule`` (t: LongTensor of indices;
        fractional float t is also accepted) or an SDE from :mod:`ldmcourse.sde` (t: float times)."""
        process = as_process(schedule)

        def eps_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            t = torch.as_tensor(t)
            if t.ndim and bool((t != t.flatten()[0]).any()):  # different times per sample: loop
                return torch.cat([eps_model(x[i:i + 1], t[i:i + 1]) for i in range(x.shape[0])])
            a, s = process.marginal(t.flatten()[0].double().cpu())
            out = self.eps(x, float(a), float(s))
            return out if dtype is None else out.to(dtype)

        eps_model.mixture = self  # type: ignore[attr-defined]
        return eps_model

    def moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact mean (D,) and covariance (D, D) of the data."""
        w = self.log_w.exp()
        mean = (w[:, None] * self.means).sum(0)
        d = self.means - mean
        cov = torch.diag((w[:, None] * self.vars).sum(0)) + (w[:, None, None] * d[:, :, None] * d[:, None, :]).sum(0)
        return mean, cov


def ring_mixture(k: int = 8, radius: float = 1.0, std: float = 0.1) -> GaussianMixture:
    """k equal Gaussians on a circle in 2-D (the classic toy; sharp modes make few-step samplers struggle)."""
    ang = torch.arange(k, dtype=torch.float64) * 2 * math.pi / k
    return GaussianMixture(torch.stack([radius * ang.cos(), radius * ang.sin()], 1), torch.full((k,), std))


def image_mixture(shape=(1, 8, 8), k: int = 3, std: float = 0.2, seed: int = 0) -> GaussianMixture:
    """k Gaussians in image space with random ±0.7 'template' means and unequal weights (for tests)."""
    g = torch.Generator().manual_seed(seed)
    means = 0.7 * torch.sign(torch.randn(k, *shape, generator=g, dtype=torch.float64))
    weights = torch.arange(1, k + 1, dtype=torch.float64)
    return GaussianMixture(means, torch.full((k,), std), weights)


def sliced_wasserstein(x: torch.Tensor, y: torch.Tensor, n_proj: int = 256, generator: torch.Generator | None = None) -> float:
    """Sliced 2-Wasserstein distance between two equal-size samples (N, ...) (random projections)."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"need equal sample sizes, got {x.shape[0]} and {y.shape[0]}")
    x, y = x.reshape(x.shape[0], -1).double().cpu(), y.reshape(y.shape[0], -1).double().cpu()
    dirs = torch.randn(x.shape[1], n_proj, generator=generator, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    px, _ = (x @ dirs).sort(0)
    py, _ = (y @ dirs).sort(0)
    return float(((px - py) ** 2).mean().sqrt())





def ode_reference(mixture: GaussianMixture, x_start: torch.Tensor, sbar_from: float, sbar_to: float,
                  rtol: float = 1e-10, atol: float = 1e-10) -> torch.Tensor:
    """The exact probability-flow ODE solution, by ``scipy.integrate.solve_ivp`` (DOP853, tight tolerance).

    In x̄ = x/α and σ̄ = σ/α the ODE of every VP / sub-VP / VE process is dx̄/dσ̄ = ε*(x̄; α=1, σ=σ̄)
    (ε* of the mixture at noise level σ̄ without scaling; Karras et al. eq. 4), so one reference
    serves all of them. ``x_start`` and the result are in x̄ (divide by / multiply with α yourself).
    """
    from scipy.integrate import solve_ivp

    shape = x_start.shape
    y0 = x_start.detach().double().cpu().reshape(-1).numpy()

    def rhs(s, y):
        x = torch.from_numpy(y).reshape(shape)
        return mixture.eps(x, 1.0, s).reshape(-1).numpy()

    sol = solve_ivp(rhs, (sbar_from, sbar_to), y0, method="DOP853", rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"reference ODE solve failed: {sol.message}")
    return torch.from_numpy(sol.y[:, -1]).reshape(shape)
__all__ = ["GaussianMixture", "ring_mixture", "image_mixture", "sliced_wasserstein", "ode_reference"]
