"""The ``ldmcourse`` command line: ``train``, ``sample``, ``eval`` (and ``inpaint``, ``distill``).

Flags for ``train MODEL`` are generated from the model's config dataclass and from
:class:`ldmcourse.train.FitConfig` (``ldmcourse train ae --help`` lists them). Precedence, lowest
first: dataclass defaults < the profile's sizes < ``--config FILE`` (JSON or TOML with sections
``model``, ``fit``, ``data``) < explicit flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .configs import from_dict as config_from_dict  # noqa: F401  (the package's one dict -> dataclass helper)
from .flags import _explicit, _options, add_dataclass_flags  # noqa: F401  (re-exported)
from .profiles import PROFILES, get_profile
from .run import DATA_FIELDS, _device, add_train_parser, cmd_train, load_model  # noqa: F401  (re-exported)
from .runconfig import build_config, read_config_file  # noqa: F401  (re-exported)
from .samplers import sampling_progress


# Flags are generated from dataclasses by ldmcourse.flags; the train command lives in ldmcourse.run (the zoo
# calls it too); config files and unknown keys are ldmcourse.runconfig's.


# ----------------------------------------------------------------------------------------------
# parser
# ----------------------------------------------------------------------------------------------

def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ldmcourse", description="Latent diffusion from the ground up: train, sample, evaluate.")
    p.add_argument("--version", action="version", version=f"ldmcourse {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    add_train_parser(sub, argv)

    s = sub.add_parser("sample", help="draw samples from a trained model into a PNG grid",
                       description="Sampler, steps and grid default to the model's own (its DiffusionConfig; a distilled "
                                   "checkpoint's grid).")
    s.add_argument("--ckpt", required=True)
    s.add_argument("--out", required=True, help="PNG file")
    s.add_argument("--device", default="auto")
    s.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="extra sampler option, e.g. eta=0.5")
    from .samplers import SampleOptions

    add_dataclass_flags(s, SampleOptions, "opt__", {"--ckpt", "--out", "--device", "--option"}, "sampling (SampleOptions)")

    _add_inpaint_parser(sub)
    _add_distill_parser(sub)
    _add_zoo_parser(sub)

    e = sub.add_parser("eval", help="evaluate a checkpoint; prints one JSON object as the last line")
    e.add_argument("--ckpt", required=True)
    e.add_argument("--metric", required=True)
    e.add_argument("--n", type=int, default=None, help="number of test images / samples to use (default: the profile's)")
    e.add_argument("--profile", choices=PROFILES, default=None,
                   help="sizes the defaults of --n and the metric's options (default: the checkpoint's profile)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--device", default="auto")
    e.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="extra metric option, e.g. k=1000")
    return p


# ----------------------------------------------------------------------------------------------
# commands
# ----------------------------------------------------------------------------------------------

def cmd_sample(args: argparse.Namespace) -> dict[str, Any]:
    from .samplers import SampleOptions
    from .utils import save_grid

    o = build_config(SampleOptions, _explicit(args, "opt__"), where="sample: ")  # validates (__post_init__)
    device = _device(args.device)
    model, meta, recipe = load_model(args.ckpt, device)
    if recipe.sample is None:
        raise SystemExit(f"error: a {meta['kind']!r} model cannot sample ({recipe.description}); "
                         "use `ldmcourse eval --metric recon`, or train a generative model (vae, ddpm, ldm)")
    if o.prompt is not None and not recipe.prompts:
        raise ValueError(f"a {meta['kind']!r} model takes no --prompt; text conditioning needs `ldmcourse train ldm --text`")
    if (o.guidance is not None or o.class_label is not None) and not recipe.guidance:
        raise ValueError(f"a {meta['kind']!r} model takes no --class / --guidance; classifier-free guidance needs "
                         "a class-conditional ddpm or ldm (train ... --num-classes K --p-uncond 0.1)")
    options = _options(args.option)
    for key, value in (("spacing", o.spacing), ("guidance", o.guidance), ("y", o.class_label), ("prompt", o.prompt)):
        if value is not None:
            options[key] = value
    sampler, steps = recipe.sampling_choice(meta, o.sampler, o.steps, o.spacing)
    g = torch.Generator(device=device).manual_seed(o.seed)
    t0 = time.perf_counter()
    with sampling_progress("sample"):
        x = recipe.sample(model, meta, o.n, g, device, sampler=o.sampler, steps=o.steps, batch_size=o.batch_size,
                          **options)
    secs = time.perf_counter() - t0
    save_grid(x, args.out, nrow=int(max(1, round(o.n ** 0.5))))
    result = {"out": args.out, "n": o.n, "sampler": sampler, "steps": steps, "seconds": round(secs, 3)}
    print(json.dumps(result))
    return result


def cmd_eval(args: argparse.Namespace) -> dict[str, Any]:
    from .data import load_dataset
    from .recipes import check_options
    from .runconfig import eval_defaults

    if args.n is not None and args.n < 1:
        raise ValueError(f"--n {args.n}: give the number of test images to evaluate (>= 1), or leave it out for the profile's")
    device = _device(args.device)
    model, meta, recipe = load_model(args.ckpt, device)
    if args.metric not in recipe.metrics:
        raise SystemExit(f"error: metric {args.metric!r} is not defined for a {meta['kind']!r} model; "
                         f"choose one of {', '.join(recipe.metrics) or '(none)'}")
    fn = recipe.metrics[args.metric]
    profile = get_profile(args.profile) if args.profile or os.environ.get("LDMCOURSE_PROFILE") else meta.get("profile") or get_profile()
    defaults = eval_defaults(recipe, profile, args.metric)
    n = args.n if args.n is not None else defaults.pop("n", None)
    defaults.pop("n", None)
    opts = check_options(args.metric, fn, {**defaults, "seed": args.seed, **_options(args.option)})
    test = load_dataset(meta["dataset"], "test", size=meta["image_shape"][-1], root=meta.get("data_root"), download=False)
    if n is not None:
        test = test.subset(n, torch.Generator().manual_seed(args.seed))
    print(f"[ldmcourse] eval {args.metric} of {args.ckpt} on {len(test)} {meta['dataset']} test images; profile={profile}"
          + "".join(f" {k}={v}" for k, v in opts.items() if k != "seed"), file=sys.stderr, flush=True)
    with sampling_progress(f"{args.metric}: sample"):  # metrics that sample (fid, kid, ...) show their progress
        result = {"metric": args.metric, "ckpt": args.ckpt, "dataset": meta["dataset"], **fn(model, meta, test, device, opts)}
    print(json.dumps(result))
    return result


# ----------------------------------------------------------------------------------------------
# inpaint (a model's recipe module provides ``inpaint(model, meta, x_known, keep, generator, device, ...)``)
# ----------------------------------------------------------------------------------------------

def _add_inpaint_parser(sub) -> None:
    i = sub.add_parser("inpaint", help="fill the masked region of images with a trained diffusion model",
                       description="Inpaint IMAGE where MASK says so and write a PNG grid: per image, the masked "
                                   "input, N inpaintings, the original.")
    i.add_argument("--ckpt", required=True)
    i.add_argument("--image", required=True, help="a PNG file, or test:I[,J,...] for images of the model's test set")
    i.add_argument("--mask", required=True, help="box | half | strokes | a PNG file (white = fill, black = keep)")
    i.add_argument("--out", required=True, help="PNG file")
    i.add_argument("--device", default="auto")
    i.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="extra sampler option, e.g. eta=1")
    from .inpaint import InpaintOptions

    add_dataclass_flags(i, InpaintOptions, "opt__", {"--ckpt", "--image", "--mask", "--out", "--device", "--option"},
                        "inpainting (InpaintOptions)")


def _read_images(spec: str, meta: dict[str, Any]) -> torch.Tensor:
    """(B, C, H, W) in [-1, 1] at the model's image shape, from a PNG or ``test:I,J``."""
    c, h, w = meta["image_shape"]
    if spec.startswith("test:"):
        from .data import load_dataset

        test = load_dataset(meta["dataset"], "test", size=h, root=meta.get("data_root"), download=False)
        try:
            idx = torch.tensor([int(v) for v in spec[5:].split(",")])
        except ValueError:
            raise SystemExit(f"error: --image {spec!r}: write test:I or test:I,J,... with integer indices")
        if int(idx.max()) >= len(test) or int(idx.min()) < 0:
            raise SystemExit(f"error: --image {spec!r}: the test set has {len(test)} images")
        return test.get_batch(idx)[0]
    if not Path(spec).exists():
        raise SystemExit(f"error: --image {spec} does not exist (give a PNG file or test:I)")
    import numpy as np
    from PIL import Image

    img = Image.open(spec).convert("L" if c == 1 else "RGB").resize((w, h), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 127.5 - 1.0)
    return (x[None, None] if c == 1 else x.permute(2, 0, 1)[None]).contiguous()


def cmd_inpaint(args: argparse.Namespace) -> dict[str, Any]:
    from .inpaint import MASKS, InpaintOptions, load_mask, make_mask, masked_mse
    from .utils import save_grid

    o = build_config(InpaintOptions, _explicit(args, "opt__"), where="inpaint: ")  # validates (__post_init__)
    device = _device(args.device)
    model, meta, recipe = load_model(args.ckpt, device)
    if recipe.inpaint is None:
        raise SystemExit(f"error: a {meta['kind']!r} model cannot inpaint; train a diffusion model (ldm)")
    x = _read_images(args.image, meta)
    size = meta["image_shape"][-1]
    g = torch.Generator(device=device).manual_seed(o.seed)
    if args.mask in MASKS:
        keep = make_mask(args.mask, size, generator=torch.Generator().manual_seed(o.seed))
    elif Path(args.mask).exists():
        keep = load_mask(args.mask, size)
    else:
        raise SystemExit(f"error: --mask {args.mask!r} is neither one of {', '.join(MASKS)} nor an existing PNG file")
    x_rep = x.repeat_interleave(o.n, 0)
    sampler, steps = recipe.sampling_choice(meta, o.sampler, o.steps, o.spacing)
    t0 = time.perf_counter()
    out = recipe.inpaint(model, meta, x_rep, keep, g, device, sampler=o.sampler, steps=o.steps, spacing=o.spacing,
                         method=o.method, jump_length=o.jump_length, resample=o.resample, **_options(args.option))
    secs = time.perf_counter() - t0
    rows = []
    for b in range(len(x)):  # masked input (hole in grey), N inpaintings, original
        rows += [x[b:b + 1] * keep, out[b * o.n:(b + 1) * o.n], x[b:b + 1]]
    save_grid(torch.cat(rows), args.out, nrow=o.n + 2)
    result = {"out": args.out, "images": len(x), "n": o.n, "method": o.method, "sampler": sampler,
              "steps": steps, "masked_mse": float(masked_mse(out, x_rep, keep).mean()), "seconds": round(secs, 3)}
    print(json.dumps(result))
    return result


# ----------------------------------------------------------------------------------------------
# distill (one round of progressive distillation, ldmcourse.distill)
# ----------------------------------------------------------------------------------------------

def _add_distill_parser(sub) -> None:
    from .distill import DistillOptions

    d = sub.add_parser("distill", help="one round of progressive distillation: an N-step student of a ddpm teacher's 2N DDIM steps",
                       description="Train a student (initialised with the teacher's weights) whose ONE DDIM step matches the "
                                   "teacher's TWO (Salimans & Ho 2022, Alg. 2). Writes OUT/checkpoint.pt, a ddpm checkpoint "
                                   "that `ldmcourse sample`/`eval` sample on the distilled grid at --steps N.")
    d.add_argument("--teacher", required=True, help="checkpoint of `ldmcourse train ddpm`, or a student of an earlier round (its own grid is halved)")
    d.add_argument("--out", required=True, help="output folder")
    d.add_argument("--profile", choices=PROFILES, default=None, help="smoke | cpu | gpu (default: automatic)")
    d.add_argument("--device", default="auto")
    add_dataclass_flags(d, DistillOptions, "opt__", {"--teacher", "--out", "--profile", "--device"}, "distillation (DistillOptions)")


def cmd_distill(args: argparse.Namespace) -> dict[str, Any]:
    from .data import load_dataset
    from .distill import DistillOptions, distill, grids

    o = build_config(DistillOptions, _explicit(args, "opt__"), where="distill: ")  # validates (__post_init__)
    if not Path(args.teacher).exists():
        raise FileNotFoundError(f"--teacher {args.teacher} does not exist; train one with "
                                "`ldmcourse train ddpm --dataset D --out DIR` and pass DIR/checkpoint.pt")
    profile = get_profile(args.profile)
    device = _device(args.device, profile)
    teacher, meta, recipe = load_model(args.teacher, device)
    if meta["kind"] != "ddpm":
        raise ValueError(f"--teacher {args.teacher} is a {meta['kind']!r} checkpoint, not a pixel-space diffusion model; "
                         "distill a checkpoint of `ldmcourse train ddpm`")
    cfg = recipe.config(meta["model_config"])
    ts_teacher, _ = grids(cfg.T, o.steps, o.spacing, meta.get("distill"))  # refuses an impossible N before any work
    fit_cfg = o.fit_config(profile)
    data = load_dataset(meta["dataset"], "train", size=meta["image_shape"][-1], root=meta.get("data_root"),
                        n=o.n_train, download=False)
    print(f"[ldmcourse] distill {args.teacher}: {2 * o.steps} DDIM steps -> {o.steps}; profile={profile} "
          f"device={device} updates={fit_cfg.steps} batch={fit_cfg.batch_size} lr={fit_cfg.lr} weighting={o.weighting}")
    meta = {**meta, "profile": profile, "teacher_ckpt": str(args.teacher), "ldmcourse": __version__}
    res, ts = distill(teacher, data, fit_cfg, schedule=cfg.make_schedule(), student_steps=o.steps, prediction=cfg.prediction,
                      spacing=o.spacing, weighting=o.weighting, device=device, out_dir=args.out, meta=meta)
    summary = {"out": str(Path(args.out) / "checkpoint.pt"), "steps": o.steps, "timesteps": ts.tolist(),
               "teacher_timesteps": ts_teacher.tolist(), "weighting": o.weighting,
               "train_steps": res.step, "train_seconds": round(res.seconds, 2),
               "final_loss": res.history[-1]["loss"] if res.history else None}
    (Path(args.out) / "metrics.json").write_text(json.dumps({**summary, "history": res.history,
                                                             "fit_config": dataclasses.asdict(fit_cfg)}, indent=2))
    print(json.dumps(summary))
    return summary


# ----------------------------------------------------------------------------------------------
# zoo (ldmcourse.zoo: the named models notebooks and commands consume)
# ----------------------------------------------------------------------------------------------

def _add_zoo_parser(sub) -> None:
    z = sub.add_parser("zoo", help="the model zoo: list its entries, train one or all into runs/zoo/",
                       description="Named models, trained once by `ldmcourse train` and cached under a hash of their config.")
    zs = z.add_subparsers(dest="zoo_command", required=True)
    zl = zs.add_parser("list", help="entries, their status and training time at a profile")
    zl.add_argument("--profile", choices=PROFILES, default=None)
    zl.add_argument("--json", action="store_true", help="one JSON object per line")
    zt = zs.add_parser("train", help="train (or resume) entry NAME, or every entry with --all")
    zt.add_argument("name", nargs="?", default=None)
    zt.add_argument("--all", action="store_true")
    zt.add_argument("--profile", choices=PROFILES, default=None)
    zt.add_argument("--device", default="auto")
    zt.add_argument("--rebuild", action="store_true", help="delete the cached entry and train it again")


def cmd_zoo(args: argparse.Namespace) -> Any:
    from . import zoo

    if args.zoo_command == "list":
        rows = zoo.list_entries(args.profile)
        for r in rows:
            if args.json:
                print(json.dumps(r))
            else:
                took = f"{r['steps']} steps, {r['train_seconds']:.0f} s" if r["train_seconds"] is not None else ""
                print(f"{r['name']:26s} {r['recipe']:15s} {r['dataset']:14s} {r['profile']:5s} {r['status']:12s} {took}")
        return rows
    if args.all == (args.name is not None):
        raise SystemExit("error: give an entry NAME or --all (see `ldmcourse zoo list`)")
    names = sorted(zoo.ENTRIES) if args.all else [args.name]
    done = []
    for name in names:
        r = zoo.train(name, args.profile, device=args.device, rebuild=args.rebuild)
        print(zoo.describe(r))
        done.append(str(r.checkpoint))
    return done


class UsageError(SystemExit):
    """An ``error: ...`` line already printed; exits with status 2 (like argparse), the message kept as ``str(e)``."""

    @property
    def code(self) -> int:  # type: ignore[override]
        return 2


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    try:
        {"train": cmd_train, "sample": cmd_sample, "eval": cmd_eval, "inpaint": cmd_inpaint,
         "distill": cmd_distill, "zoo": cmd_zoo}[args.command](args)
    except KeyboardInterrupt as e:
        from .rundir import TrainingInterrupted

        if isinstance(e, TrainingInterrupted):  # fit saved the current step and said where
            return 128 + int(e.signum)
        print("\n[ldmcourse] interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, RuntimeError, KeyError, FloatingPointError) as e:
        if os.environ.get("LDMCOURSE_TRACEBACK"):
            raise
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    except SystemExit as e:
        if isinstance(e.code, str) and not isinstance(e, UsageError):  # raise SystemExit("error: ...")
            print(e.code, file=sys.stderr)
            raise UsageError(e.code) from None
        raise
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
