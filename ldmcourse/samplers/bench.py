"""Measurements of the samplers on the analytic mixture (notebook 06, ``python -m ldmcourse.samplers.bench``).

- :func:`convergence_table`: error vs the exact ODE solution for several step counts -> measured order.
- :func:`nfe_to_error`: the smallest NFE at which a deterministic sampler's error drops below a target.
- :func:`step_overhead`: wall time per step beyond the model call (a free model: ε = 0.1·x).
- :func:`load_sweep`, :func:`sweep_table`: the committed result of ``benchmarks/sampler_sweep.py`` (sampler × steps
  on notebook 05's trained model, course FID at n = 1000 per cell), read by notebooks 06 and 07.
"""

from __future__ import annotations

import math
import time

import torch

from ..analytic import GaussianMixture, image_mixture, ode_reference
from ..sde import VPSDE
from . import SAMPLERS, CountCalls

ODE_SAMPLERS = ("ddim", "euler", "heun", "plms", "dpm_solver_1", "dpm_solver_2", "dpm_solver_3", "dpm_solver++_2m")


def reference_problem(mix: GaussianMixture | None = None, n: int = 4, seed: int = 11, sde=None):
    """(sde, x_T, exact x at t_min) for the VP SDE and the analytic mixture."""
    mix = mix or image_mixture((1, 4, 4), k=3, std=0.3)
    sde = sde or VPSDE()
    x_T = torch.randn(n, *mix.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    (a0, s0), (a1, s1) = [[float(v) for v in sde.marginal(t)] for t in (sde.T_end, sde.t_min)]
    return mix, sde, x_T, a1 * ode_reference(mix, x_T / a0, s0 / a0, s1 / a1)


def run_error(name, mix, sde, x_T, ref, steps, spacing="logsnr", **options):
    """(max abs error, NFE) of sampler ``name`` with ``steps`` on the reference problem."""
    model = CountCalls(mix.eps_model(sde))
    out = SAMPLERS[name](model, x_T, sde, steps=steps, spacing=spacing, final_step=False, **options)
    return float((out - ref).abs().max()), model.n


def convergence_table(names=ODE_SAMPLERS, steps=(12, 24, 48, 96, 192), problem=None) -> dict:
    """{name: {"steps", "nfe", "err", "order"}}; order = log2 of the error ratio of the last doubling."""
    mix, sde, x_T, ref = problem or reference_problem()
    out = {}
    for name in names:
        errs, nfes = zip(*[run_error(name, mix, sde, x_T, ref, n) for n in steps])
        out[name] = {"steps": list(steps), "nfe": list(nfes), "err": list(errs), "order": math.log2(errs[-2] / errs[-1])}
    return out


def nfe_to_error(target: float = 1e-2, names=ODE_SAMPLERS, max_steps: int = 2000, problem=None) -> dict:
    """{name: NFE} of the fewest steps reaching max error <= target (bisection on steps; None if not reached)."""
    mix, sde, x_T, ref = problem or reference_problem()
    result = {}
    for name in names:
        lo, hi = 2, 4
        while run_error(name, mix, sde, x_T, ref, hi)[0] > target:
            lo, hi = hi, hi * 2
            if hi > max_steps:
                break
        if hi > max_steps:
            result[name] = None
            continue
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if run_error(name, mix, sde, x_T, ref, mid)[0] <= target else (mid, hi)
        result[name] = run_error(name, mix, sde, x_T, ref, hi)[1]
    return result


def step_overhead(schedule, shape=(64, 1, 32, 32), steps: int = 50, repeats: int = 3, names=None, device="cpu") -> dict:
    """{name: microseconds per model call spent *outside* the model}, with a free model ε = 0.1·x."""
    names = names or [n for n in SAMPLERS if n != "adaptive"]
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(0), device=device)
    free = lambda x, t: 0.1 * x  # noqa: E731  (the model costs one multiply; the rest is the sampler)
    out = {}
    for name in names:
        best = math.inf
        for _ in range(repeats):
            model = CountCalls(free)
            t0 = time.perf_counter()
            SAMPLERS[name](model, x_T, schedule, steps=steps, generator=torch.Generator(device=device).manual_seed(0))
            if torch.cuda.is_available() and str(device).startswith("cuda"):
                torch.cuda.synchronize()
            best = min(best, (time.perf_counter() - t0) / model.n)
        out[name] = 1e6 * best
    return out


def load_sweep(path=None) -> dict:
    """The sampler sweep's JSON with ``"cell"`` {(label, steps): cell} and ``"samples"`` {(label, steps): uint8 (16, H, W)}
    added. ``path`` defaults to ``benchmarks/results/sampler_sweep_cpu.json`` of the checkout."""
    import json
    from pathlib import Path

    import numpy as np

    path = Path(path) if path is not None else Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "sampler_sweep_cpu.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `python benchmarks/sampler_sweep.py --profile cpu --out {path}` "
                                "(about an hour on 2 CPU cores)")
    res = json.loads(path.read_text())
    res["cell"] = {(c["sampler"], c["steps"]): c for c in res["cells"]}
    if res.get("fid_floor") is None and res["cells"]:  # a run still going: every cell measures the same floor
        res["fid_floor"] = res["cells"][0]["fid_floor"]
    pics = path.with_name(path.stem + "_samples.npz")
    res["samples"] = ({tuple((k.rsplit("|", 1)[0], int(k.rsplit("|", 1)[1]))): v for k, v in np.load(pics).items()}
                      if pics.exists() else {})
    return res


def sweep_table(res: dict, labels, steps=None) -> str:
    """A Markdown table: one row per sampler label, one column per step count; each cell "FID [95% CI] · NFE · s"
    (s: seconds to sample the sweep's n images on its machine); "–" where the sweep has no cell."""
    steps = steps or sorted({s for _, s in res["cell"]})
    head = "| sampler | " + " | ".join(f"{s} steps" for s in steps) + " |\n|---" + "|---" * len(steps) + "|\n"

    def fmt(c):
        return f"{c['fid']:.2f} [{c['fid_ci95'][0]:.2f}, {c['fid_ci95'][1]:.2f}] · {c['nfe']:.0f} · {c['sample_seconds']:.0f} s"

    rows = [f"| {lab} | " + " | ".join(fmt(res["cell"][lab, s]) if (lab, s) in res["cell"] else "–" for s in steps) + " |"
            for lab in labels]
    return head + "\n".join(rows)


def main():  # pragma: no cover - a benchmark, not a test
    from ..schedules import make_schedule

    torch.set_num_threads(1)
    conv = convergence_table()
    print("| sampler | " + " | ".join(f"err @ {n} steps" for n in conv["ddim"]["steps"]) + " | measured order |")
    print("|---" * (len(conv["ddim"]["steps"]) + 2) + "|")
    for name, row in conv.items():
        print(f"| {name} | " + " | ".join(f"{e:.2e}" for e in row["err"]) + f" | {row['order']:.2f} |")
    nfe = nfe_to_error(1e-2)
    over = step_overhead(make_schedule("linear", 1000))
    print("\n| sampler | NFE to max error 1e-2 | overhead per step (µs, 64×1×32×32, free model) |\n|---|---|---|")
    for name in over:
        print(f"| {name} | {nfe.get(name, '–')} | {over[name]:.0f} |")


if __name__ == "__main__":  # pragma: no cover
    main()
