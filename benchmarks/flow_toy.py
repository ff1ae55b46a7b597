"""Flow matching on the analytic 2-D mixture: solver orders, parity, and reflow's straightening (issue 16).

    OMP_NUM_THREADS=1 python benchmarks/flow_toy.py --seeds 3 --out benchmarks/results/flow_toy_cpu.json

1. Orders: the exact marginal velocity of a 3-component mixture (``flow.mixture_velocity``), integrated
   from N(0, I) at t = 1 by Euler / midpoint / Heun on 8 … 128 uniform steps; error = mean ‖x - x_ref‖
   against Heun on 2048 steps; order = log2 of successive error ratios.
2. Parity (max |difference|): flow_matching's ODESolver (t' = 1 - t, velocity -v) in float64; diffusers'
   FlowMatchEulerDiscreteScheduler in float32; DDIM on the linear path vs Euler on the velocity (float64).
3. Reflow: two modes at ±1.5 (std 0.2); a 3-layer MLP trained for ``--steps`` on data (1-rectified flow),
   then ``--reflow-steps`` on 4096 of its own (sample, noise) pairs (16 Heun steps); straightness S
   (Liu et al. 2022 eq. 5, per dimension, Euler on 100 steps) of both, few-step Euler error against
   their own 100-step solutions, and a one-step distilled model's error against the pairs.
Prints one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import time

import torch
from torch import nn

from ldmcourse import flow
from ldmcourse.analytic import GaussianMixture


class MLP(nn.Module):
    def __init__(self, d=2, h=64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d + 1, h), nn.SiLU(), nn.Linear(h, h), nn.SiLU(), nn.Linear(h, h), nn.SiLU(), nn.Linear(h, d))

    def forward(self, x, t):
        return self.net(torch.cat([x, t[:, None].to(x.dtype)], 1))


def orders() -> dict:
    mix = GaussianMixture(torch.tensor([[-1.0, 0.5], [1.0, -0.5], [0.3, 1.2]]), torch.tensor([0.3, 0.4, 0.25]),
                          torch.tensor([1.0, 2.0, 1.5]))
    v = flow.mixture_velocity(mix, "linear")
    z = torch.randn(256, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = flow.heun(v, z, flow.time_grid(2048))
    out = {}
    ns = (8, 16, 32, 64, 128)
    for name, fn in flow.FLOW_SAMPLERS.items():
        errs = [float((fn(v, z, flow.time_grid(n)) - ref).norm(dim=1).mean()) for n in ns]
        out[name] = {"steps": list(ns), "error": errs, "order": [math.log2(a / b) for a, b in zip(errs, errs[1:])]}
    return out


def parity() -> dict:
    from ldmcourse.samplers import ddim

    mix = GaussianMixture(torch.tensor([[-1.0, 0.5], [1.0, -0.5]]), torch.tensor([0.3, 0.4]))
    v = flow.mixture_velocity(mix, "linear")
    z = torch.randn(256, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    res = {}
    try:
        from flow_matching.solver import ODESolver

        theirs = ODESolver(velocity_model=lambda x, t: -v(x, (1 - t).expand(x.shape[0])))
        times = flow.time_grid(16, shift=3.0)
        for fn, method in ((flow.euler, "euler"), (flow.midpoint, "midpoint"), (flow.heun, "heun2")):
            ref = theirs.sample(x_init=z, step_size=None, method=method, time_grid=1 - torch.tensor(times, dtype=torch.float64))
            res[f"flow_matching_{method}_float64"] = float((fn(v, z, times) - ref).abs().max())
    except ImportError:
        res["flow_matching"] = "not installed"
    try:
        from diffusers import FlowMatchEulerDiscreteScheduler

        sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
        sched.set_timesteps(20)
        x = z32 = z.float()
        for ts in sched.timesteps:
            x = sched.step(v(x.double(), torch.full((256,), float(ts) / 1000)).float(), ts, x).prev_sample
        res["diffusers_flow_match_euler_float32"] = float((flow.euler(lambda a, t: v(a.double(), t).float(), z32, sched.sigmas.tolist()) - x).abs().max())
    except ImportError:
        res["diffusers"] = "not installed"
    path = flow.LinearPath()
    ts = flow.time_grid(16, t_max=path.T_end)[:-1]
    res["ddim_vs_euler_linear_path_float64"] = float((ddim(flow.eps_from_velocity(v, path), z, path, timesteps=ts)
                                                      - flow.euler(v, z, ts + [0.0])).abs().max())
    return res


def reflow(seed: int, steps: int, reflow_steps: int) -> dict:
    mix = GaussianMixture(torch.tensor([[-1.5, 0.0], [1.5, 0.0]]), torch.tensor([0.2, 0.2]))
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = MLP()
    data = mix.sample(8192, generator=g)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(steps):
        loss, _ = flow.flow_loss(model, data[torch.randint(0, len(data), (256,), generator=g)], g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    z_test = torch.randn(1024, 2, generator=torch.Generator().manual_seed(1000 + seed))
    x, z = flow.generate_pairs(model, torch.randn(4096, 2, generator=g), steps=16)
    rf2 = copy.deepcopy(model)
    flow.fit_pairs(rf2, x, z, steps=reflow_steps, lr=1e-3, batch_size=256, generator=g)
    student = copy.deepcopy(rf2)
    flow.fit_pairs(student, x, z, steps=reflow_steps, lr=1e-3, batch_size=256, generator=g, one_step=True)

    def few_step(m):
        fine = flow.euler(m, z_test, flow.time_grid(100))
        return {n: float((flow.euler(m, z_test, flow.time_grid(n)) - fine).norm(dim=1).mean()) for n in (1, 2, 4)}

    exact = flow.mixture_velocity(mix, "linear")
    return {
        "seed": seed,
        "straightness_exact_1rf": flow.straightness(exact, z_test.double()),
        "straightness_1rf": flow.straightness(model, z_test), "straightness_2rf": flow.straightness(rf2, z_test),
        "euler_error_vs_100_steps_1rf": few_step(model), "euler_error_vs_100_steps_2rf": few_step(rf2),
        "one_step_error_vs_pairs_2rf": float((flow.euler(rf2, z[:1024], [1.0, 0.0]) - x[:1024]).norm(dim=1).mean()),
        "one_step_error_vs_pairs_distilled": float((flow.euler(student, z[:1024], [1.0, 0.0]) - x[:1024]).norm(dim=1).mean()),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--reflow-steps", type=int, default=1000)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    t0 = time.perf_counter()
    res = {"orders": orders(), "parity_max_abs_diff": parity(),
           "reflow": [reflow(s, a.steps, a.reflow_steps) for s in range(a.seeds)],
           "seconds": round(time.perf_counter() - t0, 1), "loadavg": os.getloadavg(), "threads": torch.get_num_threads()}
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=2)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
