"""Flow matching and rectified flow (Lipman et al. 2023; Liu et al. 2022; Esser et al. 2024).

t = 0 is data, t = 1 is noise (the course's, SD3's and diffusers' convention; ``flow_matching`` uses t' = 1 - t).

- :mod:`.paths`: Gaussian paths x_t = α_t x_0 + σ_t ε with velocity target u_t = α'_t x_0 + σ'_t ε —
  the linear / rectified-flow path and the course's VP diffusions — each also a process the
  ε-samplers of :mod:`ldmcourse.samplers` run on; the exact velocity of a Gaussian mixture.
- :mod:`.loss`: the flow-matching loss, uniform and logit-normal t.
- :mod:`.sampling`: Euler, midpoint, Heun on any grid; velocity ↔ ε-model adapters
  (classifier-free guidance of a velocity model: :func:`ldmcourse.guidance.guided_velocity`).
- :mod:`.reflow`: (noise, sample) pairs, reflow, one-step distillation, straightness.

The velocity ↔ ε ↔ x₀ ↔ score conversions live in :mod:`ldmcourse.conversions`. The package is a process
(tests/test_layering.py): it imports no network and no wiring; ``ldmcourse.recipes.flow`` joins it to the U-Net.
"""

from .loss import T_SAMPLINGS, flow_loss, sample_t
from .paths import PATHS, GaussianPath, LinearPath, ProcessPath, make_path, mixture_velocity
from .reflow import fit_pairs, fresh_noise, generate_pairs, reflow_loss, straightness
from .sampling import (FLOW_SAMPLERS, NFE_PER_STEP, check_times, eps_from_velocity, euler, get_flow_sampler, heun,
                       midpoint, time_grid, velocity_from_eps)

__all__ = ["T_SAMPLINGS", "flow_loss", "sample_t", "PATHS", "GaussianPath", "LinearPath", "ProcessPath", "make_path",
           "mixture_velocity", "fit_pairs", "fresh_noise", "generate_pairs", "reflow_loss", "straightness", "FLOW_SAMPLERS",
           "NFE_PER_STEP", "check_times", "eps_from_velocity", "euler", "get_flow_sampler", "heun",
           "midpoint", "time_grid", "velocity_from_eps"]
