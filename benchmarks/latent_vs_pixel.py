"""Latent vs pixel diffusion at equal quality: course FID against training seconds for the same U-Net (issue 14, item 4).

    OMP_NUM_THREADS=1 python benchmarks/latent_vs_pixel.py --profile cpu --every-s 60 --pixel-every-s 300 --n 1000 \
        --out benchmarks/results/latent_vs_pixel_cpu.json --plot benchmarks/results/latent_vs_pixel_cpu.png

Trains the ``ldm`` recipe's U-Net of ``--profile`` twice with the same fit config: on the latents of the
zoo's first stage (``kl-f4-DATASET``) and on pixels (``--first-stage none``). Training runs in chunks
(``fit(..., stop_after=...)`` then an exact resume); after every ``--every-s`` seconds of training it draws
``n`` class-balanced guided samples (DDIM ``--steps``, guidance ``--guidance``) and computes the course
FID (``metrics.fid_report``: bootstrap interval, real-vs-real floor at the same n) against the test set.
The summary reads the common FID (the latent run's final FID) off the pixel curve (first crossing,
linear in seconds between points) and reports the time ratio pixel ÷ latent without and with the first
stage's training seconds (from its zoo record), and the sampling seconds per image at that FID.
It takes an hour or more on 2 cores in the cpu profile (each pixel FID point costs minutes): run it on
a quiet machine. Prints one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import torch

from ldmcourse import zoo
from ldmcourse.classifier import load_classifier
from ldmcourse.data import load_dataset
from ldmcourse.metrics import extract_features, fid_report
from ldmcourse.profiles import get_profile
from ldmcourse.recipes import get_recipe
from ldmcourse.train import FitConfig, fit


def crossing(curve: list[dict], target: float) -> float | None:
    """Training seconds at which ``curve`` (rows with train_seconds, fid) first reaches FID <= target."""
    prev = None
    for row in curve:
        if row["fid"] <= target:
            if prev is None:
                return row["train_seconds"]
            a, b = prev, row  # linear in seconds between the two points
            w = (a["fid"] - target) / max(a["fid"] - b["fid"], 1e-12)
            return a["train_seconds"] + w * (b["train_seconds"] - a["train_seconds"])
        prev = row
    return None


def summarize(curves: dict[str, list[dict]], fs_seconds: float | None) -> dict:
    """The common FID (the latent run's final FID), the training seconds each space needs to reach it, and
    pixel ÷ latent with and without the first stage's seconds. If the pixel curve never reaches it, the
    ratio is only bounded below: by the pixel run's last training seconds over the latent's."""
    common = curves["latent"][-1]["fid"]
    t_latent = crossing(curves["latent"], common)
    t_pixel = crossing(curves["pixel"], common)
    last_pixel = curves["pixel"][-1]["train_seconds"]
    out = {"common_fid": common, "latent_seconds": t_latent, "pixel_seconds": t_pixel,
           "pixel_reached_common_fid": t_pixel is not None, "first_stage_train_seconds": fs_seconds,
           "pixel_last_seconds": last_pixel, "pixel_last_fid": curves["pixel"][-1]["fid"]}
    t_p, bound = (t_pixel, False) if t_pixel is not None else (last_pixel, True)
    out["ratio_without_first_stage"] = t_p / t_latent if t_latent else None
    out["ratio_with_first_stage"] = t_p / (t_latent + fs_seconds) if t_latent and fs_seconds else None
    out["ratio_is_lower_bound"] = bound  # True: the pixel run stopped above the common FID
    return out


def plot(summary: dict, path: str) -> None:
    """FID against training seconds for both spaces on one log-y plot, with the floor and the common FID."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = summary["curves"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for space, curve in curves.items():
        ax.errorbar([r["train_seconds"] for r in curve], [r["fid"] for r in curve],
                    yerr=[[r["fid"] - r["fid_ci95"][0] for r in curve], [r["fid_ci95"][1] - r["fid"] for r in curve]],
                    marker="o", capsize=2, label=space)
    ax.axhline(curves["latent"][-1]["fid_floor"], color="grey", ls=":", label="real-vs-real floor")
    ax.axhline(summary["common_fid"], color="k", ls="--", lw=0.8, label="common FID")
    ax.set(xlabel="training seconds", ylabel="course FID", yscale="log", title=f"latent vs pixel ({summary.get('profile')})")
    ax.legend()
    fig.savefig(path, dpi=120, bbox_inches="tight")


def from_rows(path: str, fs_seconds: float | None) -> dict:
    """A summary from the JSON rows a (possibly interrupted) run printed, one per FID point."""
    curves: dict[str, list[dict]] = {"latent": [], "pixel": []}
    for line in open(path):
        if line.startswith('{"space"'):
            row = json.loads(line)
            curves[row["space"]].append(row)
    return summarize(curves, fs_seconds) | {
        "curves": curves, "sample_seconds_per_image": {k: c[-1]["sample_seconds_per_image"] for k, c in curves.items() if c}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", default=None)
    p.add_argument("--dataset", default="mnist5k")
    p.add_argument("--every-s", type=float, default=60.0, help="seconds of training between FID points")
    p.add_argument("--pixel-every-s", type=float, default=None, help="the pixel run's interval (default --every-s)")
    p.add_argument("--chunk", type=int, default=25, help="steps per training chunk (the resolution of the points)")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--steps", type=int, default=25, help="DDIM steps")
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--pixel-steps", type=int, default=None, help="training steps of the pixel run (default: the same)")
    p.add_argument("--pixel-max-seconds", type=float, default=None,
                   help="stop the pixel run after this many training seconds (its last point is then taken there)")
    p.add_argument("--latent-from", default=None,
                   help="take the latent curve from this earlier result JSON (same profile, n, steps, guidance) and train "
                        "only the pixel run")
    p.add_argument("--stop-at-common", action="store_true",
                   help="stop the pixel run at its first point at or below the common FID (the crossing is then known)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default="runs/latent_vs_pixel", help="checkpoints of the two runs")
    p.add_argument("--out", default=None)
    p.add_argument("--plot", default=None)
    p.add_argument("--from-rows", default=None, help="summarise the rows printed by an earlier (interrupted) run")
    p.add_argument("--first-stage-seconds", type=float, default=None, help="with --from-rows")
    args = p.parse_args()
    if args.from_rows:
        summary = from_rows(args.from_rows, args.first_stage_seconds) | {"profile": args.profile, "n": args.n,
                                                                         "ddim_steps": args.steps, "guidance": args.guidance}
        if args.out:
            Path(args.out).write_text(json.dumps(summary, indent=2))
        if args.plot:
            plot(summary, args.plot)
        print(json.dumps({k: v for k, v in summary.items() if k != "curves"}))
        return

    profile = get_profile(args.profile)
    device = torch.device("cpu")
    fs_resolved = zoo.train(zoo.first_stage_entry(args.dataset), profile)
    fs_seconds = (zoo.record(fs_resolved) or {}).get("train_seconds")
    clf_path = zoo.path(f"classifier-{args.dataset}", profile)
    clf, _ = load_classifier(clf_path, device)
    recipe = get_recipe("ldm")
    sizes = recipe.sizes.get(profile, {})
    train = load_dataset(args.dataset, "train", size=32, n=sizes.get("data", {}).get("n_train"))
    test = load_dataset(args.dataset, "test", size=32, download=False)
    x_test, _ = test.tensors()
    f_test = extract_features(clf, x_test, device=device)
    x_tr, _ = train.subset(min(args.n, len(train)), torch.Generator().manual_seed(args.seed)).tensors()
    f_train = extract_features(clf, x_tr, device=device)
    y = torch.arange(args.n) % 10

    curves, sample_s = {}, {}
    spaces = [("latent", str(fs_resolved.checkpoint)), ("pixel", "none")]
    if args.latent_from:
        earlier = json.loads(Path(args.latent_from).read_text())
        for key, want in (("profile", profile), ("n", args.n), ("ddim_steps", args.steps), ("guidance", args.guidance)):
            if earlier.get(key) != want:
                raise SystemExit(f"--latent-from {args.latent_from}: its {key} is {earlier.get(key)!r}, this run's is "
                                 f"{want!r}; rerun without --latent-from, or with matching options")
        curves["latent"] = earlier["curves"]["latent"]
        fs_seconds = earlier["first_stage_train_seconds"]  # the first stage that latent curve was trained on
        sample_s["latent"] = curves["latent"][-1]["sample_seconds_per_image"]
        spaces = spaces[1:]
    if args.out:
        Path(args.out).with_suffix(".partial.jsonl").unlink(missing_ok=True)
    for space, first_stage in spaces:
        cfg = recipe.model_config(**{**sizes.get("model", {}), "first_stage": first_stage, "in_channels": 1, "image_size": 32})
        fit_over = {**sizes.get("fit", {}), "progress": False}
        if space == "pixel" and args.pixel_steps:
            fit_over["steps"] = args.pixel_steps
        fcfg = FitConfig(**fit_over)
        torch.manual_seed(fcfg.seed)
        model = recipe.build(cfg)
        meta = {"kind": "ldm", "model_config": dataclasses.asdict(cfg), "dataset": args.dataset, "image_shape": [1, 32, 32]}
        work = Path(args.work) / f"{profile}-{space}"
        if (work / "checkpoint.pt").exists():
            (work / "checkpoint.pt").unlink()  # every run starts from step 0: the seconds must be this run's
        every = args.pixel_every_s if space == "pixel" and args.pixel_every_s else args.every_s
        seconds, step, next_point, curve = 0.0, 0, every, []
        budget = args.pixel_max_seconds if space == "pixel" and args.pixel_max_seconds else float("inf")
        while step < fcfg.steps and seconds < budget:
            res = fit(model, recipe.loss(cfg), train, fcfg, device=device, out_dir=work, resume=step > 0, meta=meta,
                      stop_after=args.chunk)
            seconds, step = seconds + res.seconds, res.step
            if seconds >= next_point or step >= fcfg.steps or seconds >= budget:
                ema = res.best_model.eval()
                g = torch.Generator().manual_seed(args.seed + 1)
                t0 = time.perf_counter()
                x = recipe.sample(ema, meta, args.n, g, device, sampler="ddim", steps=args.steps, guidance=args.guidance,
                                  y=y, batch_size=250)
                secs = time.perf_counter() - t0
                rep = fid_report(extract_features(clf, x, device=device), f_test, f_train, seed=args.seed)
                row = {"space": space, "step": step, "train_seconds": round(seconds, 1), "fid": rep["fid"],
                       "fid_ci95": rep["fid_ci95"], "fid_floor": rep["fid_floor"], "n_gen": rep["n_gen"],
                       "sample_seconds_per_image": secs / args.n, "loadavg": [round(v, 2) for v in os.getloadavg()]}
                curve.append(row)
                print(json.dumps(row), flush=True)
                if args.out:  # the curve so far, so an interrupted run keeps its points
                    partial = Path(args.out).with_suffix(".partial.jsonl")
                    with open(partial, "a") as f:
                        f.write(json.dumps(row) + "\n")
                next_point = seconds + every
                if space == "pixel" and args.stop_at_common and "latent" in curves \
                        and row["fid"] <= curves["latent"][-1]["fid"]:
                    break
        curves[space] = curve
        sample_s[space] = curve[-1]["sample_seconds_per_image"]

    summary = summarize(curves, fs_seconds) | {
        "latent_from": args.latent_from, "profile": profile, "dataset": args.dataset, "n": args.n, "ddim_steps": args.steps, "guidance": args.guidance,
        "classifier": f"zoo:classifier-{args.dataset} ({profile})", "first_stage": f"zoo:{fs_resolved.entry.name} ({profile})",
        "sample_seconds_per_image": sample_s,
        "curves": curves}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(summary, indent=2))
    if args.plot:
        plot(summary, args.plot)
    print(json.dumps({k: v for k, v in summary.items() if k != "curves"}))


if __name__ == "__main__":
    main()
