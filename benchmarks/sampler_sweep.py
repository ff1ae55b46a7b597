"""Sampler x steps on a trained image model: course FID (n per cell, with the real-vs-real floor), NFE, wall time.

The model is notebook 05's pixel DDPM on Fashion-MNIST at 32x32 (the zoo's ``ddpm-fashion-mnist``, eps prediction,
cosine schedule); the FID features are the course classifier on Fashion-MNIST (``classifier-fashion-mnist``). Every
cell starts from the same x_T (one seed per sample, :func:`ldmcourse.samplers.sample_chunked`) and uses the model's
grid (``DiffusionConfig.spacing``); DDPM uses the model's variance and x0 clipping, the others their defaults.
Notebooks 06 (DDPM, DDIM, PLMS, DPM-Solver++, ODE-Heun, SDE-Euler, SDE-Heun) and 07 (Euler-Maruyama, predictor-corrector,
probability-flow ODE, adaptive steps) read the committed JSON.

    python benchmarks/sampler_sweep.py --profile cpu --n 1000 --budget-s 3000 \
        --out benchmarks/results/sampler_sweep_cpu.json

The first 8 samples of every cell go to ``<out>_samples.npz`` (uint8, key ``"label|steps"``).
Cells run cheapest first (every sampler at few steps, then more steps), and the JSON is rewritten after each cell,
so a run stopped by ``--budget-s`` (or killed) leaves a consistent table; rerunning with the same ``--out`` skips the
cells already measured (same profile, n, seed and model key) and goes on. Wall time is the sampling of the n images on
this machine (not the FID); the load average is recorded beside every cell.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from ldmcourse import zoo
from ldmcourse.classifier import load_classifier
from ldmcourse.data import load_dataset
from ldmcourse.metrics import extract_features, fid_report
from ldmcourse.profiles import get_profile
from ldmcourse.recipes import get_recipe

# label -> (SAMPLERS name, options); the labels of seed 001's table (DDPM, DDIM, SDE-Euler, SDE-Heun) and the rest
SAMPLERS = {
    "DDPM": ("ddpm", {}),
    "DDIM": ("ddim", {}),
    "PLMS": ("plms", {}),
    "DPM-Solver++(2M)": ("dpm_solver++_2m", {}),
    "ODE-Heun": ("heun", {}),
    "ODE-Euler (t)": ("euler", {"space": "t"}),
    "SDE-Euler": ("euler_maruyama", {}),
    "SDE-Heun": ("sde_heun", {}),
    "PC (EM + Langevin)": ("pc", {}),
}
CALLS_PER_STEP = {"heun": 2, "sde_heun": 2, "pc": 2}  # for the time estimate of a cell (others: 1; adaptive: its own)
# Controls for the high-NFE comparison: the model's DDPM clips x̂_0 to [-1, 1] (its recipe's default) and DDIM does not,
# so "DDPM beats DDIM at 100 steps" mixes stochasticity with clipping; these two cells swap the clipping
CONTROLS = {"DDIM, x̂₀ clipped": ("ddim", {"clip_x0": 1.0}), "DDPM, x̂₀ not clipped": ("ddpm", {"clip_x0": None})}
RUNS = {**SAMPLERS, **CONTROLS}  # every fixed-step cell's label -> (SAMPLERS name, options)
ADAPTIVE = {"adaptive rtol=1e-2": {"rtol": 1e-2, "atol": 1e-2}, "adaptive rtol=1e-3": {"rtol": 1e-3, "atol": 1e-3}}

# (label, steps) in the order they run: every sampler at 10, 20, 50 steps, the adaptive solver, then the longer
# chains of seed 001's table (DDPM, DDIM, SDE-Euler, SDE-Heun at 100, 250, 1000 steps) from the samplers the high-NFE
# question needs most (stochastic vs deterministic: DDPM, DDIM, SDE-Euler), then the other samplers at 100 (which
# complete the 100-step row), and last SDE-Heun at 250 (two calls a step) and the 1000-step chains
DEFAULT_STEPS = (10, 20, 50, 100)
LONG = {100: ("DDPM", "DDIM", "SDE-Euler"), 250: ("DDPM", "DDIM"), 1000: ("DDPM", "DDIM", "SDE-Euler")}
LATER = {100: ("SDE-Heun",), 250: ("SDE-Euler",)}
LAST = {250: ("SDE-Heun",)}


def plan(steps=DEFAULT_STEPS, long=LONG) -> list[tuple[str, int]]:
    cells = [(label, s) for s in steps[:3] for label in SAMPLERS]
    cells += [(label, 20) for label in ADAPTIVE]
    order = [(100, long.get(100, ())), (250, long.get(250, ())), (100, LATER[100] if long else ()),
             (250, LATER[250] if long else ())]
    for s, labels in order:
        cells += [(label, s) for label in labels if (label, s) not in cells]
    cells += [(label, s) for s in steps[3:] for label in SAMPLERS if (label, s) not in cells]
    cells += [(label, 100) for label in CONTROLS] if long else []
    for s, labels in (LAST.items() if long else ()):
        cells += [(label, s) for label in labels if (label, s) not in cells]
    cells += [(label, s) for label in long.get(1000, ()) for s in (1000,) if (label, s) not in cells]
    return cells


def weights_sha256(model: torch.nn.Module) -> str:
    """A digest of the weights: a resumed sweep must measure the same network, not only the same config
    (the zoo's key hashes the config; a retraining on another machine may or may not give the same weights)."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def same_samples(recipe, model, meta, pics: dict, args, clf, f_test, f_train, cells: list[dict], label: str = "DDIM",
                 steps: int = 10) -> dict:
    """On a resume: redraw one stored cell (same seed, n and batch size) and compare its first 8 samples with the npz,
    so the cells measured before and after are shown to come from the same sampling, not only the same weights; then
    score the redraw, whose FID must equal the stored cell's (to its 3 stored decimals), so the classifier's features and
    the real sets are the same too (the classifier is retrained per machine like the model)."""
    key = f"{label}|{steps}"
    if key not in pics:
        return {"cell": key, "max_abs_diff": None}
    name, opts = RUNS[label]
    x = recipe.sample(model, meta, args.n, torch.Generator().manual_seed(args.seed), torch.device("cpu"), sampler=name,
                      steps=steps, batch_size=args.batch_size, **opts)
    pic = ((x[:8, 0] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    diff = int(np.abs(pic.astype(int) - pics[key].astype(int)).max())
    if diff > 1:   # uint8 levels; 1 allows a rounding flip from another BLAS
        raise SystemExit(f"the stored {key} samples differ from a redraw by {diff} grey levels: this machine does not "
                         "reproduce the sweep so far; give another --out, or delete it to start again")
    stored = next(c for c in cells if (c["sampler"], c["steps"]) == (label, steps))   # in pics, so measured
    fid = round(fid_report(extract_features(clf, x, device=torch.device("cpu")), f_test, f_train, n_boot=2)["fid"], 3)
    if abs(fid - stored["fid"]) > 0.0015:
        raise SystemExit(f"the stored {key} cell scores FID {stored['fid']} and its redraw {fid}: the classifier's features or "
                         "the real sets differ on this machine; give another --out, or delete it to start again")
    return {"cell": key, "max_abs_diff": diff, "fid_redrawn": fid, "fid_stored": stored["fid"]}


class CallCounter:
    """Counts forward calls of a module (one per chunk per model evaluation)."""

    def __init__(self, module: torch.nn.Module):
        self.n = 0
        module.register_forward_hook(lambda *a: setattr(self, "n", self.n + 1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", default=None)
    p.add_argument("--n", type=int, default=1000, help="samples per cell")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-boot", type=int, default=50)
    p.add_argument("--budget-s", type=float, default=None,
                   help="start no cell that would end (estimated from the seconds per model call so far) after this many seconds")
    p.add_argument("--steps", type=int, nargs="+", default=list(DEFAULT_STEPS))
    p.add_argument("--no-long", action="store_true", help="skip the 250- and 1000-step chains")
    p.add_argument("--cells", nargs="+", default=None, metavar="LABEL@STEPS",
                   help="run only these planned cells (e.g. 'DDIM, x̂₀ clipped@100'); the others stay as they are")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    profile = get_profile(args.profile)
    device = torch.device("cpu")
    threads = torch.get_num_threads()

    model = zoo.get("ddpm-fashion-mnist", profile=profile, device=device, verbose=False).eval()
    rec = model.zoo
    meta = model.meta
    recipe = get_recipe(meta["kind"])
    clf, _ = load_classifier(str(zoo.path("classifier-fashion-mnist", profile)), device)
    test = load_dataset("fashion-mnist", "test", size=32, download=False)
    train = load_dataset("fashion-mnist", "train", size=32, download=False)
    f_test = extract_features(clf, test.tensors()[0], device=device)
    f_train = extract_features(clf, train.subset(args.n, torch.Generator().manual_seed(args.seed + 1)).tensors()[0], device=device)
    counter = CallCounter(model)

    key = {"profile": profile, "n": args.n, "seed": args.seed, "model_key": rec.get("key")}
    out = Path(args.out)
    result = json.loads(out.read_text()) if out.exists() else {}
    if result and {k: result.get(k) for k in key} != key:
        raise SystemExit(f"--out {out} holds a sweep of {({k: result.get(k) for k in key})}, this one is {key}: "
                         "give another --out, or delete it to start again")
    done = {(c["sampler"], c["steps"]) for c in result.get("cells", [])}
    pics_path = out.with_name(out.stem + "_samples.npz")  # the first 8 samples of every cell, uint8, for the notebooks
    pics = dict(np.load(pics_path)) if pics_path.exists() and done else {}
    cfg = recipe.config(meta["model_config"])
    sha = weights_sha256(model)
    old_model = result.get("model") if done else None
    if old_model and old_model.get("weights_sha256", sha) != sha:
        raise SystemExit(f"--out {out} was measured on other weights ({old_model['weights_sha256']}) than the zoo's "
                         f"{rec.get('entry', 'ddpm-fashion-mnist')} now ({sha}): give another --out, or delete it to start again")
    resumes = result.get("resumes", []) + ([{"date": datetime.date.today().isoformat(), "weights_sha256": sha,
                                              "zoo_train_seconds_here": round(rec.get("train_seconds", 0), 1),
                                              "same_samples": same_samples(recipe, model, meta, pics, args, clf, f_test, f_train,
                                                                            result["cells"])}] if done else [])
    result = {
        "what": __doc__.split("\n\n")[0], **key,
        "command": "python benchmarks/sampler_sweep.py " + " ".join(
            [f"--profile {profile}", f"--n {args.n}", f"--batch-size {args.batch_size}", f"--seed {args.seed}"]
            + ([f"--budget-s {args.budget_s:g}"] if args.budget_s else [])
            + ([f"--cells {' '.join(repr(c) for c in args.cells)}"] if args.cells else []) + [f"--out {args.out}"]),
        # the model as first measured (a resume keeps that record, after checking the weights are the same)
        "model": {**(old_model or {"zoo": "ddpm-fashion-mnist", "key": rec.get("key"), "steps": rec.get("steps"),
                  "train_seconds": round(rec.get("train_seconds", 0), 1), "schedule": cfg.schedule, "prediction": cfg.prediction,
                  "spacing": cfg.spacing, "ddpm_variance": cfg.variance, "ddpm_clip_x0": cfg.clip_x0,
                  "params": sum(q.numel() for q in model.parameters())}), "weights_sha256": sha},
        "resumes": resumes,
        "classifier": "classifier-fashion-mnist",
        "real": {"test_images": len(test), "train_images_for_floor": args.n},
        "machine": {"cpus": os.cpu_count(), "torch_threads": threads, "platform": platform.platform(), "device": "cpu"},
        "samplers": {**{k: {"name": v[0], "options": v[1]} for k, v in RUNS.items()},
                     **{k: {"name": "adaptive", "options": v} for k, v in ADAPTIVE.items()}},
        "dates": sorted(set(result.get("dates", []) + [datetime.date.today().isoformat()])),
        "cells": result.get("cells", []),
        "not_run": [],
    }

    cells = plan(tuple(args.steps), {} if args.no_long else LONG)
    t_start = time.perf_counter()
    for label, steps in cells:
        if (label, steps) in done:
            continue
        name, opts = RUNS.get(label) or ("adaptive", ADAPTIVE[label])
        # seconds per image-call so far, for the estimate of this cell
        timed = [c for c in result["cells"] if c["nfe"] > 0]
        per_call = sum(c["sample_seconds"] for c in timed) / max(sum(c["nfe"] * args.n for c in timed), 1)
        est = per_call * steps * CALLS_PER_STEP.get(name, 1) * args.n
        not_chosen = args.cells and f"{label}@{steps}" not in args.cells  # still planned, for a later run
        over_budget = args.budget_s is not None and time.perf_counter() - t_start + est > args.budget_s  # would end past it
        if not_chosen or over_budget:
            result["not_run"].append({"sampler": label, "steps": steps, "estimated_seconds": round(est)})
            continue
        load0 = os.getloadavg()
        counter.n = 0
        t0 = time.perf_counter()
        x = recipe.sample(model, meta, args.n, torch.Generator().manual_seed(args.seed), device, sampler=name, steps=steps,
                          batch_size=args.batch_size, **opts)
        sec = time.perf_counter() - t0
        chunks = -(-args.n // args.batch_size)
        rep = fid_report(extract_features(clf, x, device=device), f_test, f_train, n_boot=args.n_boot)
        cell = {"sampler": label, "steps": steps, "nfe": counter.n / chunks, "fid": round(rep["fid"], 3),
                "fid_ci95": [round(v, 3) for v in rep["fid_ci95"]], "kid": round(rep["kid"], 4), "fid_floor": round(rep["fid_floor"], 3),
                "sample_seconds": round(sec, 2), "ms_per_image": round(1000 * sec / args.n, 3),
                "pixel_std": round(float(x.std()), 4), "load_avg": [round(load0[0], 2), round(os.getloadavg()[0], 2)]}
        result["cells"].append(cell)
        pics[f"{label}|{steps}"] = ((x[:8, 0] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))
        np.savez_compressed(pics_path, **pics)
        print(json.dumps(cell), flush=True)
    result["fid_floor"] = result["cells"][0]["fid_floor"] if result["cells"] else None  # the same real sets in every cell
    result["total_sampling_seconds"] = round(sum(c["sample_seconds"] for c in result["cells"]), 1)
    out.write_text(json.dumps(result, indent=1))
    print(f"{len(result['cells'])} cells, {len(result['not_run'])} not run; sampling {result['total_sampling_seconds']} s")


if __name__ == "__main__":
    main()
