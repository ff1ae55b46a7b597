"""FID against NFE in one latent space: rectified flow, the ε-model, reflow, distillation, t-sampling and paths (issue 16).

    flock /work/notes/cpu.lock env OMP_NUM_THREADS=2 LDMCOURSE_ZOO=/work/zoo \
        python benchmarks/flow_nfe.py --profile cpu --n 1000 --out benchmarks/results/flow_nfe_cpu.json

Every model is a zoo entry of the same profile, on the same first stage (kl-f4-mnist5k) with the same U-Net and
training budget: ``ldm-mnist5k`` (ε, DDPM linear schedule), ``rf-mnist5k`` (rectified flow, logit-normal t),
``rf-uniform-mnist5k`` (uniform t), ``fm-vp-mnist5k`` (flow matching on the VP path), ``rf2-mnist5k`` (reflow of
rf-mnist5k on 10,000 of its guided pairs) and ``rf2-1step-mnist5k`` (rf2 distilled to one step).

- Paired: every row draws its x_T from the same seed (one per sample, as ``sample_chunked`` draws them) and
  the same class-balanced labels (n/10 of each digit).
- Guidance: every class-conditional model samples at the fixed ``--guidance`` (3, ldm-mnist5k's default),
  except rf2 and rf2-1step, which learnt the guided map from pairs drawn at guidance 3 and sample at 1 (one
  network call per step instead of two; NFE counts ODE steps' velocity evaluations, as in the papers).
- NFE: Euler k steps = k; Heun k steps = 2k (k >= 1, so no Heun at NFE 1); DDIM = k; DPM-Solver++(2M) = k
  (multistep, one call per step); the ε-samplers use ``trailing`` spacing (the first step starts at t = T; the
  zoo default ``leading`` never visits t = T and at NFE 1 starts at t = 0).
- FID: the course classifier's features (``metrics.fid_report``) against the test set, bootstrap 95 % interval
  and the real-vs-real floor at the same n (training images). The paired difference FID(A) - FID(B) of two rows
  gets a paired bootstrap (the same resampled noise indices and real images for both rows).
- Lipman et al. 2023 (Table 1) style: an adaptive Dormand–Prince 5(4) solve (scipy RK45, rtol = atol = 1e-5, as
  they used) of the linear (OT) and the VP path models; its mean NFE per chunk of 250 and its FID.
Prints one JSON row per measurement and one JSON object as the last line (also written to ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

NFES = (1, 2, 4, 8, 16, 32)
# (row name, zoo entry, sampler, guided?, which NFEs)
ROWS = (
    ("rf euler", "rf-mnist5k", "euler", True, NFES),
    ("rf heun", "rf-mnist5k", "heun", True, tuple(k for k in NFES if k % 2 == 0)),
    ("eps ddim", "ldm-mnist5k", "ddim", True, NFES),
    ("eps dpm++2m", "ldm-mnist5k", "dpm_solver++_2m", True, NFES),
    ("rf2 euler", "rf2-mnist5k", "euler", False, NFES),
    ("rf2-1step", "rf2-1step-mnist5k", "euler", False, (1,)),
    ("rf-uniform euler", "rf-uniform-mnist5k", "euler", True, NFES),
    ("fm-vp euler", "fm-vp-mnist5k", "euler", True, NFES),
)
ADAPTIVE = (("OT (linear) path", "rf-mnist5k"), ("VP (diffusion) path", "fm-vp-mnist5k"))
NFE_PER_STEP = {"euler": 1, "heun": 2, "ddim": 1, "dpm_solver++_2m": 1}


def plan(nfes=NFES) -> list[dict]:
    """The (row, entry, sampler, steps, nfe) runs, in order."""
    return [{"row": r, "entry": e, "sampler": s, "guided": gd, "nfe": k, "steps": k // NFE_PER_STEP[s]}
            for r, e, s, gd, ks in ROWS for k in ks if k in nfes]


def paired_fid_diff(fa: torch.Tensor, fb: torch.Tensor, real: torch.Tensor, n_boot: int = 200, seed: int = 0,
                    level: float = 0.95) -> dict:
    """FID(a) - FID(b) for two generated feature sets of the same noise (row i of both from the same x_T and label),
    with a paired bootstrap: each draw resamples the indices once for both sets and the real set once, so the shared
    noise (and the upward bias of resampled repeats) cancels; the interval is shifted to the estimate as in
    ``metrics.bootstrap_ci``."""
    from ldmcourse.metrics import centred_interval, fid

    if fa.shape != fb.shape:
        raise ValueError(f"paired sets must have the same shape, got {tuple(fa.shape)} and {tuple(fb.shape)}")
    g = torch.Generator().manual_seed(seed)
    est = fid(fa, real) - fid(fb, real)
    vals = []
    for _ in range(n_boot):
        i = torch.randint(len(fa), (len(fa),), generator=g)
        j = torch.randint(len(real), (len(real),), generator=g)
        vals.append(fid(fa[i], real[j]) - fid(fb[i], real[j]))
    return {"diff": est, "ci95": list(centred_interval(vals, est, level)), "n_boot": n_boot}


def best(rows: list[dict], names: tuple[str, ...], nfe: int) -> dict | None:
    """The row of ``names`` with the lowest FID at ``nfe`` (None if none ran there)."""
    cands = [r for r in rows if r["row"] in names and r["nfe"] == nfe]
    return min(cands, key=lambda r: r["fid"]) if cands else None


def targets(rows: list[dict]) -> dict:
    """Issue 16's two targets on the rows: rf2 @2 <= the ε-model's best @4; rf2 @2 <= 1.5 x rf's best @32."""
    rf2 = best(rows, ("rf2 euler",), 2)
    eps4 = best(rows, ("eps ddim", "eps dpm++2m"), 4)
    rf32 = best(rows, ("rf euler", "rf heun"), 32)
    out = {}
    if rf2 and eps4:
        out["rf2@2 <= eps-best@4"] = {"rf2_fid": rf2["fid"], "eps_best_fid": eps4["fid"], "eps_best": eps4["row"],
                                      "met": rf2["fid"] <= eps4["fid"]}
    if rf2 and rf32:
        out["rf2@2 <= 1.5 x rf@32"] = {"rf2_fid": rf2["fid"], "rf_fid": rf32["fid"], "rf_best": rf32["row"],
                                       "ratio": rf2["fid"] / rf32["fid"], "met": rf2["fid"] <= 1.5 * rf32["fid"]}
    return out


@torch.no_grad()
def adaptive_solve(velocity, x_T: torch.Tensor, t_start: float, t_end: float, rtol: float = 1e-5,
                   atol: float = 1e-5) -> tuple[torch.Tensor, int]:
    """Dormand–Prince 5(4) (scipy's RK45) on dx/dt = v(x, t) from t_start to t_end for the whole batch at once
    (one step size for the batch, as torchdiffeq's dopri5 in Lipman et al.); returns x and the NFE."""
    from scipy.integrate import solve_ivp

    shape, dtype, device = x_T.shape, x_T.dtype, x_T.device

    def f(t, y):
        x = torch.from_numpy(y).view(shape).to(device, dtype)
        return velocity(x, torch.full((shape[0],), t, device=device, dtype=dtype)).double().flatten().cpu().numpy()

    sol = solve_ivp(f, (t_start, t_end), x_T.double().flatten().cpu().numpy(), method="RK45", rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"RK45 failed: {sol.message}")
    return torch.from_numpy(sol.y[:, -1]).view(shape).to(device, dtype), int(sol.nfev)


def main() -> None:
    from ldmcourse import zoo
    from ldmcourse.classifier import accuracy
    from ldmcourse.data import load_dataset
    from ldmcourse.flow import make_path
    from ldmcourse.metrics import extract_features, fid_report
    from ldmcourse.recipes import get_recipe
    from ldmcourse.recipes.flow import _cfg as flow_cfg, _prior, sample_with, velocity_model

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", default=None)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--nfe", type=int, nargs="+", default=list(NFES))
    p.add_argument("--rtol", type=float, default=1e-5)
    p.add_argument("--n-boot", type=int, default=200, help="paired-difference bootstrap draws")
    p.add_argument("--no-adaptive", action="store_true")
    p.add_argument("--skip", nargs="*", default=[], help="zoo entries to leave out (their rows are absent from the JSON)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    device, t_all = torch.device(args.device), time.perf_counter()

    runs = [r for r in plan(tuple(args.nfe)) if r["entry"] not in args.skip]
    adaptive = [(label, e) for label, e in ADAPTIVE if e not in args.skip and not args.no_adaptive]
    names = sorted({r["entry"] for r in runs} | {e for _, e in adaptive})
    models = {name: zoo.get(name, args.profile, device=device, verbose=False) for name in names}
    clf = zoo.get("classifier-mnist5k", args.profile, device=device, verbose=False)
    test = load_dataset("mnist5k", "test")
    x_test, _ = test.tensors()
    f_test = extract_features(clf, x_test, device=device)
    train = load_dataset("mnist5k", "train")
    x_floor, _ = train.subset(args.n, torch.Generator().manual_seed(args.seed)).tensors()
    f_floor = extract_features(clf, x_floor, device=device)
    y = torch.arange(args.n) % 10  # class-balanced

    def judge(x: torch.Tensor) -> tuple[dict, torch.Tensor]:
        f = extract_features(clf, x, device=device)
        rep = fid_report(f, f_test, f_floor, seed=args.seed)
        keep = {k: rep[k] for k in ("fid", "fid_ci95", "fid_floor", "n_gen", "n_real", "floor_n")}
        keep["class_agreement"] = float(accuracy(clf, x, y, device=device))
        return keep, f

    def sample(r: dict) -> torch.Tensor:
        m = models[r["entry"]]
        g = torch.Generator(device=device).manual_seed(args.seed)  # the same x_T for every row
        gd = args.guidance if r["guided"] else None
        if m.meta["kind"] == "flow":
            return sample_with(m, flow_cfg(m.meta), args.n, g, device, r["sampler"], r["steps"], args.batch_size, y=y, guidance=gd)
        return get_recipe(m.meta["kind"]).sample(m, m.meta, args.n, g, device, sampler=r["sampler"], steps=r["steps"],
                                                 batch_size=args.batch_size, guidance=gd, y=y, spacing="trailing")

    rows, feats = [], {}
    for r in runs:
        t0 = time.perf_counter()
        x = sample(r)
        secs = time.perf_counter() - t0
        rep, feats[(r["row"], r["nfe"])] = judge(x)
        row = {**r, **rep, "sample_seconds": round(secs, 2), "loadavg": [round(v, 2) for v in os.getloadavg()]}
        rows.append(row)
        print(json.dumps(row), flush=True)

    diffs = []
    for k in (2, 4, 8, 32):
        a, b = best(rows, ("rf euler", "rf heun"), k), best(rows, ("eps ddim", "eps dpm++2m"), k)
        if a and b:
            d = paired_fid_diff(feats[(a["row"], k)], feats[(b["row"], k)], f_test, args.n_boot, args.seed)
            diffs.append({"nfe": k, "rf": a["row"], "eps": b["row"], **d})
            print(json.dumps(diffs[-1]), flush=True)

    lipman = []
    for label, name in adaptive:
        m, t0 = models[name], time.perf_counter()
        cfg, path = flow_cfg(m.meta), make_path(flow_cfg(m.meta).path)
        g = torch.Generator(device=device).manual_seed(args.seed)
        x_T, xs, nfes = torch.stack(_prior(args.n, tuple(m.latent_shape), g, device)), [], []
        for a in range(0, args.n, args.batch_size):
            v = velocity_model(m, cfg, y[a:a + args.batch_size].to(device), args.guidance)
            z, nfe = adaptive_solve(v, x_T[a:a + args.batch_size], path.t_range[1], path.t_range[0], args.rtol, args.rtol)
            xs.append(m.decode(z).clamp(-1, 1).cpu())
            nfes.append(nfe)
        rep, _ = judge(torch.cat(xs))
        lipman.append({"path": label, "entry": name, "solver": f"RK45 (dopri5) rtol=atol={args.rtol:g}",
                       "nfe_mean": sum(nfes) / len(nfes), "nfe_per_chunk": nfes, **rep,
                       "sample_seconds": round(time.perf_counter() - t0, 2),
                       "loadavg": [round(v, 2) for v in os.getloadavg()]})
        print(json.dumps(lipman[-1]), flush=True)

    out = {"benchmark": "flow_nfe", "command": "python " + " ".join(sys.argv), "profile": args.profile, "n": args.n,
           "seed": args.seed, "guidance": args.guidance, "skipped": args.skip, "threads": torch.get_num_threads(),
           "models": {name: {k: (m.zoo or {}).get(k) for k in ("entry", "key", "steps", "train_seconds")}
                      for name, m in models.items()},
           "rows": rows, "paired_rf_minus_eps_best": diffs, "targets": targets(rows), "lipman_table1_style": lipman,
           "literature": "Lipman et al. 2023, Table 1 (CIFAR-10): FM w/ OT FID 6.35 at 142 NFE; FM w/ diffusion path 8.06 at 183 NFE",
           "wall_seconds": round(time.perf_counter() - t_all, 1), "loadavg_end": [round(v, 2) for v in os.getloadavg()]}
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(out, fh, indent=1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
