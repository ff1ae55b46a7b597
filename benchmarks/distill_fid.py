"""FID before and after one round of progressive distillation (issue 8's number).

    OMP_NUM_THREADS=1 python benchmarks/distill_fid.py --teacher runs/05_ddpm_cpu/checkpoint.pt \
        --student runs/10_distill8/checkpoint.pt --steps 8 --n 1000 --spacing leading

Samples ``n`` images with DDIM (η = 0) from the same noise for: the teacher at 2N steps, the teacher at
N steps (before) and each student at N steps (after; on its recorded grid, which for ``trailing``
spacing is the teacher's N-step grid), and reports the course FID/KID (``metrics.fid_report``: features
of the course classifier, bootstrap 95 % interval, real-vs-real floor at the same n) against the test
set, plus the mean squared distance of each N-step set to the teacher's 2N-step images from the same
noise (what distillation optimises). Prints one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from ldmcourse.classifier import load_classifier
from ldmcourse.cli import load_model
from ldmcourse.data import load_dataset
from ldmcourse.distill import halve_timesteps, teacher_timesteps
from ldmcourse.metrics import extract_features, fid_report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", required=True)
    p.add_argument("--student", action="append", default=[], help="distilled checkpoint(s) (repeatable)")
    p.add_argument("--steps", type=int, required=True, help="the student's N (the teacher also runs 2N)")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--n-real", type=int, default=None, help="test images to compare with (default all)")
    p.add_argument("--classifier", default=None, help="default runs/classifier-DATASET/checkpoint.pt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--spacing", default="leading", help="the teacher's 2N-step grid (as given to `ldmcourse distill`)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    device = torch.device(args.device)

    teacher, tmeta, recipe = load_model(args.teacher, device)
    clf_path = args.classifier or f"runs/classifier-{tmeta['dataset']}/checkpoint.pt"
    net, _ = load_classifier(clf_path, device)
    test = load_dataset(tmeta["dataset"], "test", size=tmeta["image_shape"][-1], download=False)
    if args.n_real:
        test = test.subset(args.n_real, torch.Generator().manual_seed(args.seed))
    x_test, _ = test.tensors()
    f_test = extract_features(net, x_test, device=device)
    train = load_dataset(tmeta["dataset"], "train", size=tmeta["image_shape"][-1], download=False)
    x_train, _ = train.subset(args.n, torch.Generator().manual_seed(args.seed)).tensors()
    f_train = extract_features(net, x_train, device=device)

    recorded = (tmeta.get("distill") or {}).get("timesteps")  # a teacher from an earlier round: its own grid
    ts_teacher = torch.tensor(recorded) if recorded else teacher_timesteps(tmeta["model_config"]["T"], args.steps, args.spacing)
    if len(ts_teacher) != 2 * args.steps:
        raise SystemExit(f"the teacher's grid has {len(ts_teacher)} steps; --steps must be half of it")
    grids = {2 * args.steps: ts_teacher.tolist(), args.steps: halve_timesteps(ts_teacher).tolist()}  # the teacher at N: the student's grid
    runs = [("teacher", args.teacher, 2 * args.steps), ("teacher", args.teacher, args.steps)]
    runs += [(f"student:{s}", s, args.steps) for s in args.student]
    results, images = [], {}
    for name, ckpt, steps in runs:
        model, meta, rec = (teacher, tmeta, recipe) if ckpt == args.teacher else load_model(ckpt, device)
        g = torch.Generator(device=device).manual_seed(args.seed)  # the same noise for every row
        t0 = time.perf_counter()
        grid = grids[steps] if ckpt == args.teacher else ((meta.get("distill") or {}).get("timesteps") or grids[steps])
        x = rec.sample(model, meta, args.n, g, device, sampler="ddim", steps=steps, batch_size=250, timesteps=grid).cpu()
        secs = time.perf_counter() - t0
        images[(ckpt, steps)] = x
        rep = fid_report(extract_features(net, x, device=device), f_test, f_train, seed=args.seed)
        row = {"model": name, "steps": steps, "grid": grid,
               "sample_seconds": round(secs, 1), **{k: rep[k] for k in ("fid", "fid_ci95", "kid", "kid_std", "fid_floor",
                                                                       "kid_floor", "n_gen", "n_real", "floor_n")}}
        results.append(row)
        print(json.dumps(row), flush=True)
    ref = images[(args.teacher, 2 * args.steps)]
    for row, (_, ckpt, steps) in zip(results, runs):
        row["msd_to_teacher_2N"] = float(((images[(ckpt, steps)] - ref) ** 2).mean())
    print(json.dumps({"classifier": clf_path, "results": results}))


if __name__ == "__main__":
    main()
