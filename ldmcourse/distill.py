"""Progressive distillation (Salimans & Ho 2022, "Progressive Distillation for Fast Sampling of
Diffusion Models", Algorithm 2), one round, on the discrete training schedule.

The teacher samples with deterministic DDIM (η = 0) on a grid of 2N steps; the student, initialised
with the teacher's weights, learns to make ONE DDIM step that lands where the teacher's TWO land.
The student's grid of N steps is every other point of the teacher's (:func:`halve_timesteps`), so
student step t -> t'' covers teacher steps t -> t' -> t''. With x_t = α_t x_0 + σ_t ε (α_t = √ᾱ_t,
σ_t = √(1-ᾱ_t); clean data is the extra point α = 1, σ = 0 after the last index):

    z_t   = α_t x + σ_t ε                                              x ~ data, ε ~ N(0, I)
    z_t'  = α_t' x̂_T(z_t, t)   + (σ_t' /σ_t ) (z_t  - α_t  x̂_T(z_t, t))    teacher DDIM step 1
    z_t'' = α_t'' x̂_T(z_t', t') + (σ_t''/σ_t') (z_t' - α_t' x̂_T(z_t', t'))  teacher DDIM step 2
    x̃     = (z_t'' - (σ_t''/σ_t) z_t) / (α_t'' - (σ_t''/σ_t) α_t)            Alg. 2's target
    L     = w(λ_t) ‖x̃ - x̂_S(z_t, t)‖²                                        w: truncated SNR

x̃ is the x̂_0 for which one student DDIM step from z_t lands exactly on z_t'' (solve
z_t'' = α_t'' x̃ + (σ_t''/σ_t)(z_t - α_t x̃) for x̃). At the last step t'' is clean data
(α'' = 1, σ'' = 0) and the formula gives x̃ = z_t'' itself, as in the paper.

Weighting (``weighting=``): ``"truncated_snr"`` is the paper's w = max(SNR_t, 1) on the x-space error
(= max(‖x - x̂‖², ‖ε - ε̂‖²), §4); ``"snr"`` is w = SNR_t, i.e. the plain ε-space MSE of an ε-student.
The paper notes that an ε-parameterised student is ill-suited to distillation near SNR = 0: there
x̂ = (z - σ ε̂)/α amplifies ε-errors by σ/α (≈ 2·10⁴ at the cosine schedule's t = 999), and the
truncated-SNR weight puts that whole amplification into the loss. Our course teachers predict ε,
so both weightings are offered. For the same reason the default grid is ``leading`` (DDIM's original
spacing, first point 1000 - 1000/2N, α ≈ 0.1 for the cosine schedule at 2N = 16): ``trailing`` starts at
t = T-1, where an ε-teacher's unclipped DDIM x̂_0 is amplified so much that the course's Fashion-MNIST
teacher gives 99.9 % saturated pixels at 8 and 16 steps (measured), leaving nothing sensible to distil.

``progressive_distillation_loss`` is a ``fit`` loss_fn (``functools.partial`` binds the teacher);
:func:`distill` wires it to :func:`ldmcourse.train.fit`. Sample the student with
``SAMPLERS["ddim"](eps, x_T, schedule, timesteps=halve_timesteps(teacher_ts))``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn

from . import conversions as conv
from .diffusion import q_sample, to_x0
from .samplers.grid import make_grid
from .schedules import SPACINGS, Schedule, make_timesteps

WEIGHTINGS = ("truncated_snr", "snr")

# fit sizes per profile for one round (the paper: lr 1e-4 ... 2e-4, no warm-up, 50k updates per round on
# CIFAR-10; ours: a few hundred updates on CPU). Used by `ldmcourse distill` and notebook 10.
SIZES = {
    "smoke": dict(steps=10, batch_size=8, lr=2e-4, warmup=0, log_every=5, ema_decay=None),
    "cpu": dict(steps=600, batch_size=32, lr=2e-4, warmup=0, log_every=50, ema_decay=0.99),
    "gpu": dict(steps=20_000, batch_size=128, lr=1e-4, warmup=0, log_every=500, ema_decay=0.999),
}


@dataclass
class DistillOptions:
    """The options of ``ldmcourse distill`` (flags generated from these fields); None: the profile's size."""

    steps: int = field(default=0, metadata={"required": True, "help": "the student's DDIM steps N (the teacher takes 2N)"})
    spacing: str = field(default="leading", metadata={
        "help": "the teacher's 2N-step grid (trailing starts at T-1, see ldmcourse.distill)"})
    weighting: str = field(default="truncated_snr", metadata={
        "help": "truncated_snr: the paper's max(SNR, 1) on the x-error; snr: the ε-space MSE"})
    train_steps: int | None = field(default=None, metadata={"help": "optimiser updates"})
    batch_size: int | None = None
    lr: float | None = None
    seed: int | None = None
    n_train: int | None = field(default=None, metadata={"help": "use a random subset of the teacher's training set"})

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"--steps {self.steps}: the student needs at least 1 step")
        if self.spacing not in SPACINGS:
            raise ValueError(f"--spacing {self.spacing!r}: choose one of {', '.join(SPACINGS)}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"--weighting {self.weighting!r}: choose one of {', '.join(WEIGHTINGS)}")
        for name in ("train_steps", "batch_size", "n_train"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} {getattr(self, name)} must be >= 1")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"--lr {self.lr} must be > 0")

    def fit_config(self, profile: str):
        """The FitConfig of one round: the profile's :data:`SIZES`, then these options."""
        from .train import FitConfig

        overrides = {k: v for k, v in (("steps", self.train_steps), ("batch_size", self.batch_size), ("lr", self.lr),
                                       ("seed", self.seed)) if v is not None}
        return FitConfig(**{**SIZES[profile], **overrides})


# ----------------------------------------------------------------------------------------------
# grids
# ----------------------------------------------------------------------------------------------

def teacher_timesteps(T: int, student_steps: int, spacing: str = "leading") -> torch.Tensor:
    """The teacher's grid of 2N steps for an N-step student: ``make_timesteps(T, 2N, spacing)``."""
    if student_steps < 1 or 2 * student_steps > T:
        raise ValueError(f"a student with {student_steps} steps needs a teacher grid of 2N = {2 * student_steps} "
                         f"steps in [1, T={T}]; choose 1 <= steps <= {T // 2}")
    return make_timesteps(T, 2 * student_steps, spacing)


def halve_timesteps(teacher_ts) -> torch.Tensor:
    """The student's grid: every other point of the teacher's, starting at the first (N = 2N/2 points).

    Student step k (point k -> k+1, or -> clean data after the last) covers teacher points 2k -> 2k+1 -> 2k+2.
    With ``trailing`` spacing and 2N dividing T this equals ``make_timesteps(T, N, "trailing")``.
    """
    ts = torch.as_tensor(teacher_ts).long().flatten()
    if len(ts) < 2 or len(ts) % 2:
        raise ValueError(f"the teacher's grid must have an even number (>= 2) of steps, got {len(ts)}")
    if bool((ts[1:] >= ts[:-1]).any()):
        raise ValueError(f"teacher timesteps must be strictly descending, got {ts.tolist()[:6]}...")
    return ts[0::2].clone()


def grids(T: int, student_steps: int, spacing: str = "leading", previous: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(teacher grid (2N,), student grid (N,)): the one place that decides a round's grids.

    ``previous``: the ``meta["distill"]`` of a teacher that is itself a distilled student (round 2, 3, ...):
    it has learnt ONE grid, its recorded ``timesteps``, so the new teacher grid is that one and N must be half
    of it. Otherwise the teacher grid is ``make_timesteps(T, 2N, spacing)``.
    """
    if previous is None:
        ts_teacher = teacher_timesteps(T, student_steps, spacing)
    else:
        ts_teacher = torch.as_tensor(previous["timesteps"]).long().flatten()
        if len(ts_teacher) % 2:
            raise ValueError(f"the teacher is a distilled {len(ts_teacher)}-step student: an odd grid cannot be halved")
        if len(ts_teacher) != 2 * student_steps:
            raise ValueError(f"the teacher is a distilled {len(ts_teacher)}-step student; a student of {student_steps} steps "
                             f"needs 2N = {2 * student_steps} (the next round halves its grid, so use --steps {len(ts_teacher) // 2})")
    return ts_teacher, halve_timesteps(ts_teacher)


def sampling_grid(meta: dict | None, steps: int | None) -> tuple[int | None, list[int] | None]:
    """(steps, timesteps) to sample a checkpoint with: a distilled student (``meta["distill"]``) at its own
    step count (the default when ``steps`` is None) is sampled on the grid it learnt; anything else on
    the sampler's grid (timesteps None)."""
    grid = (meta or {}).get("distill")
    if grid and steps in (None, grid["steps"]):
        return grid["steps"], list(grid["timesteps"])
    return steps, None


# ----------------------------------------------------------------------------------------------
# the target and the loss
# ----------------------------------------------------------------------------------------------

@torch.no_grad()
def distillation_target(teacher_eps: Callable, z_t: torch.Tensor, idx: torch.Tensor, schedule: Schedule,
                        teacher_ts) -> tuple[torch.Tensor, torch.Tensor]:
    """(x̃, z_t'') for student step ``idx`` (B,) of the grid ``halve_timesteps(teacher_ts)``, from z_t (B, ...).

    Two teacher DDIM steps 2k -> 2k+1 -> 2k+2 (point 2N is clean data), then Alg. 2's x̃. The algebra
    runs in z_t's dtype with float64 coefficients; pass float64 z_t for an exact check.
    """
    ts = torch.as_tensor(teacher_ts).long().to(z_t.device)
    grid = make_grid(schedule, None, ts, "leading", final_step=True)  # (α, σ) at the 2N points + clean data
    alpha, sigma = torch.tensor(grid.alpha, dtype=torch.float64), torch.tensor(grid.sigma, dtype=torch.float64)
    (a0, s0), (a1, s1), (a2, s2) = ((alpha[i.cpu()], sigma[i.cpu()]) for i in (2 * idx, 2 * idx + 1, 2 * idx + 2))  # (B,) each
    # step 1: t -> t'
    eps = teacher_eps(z_t, ts[2 * idx]).to(z_t.dtype)
    z_mid = conv.ddim_step(conv.x0_from_eps(z_t, eps, a0, s0), eps, a1, s1)
    # step 2: t' -> t'' (t' is always a real index: 2k+1 <= 2N-1)
    eps_mid = teacher_eps(z_mid, ts[2 * idx + 1]).to(z_t.dtype)
    z_2 = conv.ddim_step(conv.x0_from_eps(z_mid, eps_mid, a1, s1), eps_mid, a2, s2)
    # Alg. 2: the x̂_0 that takes z_t to z_t'' in ONE DDIM step (σ'' = 0 at clean data: x̃ = z_t'')
    ratio = conv.bcast(s2 / s0, z_t)
    x_tilde = (z_2 - ratio * z_t) / (conv.bcast(a2, z_t) - ratio * conv.bcast(a0, z_t))
    return x_tilde, z_2


def distillation_weight(weighting: str, snr: torch.Tensor) -> torch.Tensor:
    """w(λ_t) on the x-space error: ``truncated_snr`` max(SNR, 1) (the paper's, §4) or ``snr`` (= ε-space MSE)."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; choose one of {', '.join(WEIGHTINGS)}")
    return snr.clamp(min=1.0) if weighting == "truncated_snr" else snr


def progressive_distillation_loss(student: nn.Module, batch, generator: torch.Generator | None = None, *,
                                  teacher_eps: Callable, schedule: Schedule, teacher_timesteps,
                                  prediction: str = "eps", weighting: str = "truncated_snr",
                                  idx: torch.Tensor | None = None, noise: torch.Tensor | None = None):
    """One round of progressive distillation (Alg. 2) as a ``fit`` loss_fn::

        loss_fn = partial(progressive_distillation_loss, teacher_eps=as_eps_model(teacher, sched, "eps"),
                          schedule=sched, teacher_timesteps=teacher_timesteps(sched.T, 8))

    ``batch`` is ``(x, y)`` or ``x`` (labels are ignored: unconditional models only). Per sample a
    student step k ~ U{0..N-1} and ε ~ N(0, I) (from ``generator``), z_t = q_sample(x, t_k, ε); the
    student's output of type ``prediction`` becomes x̂_S with :func:`ldmcourse.diffusion.to_x0`.
    Returns (loss, {"loss", "mse_x0"}) with mse_x0 the unweighted ‖x̃ - x̂_S‖² per pixel.
    """
    if getattr(getattr(student, "config", None), "num_classes", None):
        raise ValueError("progressive distillation here is for unconditional models; this student is class-conditional")
    x = batch[0] if isinstance(batch, (tuple, list)) else batch
    ts_teacher = torch.as_tensor(teacher_timesteps).long().to(x.device)
    ts = halve_timesteps(ts_teacher)  # (N,) the student's grid
    B, N = x.shape[0], len(ts)
    if idx is None:
        idx = torch.randint(0, N, (B,), generator=generator, device=x.device)
    if noise is None:
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    t = ts[idx]  # (B,) training indices
    z_t = q_sample(x, t, schedule, noise)  # z_t = α_t x + σ_t ε
    x_tilde, _ = distillation_target(teacher_eps, z_t, idx, schedule, ts_teacher)
    x_student = to_x0(student(z_t, t).float(), prediction, z_t, t, schedule)  # x̂_S(z_t)
    per_sample = ((x_student - x_tilde) ** 2).flatten(1).mean(1)  # (B,)
    w = distillation_weight(weighting, schedule.snr[t.cpu()]).to(per_sample)
    total = (w * per_sample).mean()
    return total, {"loss": float(total.detach()), "mse_x0": float(per_sample.detach().mean())}


# ----------------------------------------------------------------------------------------------
# wiring
# ----------------------------------------------------------------------------------------------

def make_student(teacher: nn.Module) -> nn.Module:
    """A trainable copy of the teacher (the paper initialises the student with the teacher's weights)."""
    student = copy.deepcopy(teacher)
    student.requires_grad_(True).train()
    return student


def distill(teacher: nn.Module, data, fit_cfg, *, schedule: Schedule, student_steps: int, prediction: str = "eps",
            spacing: str = "leading", weighting: str = "truncated_snr", device="cpu", out_dir=None,
            meta: dict | None = None, callbacks=None, teacher_ts=None):
    """One round: an N-step student from ``teacher`` (frozen) sampling with 2N DDIM steps of ``spacing``.

    The grids come from :func:`grids`: a teacher that is itself a distilled student (its ``meta``
    has a ``"distill"`` entry) is distilled on the grid it learnt; ``teacher_ts`` forces a 2N-step grid.

    Returns (FitResult, student grid (N,)). ``meta`` (if given) is stored in the checkpoint with a
    ``"distill"`` entry recording both grids, so the student is sampled on the grid it learnt.
    """
    from functools import partial

    from .diffusion import as_eps_model
    from .train import fit

    previous = (meta or {}).get("distill") if teacher_ts is None else {"timesteps": list(teacher_ts)}
    ts_teacher, ts_student = grids(schedule.T, student_steps, spacing, previous)
    teacher = teacher.to(device).eval().requires_grad_(False)
    student = make_student(teacher)
    loss_fn = partial(progressive_distillation_loss, teacher_eps=as_eps_model(teacher, schedule, prediction),
                      schedule=schedule, teacher_timesteps=ts_teacher, prediction=prediction, weighting=weighting)
    meta = dict(meta or {})
    meta["distill"] = {"steps": student_steps, "timesteps": ts_student.tolist(), "teacher_timesteps": ts_teacher.tolist(),
                       "spacing": spacing if previous is None else "teacher's grid", "weighting": weighting,
                       "round": int((meta.get("distill") or {}).get("round", 0)) + 1}
    res = fit(student, loss_fn, data, fit_cfg, device=device, out_dir=out_dir, meta=meta, callbacks=callbacks)
    return res, ts_student


__all__ = ["WEIGHTINGS", "SIZES", "DistillOptions", "teacher_timesteps", "halve_timesteps", "grids", "sampling_grid", "distillation_target",
           "distillation_weight", "progressive_distillation_loss", "make_student", "distill"]
