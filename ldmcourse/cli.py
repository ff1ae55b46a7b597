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
import typing
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .distributed import cleanup, ddp_wrap, launched_by_torchrun, setup
from .profiles import PROFILES, get_profile

DATA_FIELDS = {"dataset": "mnist5k", "image_size": 32, "n_train": None, "data_root": None}


# ----------------------------------------------------------------------------------------------
# dataclass <-> flags
# ----------------------------------------------------------------------------------------------

def _base_type(hint: Any) -> tuple[type, bool, type | None]:
    """(scalar type, optional?, element type for tuples) from a resolved type hint."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    optional = False
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        non_none = [a for a in args if a is not type(None)]
        optional = len(non_none) < len(args)
        hint = non_none[0]
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (tuple, list):
        return tuple, optional, (args[0] if args else str)
    return hint, optional, None


def _converter(tp: type, optional: bool):
    def conv(s: str):
        if optional and s.lower() in ("none", "null", "off"):
            return None
        if tp is bool:
            if s.lower() in ("1", "true", "yes", "on"):
                return True
            if s.lower() in ("0", "false", "no", "off"):
                return False
            raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")
        return tp(s)

    conv.__name__ = tp.__name__
    return conv


def add_dataclass_flags(parser: argparse.ArgumentParser, cls: type, prefix: str, taken: set[str], title: str) -> None:
    """Add one ``--field-name`` flag per field of ``cls``; ``dest`` is ``prefix + field``.

    Names already ``taken`` get ``--{prefix}-field`` instead, so nothing clashes.
    """
    group = parser.add_argument_group(title)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, optional, elem = _base_type(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        if flag in taken:
            flag = f"--{prefix.rstrip('_')}-" + f.name.replace("_", "-")
        taken.add(flag)
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
        help_ = f"(default {default!r})"
        if elem is not None:
            group.add_argument(flag, dest=prefix + f.name, nargs="+", type=_converter(elem, False),
                               default=argparse.SUPPRESS, help=help_)
        else:
            group.add_argument(flag, dest=prefix + f.name, type=_converter(tp, optional),
                               default=argparse.SUPPRESS, metavar=tp.__name__.upper(), help=help_)


def _explicit(args: argparse.Namespace, prefix: str) -> dict[str, Any]:
    return {k[len(prefix):]: v for k, v in vars(args).items() if k.startswith(prefix)}


def read_config_file(path: str | None) -> dict[str, dict[str, Any]]:
    if not path:
        return {}
    p = Path(path)
    if not p.exists():
        raise SystemExit(f"error: --config {p} does not exist")
    try:
        if p.suffix == ".toml":
            import tomllib

            cfg = tomllib.loads(p.read_text())
        else:
            cfg = json.loads(p.read_text())
    except Exception as e:
        raise SystemExit(f"error: --config {p} is not valid {'TOML' if p.suffix == '.toml' else 'JSON'}: {e}")
    bad = set(cfg) - {"model", "fit", "data"}
    if bad:
        raise SystemExit(f"error: --config {p} has unknown section(s) {sorted(bad)}; use 'model', 'fit', 'data'")
    return cfg


def build_config(cls: type, *layers: dict[str, Any], where: str = "") -> Any:
    fields = {f.name for f in dataclasses.fields(cls)}
    merged: dict[str, Any] = {}
    for layer in layers:
        unknown = set(layer) - fields
        if unknown:
            raise SystemExit(f"error: {where}{cls.__name__} has no field(s) {sorted(unknown)}; fields: {sorted(fields)}")
        merged.update(layer)
    return cls(**merged)


def config_from_dict(cls: type, d: dict[str, Any]) -> Any:
    return cls(**{k: v for k, v in d.items() if k in {f.name for f in dataclasses.fields(cls)}})


# ----------------------------------------------------------------------------------------------
# parser
# ----------------------------------------------------------------------------------------------

def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    from .recipes import available, get_recipe
    from .train import FitConfig

    p = argparse.ArgumentParser(prog="ldmcourse", description="Latent diffusion from the ground up: train, sample, evaluate.")
    p.add_argument("--version", action="version", version=f"ldmcourse {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model; writes DIR/checkpoint.pt, DIR/metrics.json and a picture",
                       description="Train MODEL. `ldmcourse train MODEL --help` lists MODEL's flags.")
    t.add_argument("model", choices=available(), help="which model")
    t.add_argument("--dataset", default=argparse.SUPPRESS, help=f"dataset name (default {DATA_FIELDS['dataset']})")
    t.add_argument("--image-size", dest="image_size", type=int, default=argparse.SUPPRESS, help="pad/resize to this size (default 32)")
    t.add_argument("--n-train", dest="n_train", type=int, default=argparse.SUPPRESS, help="use a random subset of this many training images")
    t.add_argument("--data-root", dest="data_root", default=argparse.SUPPRESS, help="download root (default ./data or $LDMCOURSE_DATA)")
    t.add_argument("--profile", choices=PROFILES, default=None, help="smoke | cpu | gpu (default: automatic)")
    t.add_argument("--out", required=True, help="output folder")
    t.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt exactly where it stopped")
    t.add_argument("--config", default=None, help="JSON or TOML file with sections model, fit, data")
    t.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    # model-specific flags, generated from the dataclasses of the model named on the command line
    if len(argv) > 1 and argv[0] == "train" and argv[1] in available():
        taken = {"--dataset", "--image-size", "--n-train", "--data-root", "--profile", "--out", "--resume", "--config", "--device"}
        add_dataclass_flags(t, FitConfig, "fit__", taken, "training (FitConfig)")
        recipe = get_recipe(argv[1])
        add_dataclass_flags(t, recipe.model_config, "model__", taken, f"model ({recipe.model_config.__name__})")

    s = sub.add_parser("sample", help="draw samples from a trained model into a PNG grid")
    s.add_argument("--ckpt", required=True)
    s.add_argument("--sampler", default="ddim")
    s.add_argument("--steps", type=int, default=None, help="sampler steps (default: a distilled checkpoint's, else 50)")
    s.add_argument("--n", type=int, default=64)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--batch-size", type=int, default=256, help="sample in chunks of this many (same result for the same seed)")
    s.add_argument("--out", required=True, help="PNG file")
    s.add_argument("--device", default="auto")
    s.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="extra sampler option, e.g. eta=0.5")
    s.add_argument("--guidance", type=float, default=None, metavar="S",
                   help="classifier-free guidance scale (0: unconditional, 1: conditional; needs --class)")
    s.add_argument("--class", dest="class_label", type=int, default=None, metavar="C", help="class label to sample")

    _add_inpaint_parser(sub)
    _add_distill_parser(sub)
    _add_zoo_parser(sub)

    e = sub.add_parser("eval", help="evaluate a checkpoint; prints one JSON object as the last line")
    e.add_argument("--ckpt", required=True)
    e.add_argument("--metric", required=True)
    e.add_argument("--n", type=int, default=None, help="number of test images / samples to use")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--device", default="auto")
    e.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="extra metric option, e.g. k=1000")
    return p


def _options(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise SystemExit(f"error: --option {pair!r} must look like KEY=VALUE")
        k, v = pair.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


# ----------------------------------------------------------------------------------------------
# commands
# ----------------------------------------------------------------------------------------------

def _device(name: str, profile: str | None = None) -> torch.device:
    from .utils import resolve_device

    if name == "auto" and profile == "smoke":
        return torch.device("cpu")
    return resolve_device(name)


def cmd_train(args: argparse.Namespace) -> dict[str, Any]:
    from .data import load_dataset
    from .recipes import get_recipe
    from .train import FitConfig, fit
    from .utils import save_grid

    profile = get_profile(args.profile)
    device = _device(args.device, profile)
    dist_info = None
    if launched_by_torchrun():  # torchrun --nproc_per_node N -m ldmcourse train ...: one process per device
        dist_info = setup("cpu" if device.type == "cpu" else "auto")
        device = dist_info.device
    rank, world = (dist_info.rank, dist_info.world) if dist_info else (0, 1)
    recipe = get_recipe(args.model)
    sizes = recipe.sizes.get(profile, {})
    file_cfg = read_config_file(args.config)

    data_cfg = {**DATA_FIELDS, **sizes.get("data", {}), **file_cfg.get("data", {}),
                **{k: v for k, v in vars(args).items() if k in DATA_FIELDS}}
    fit_cfg = build_config(FitConfig, sizes.get("fit", {}), file_cfg.get("fit", {}), _explicit(args, "fit__"), where="fit: ")

    train_data = load_dataset(data_cfg["dataset"], "train", size=data_cfg["image_size"], root=data_cfg["data_root"], n=data_cfg["n_train"])
    test_data = load_dataset(train_data.name, "test", size=data_cfg["image_size"], root=data_cfg["data_root"], download=False)
    c, h, w = train_data[0][0].shape
    model_layers = [sizes.get("model", {}), file_cfg.get("model", {}), _explicit(args, "model__")]
    auto = {k: v for k, v in (("in_channels", c), ("image_size", h)) if k in {f.name for f in dataclasses.fields(recipe.model_config)}}
    model_cfg = build_config(recipe.model_config, auto, *model_layers, where="model: ")
    from .zoo import resolve_first_stage  # ldm --first-stage auto: the zoo's first stage, reused or trained

    model_cfg = resolve_first_stage(recipe.name, model_cfg, data_cfg, profile, device, args)
    torch.manual_seed(fit_cfg.seed)  # the initial weights: recent PyTorch seeds its global generator per process
    model = recipe.build(model_cfg)

    meta = {
        "kind": recipe.name, "model_config": dataclasses.asdict(model_cfg), "dataset": train_data.name,
        "dataset_requested": data_cfg["dataset"], "image_shape": [c, h, w], "data_root": data_cfg["data_root"],
        "n_train": len(train_data), "profile": profile, "ldmcourse": __version__,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pic_gen_seed = fit_cfg.seed + 12345

    def picture_fn(m, step):
        m.eval()
        g = torch.Generator(device=device).manual_seed(pic_gen_seed)
        images, name = recipe.picture(m, test_data, device, g)
        save_grid(images, out / name, nrow=8)
        save_grid(images, out / "pictures" / f"step{step:07d}_{name}", nrow=8)
        picture_fn.name = name

    n_params = sum(p.numel() for p in model.parameters())
    if rank == 0:
        print(f"[ldmcourse] train {recipe.name} on {train_data.name} ({len(train_data)} images, {c}x{h}x{w}); "
              f"profile={profile} device={device} params={n_params:,} steps={fit_cfg.steps} batch={fit_cfg.batch_size}"
              + (f" (global; {world} processes)" if world > 1 else ""))
    try:
        res = fit(model, recipe.loss(model_cfg), train_data, fit_cfg, device=device, out_dir=out, resume=args.resume,
                  picture_fn=picture_fn, meta=meta, rank=rank, world=world,
                  wrap=ddp_wrap(device) if world > 1 else None)
    finally:
        if dist_info is not None:
            cleanup()
    if rank != 0:
        return {"rank": rank}
    summary: dict[str, Any] = {
        "kind": recipe.name, "dataset": train_data.name, "profile": profile, "device": str(device),
        "params": n_params, "steps": res.step, "train_seconds": round(res.seconds, 2),
        "final_loss": res.history[-1]["loss"] if res.history else None,
        "history": res.history, "fit_config": dataclasses.asdict(fit_cfg), "model_config": meta["model_config"],
    }
    if recipe.metrics:
        name, fn = next(iter(recipe.metrics.items()))
        summary["eval"] = {name: fn(res.best_model.eval(), meta, test_data, device, {})}
    (out / "metrics.json").write_text(json.dumps(summary, indent=2))
    print(f"[ldmcourse] wrote {out / 'checkpoint.pt'}, {out / 'metrics.json'}, {out / getattr(picture_fn, 'name', 'samples.png')}")
    return summary


def load_model(ckpt: str, device: torch.device, use_ema: bool = True):
    """(model, meta, recipe) from a checkpoint written by ``ldmcourse train``."""
    from .checkpoint import load_checkpoint
    from .recipes import get_recipe

    ck = load_checkpoint(ckpt)
    meta = ck["meta"]
    recipe = get_recipe(meta["kind"])
    model = recipe.build(config_from_dict(recipe.model_config, meta["model_config"]))
    state = ck["ema"] if use_ema and ck.get("ema") is not None else ck["model"]
    model.load_state_dict(state)
    return model.to(device).eval(), meta, recipe


def cmd_sample(args: argparse.Namespace) -> dict[str, Any]:
    from .utils import save_grid

    device = _device(args.device)
    model, meta, recipe = load_model(args.ckpt, device)
    if recipe.sample is None:
        raise SystemExit(f"error: a {meta['kind']!r} model cannot sample ({recipe.description}); "
                         "use `ldmcourse eval --metric recon`, or train a generative model (vae, ddpm, ldm)")
    g = torch.Generator(device=device).manual_seed(args.seed)
    options = _options(args.option)
    if getattr(args, "guidance", None) is not None:
        options["guidance"] = args.guidance
    if getattr(args, "class_label", None) is not None:
        options["y"] = args.class_label
    steps = args.steps if args.steps is not None else (meta.get("distill") or {}).get("steps", 50)
    t0 = time.perf_counter()
    try:
        x = recipe.sample(model, meta, args.n, g, device, sampler=args.sampler, steps=steps,
                          batch_size=args.batch_size, **options)
    except TypeError as e:
        if "guidance" not in str(e):
            raise
        raise SystemExit(f"error: a {meta['kind']!r} model does not take --guidance ({e}); "
                         "classifier-free guidance needs a class-conditional ldm (train ldm --num-classes K --p-uncond 0.1)")
    secs = time.perf_counter() - t0
    save_grid(x, args.out, nrow=int(max(1, round(args.n ** 0.5))))
    result = {"out": args.out, "n": args.n, "sampler": args.sampler, "steps": steps, "seconds": round(secs, 3)}
    print(json.dumps(result))
    return result


def cmd_eval(args: argparse.Namespace) -> dict[str, Any]:
    from .data import load_dataset

    device = _device(args.device)
    model, meta, recipe = load_model(args.ckpt, device)
    if args.metric not in recipe.metrics:
        raise SystemExit(f"error: metric {args.metric!r} is not defined for a {meta['kind']!r} model; "
                         f"choose one of {', '.join(recipe.metrics) or '(none)'}")
    test = load_dataset(meta["dataset"], "test", size=meta["image_shape"][-1], root=meta.get("data_root"), download=False)
    if args.n is not None:
        test = test.subset(args.n, torch.Generator().manual_seed(args.seed))
    opts = {"seed": args.seed, **_options(args.option)}
    result = {"metric": args.metric, "ckpt": args.ckpt, "dataset": meta["dataset"],
              **recipe.metrics[args.metric](model, meta, test, device, opts)}
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
    i.add_argument("--method", default="repaint", choices=("replace", "repaint", "none"))
    i.add_argument("--jump-length", type=int, default=5, help="RePaint: steps per segment (j)")
    i.add_argument("--resample", type=int, default=5, help="RePaint: runs of each segment (r)")
    i.add_argument("--sampler", default="ddim")
    i.add_argument("--steps", type=int, default=50)
    i.add_argument("--n", type=int, default=4, help="inpaintings per image")
    i.add_argument("--seed", type=int, default=0)
    i.add_argument("--device", default="auto")
    i.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="extra sampler option, e.g. eta=1")


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
    import importlib

    from .inpaint import MASKS, load_mask, make_mask, masked_mse
    from .recipes import _MODULES
    from .utils import save_grid

    device = _device(args.device)
    model, meta, recipe = load_model(args.ckpt, device)
    fn = getattr(importlib.import_module(_MODULES[meta["kind"]]), "inpaint", None)
    if fn is None:
        raise SystemExit(f"error: a {meta['kind']!r} model cannot inpaint; train a diffusion model (ldm)")
    x = _read_images(args.image, meta)
    size = meta["image_shape"][-1]
    g = torch.Generator(device=device).manual_seed(args.seed)
    if args.mask in MASKS:
        keep = make_mask(args.mask, size, generator=torch.Generator().manual_seed(args.seed))
    elif Path(args.mask).exists():
        keep = load_mask(args.mask, size)
    else:
        raise SystemExit(f"error: --mask {args.mask!r} is neither one of {', '.join(MASKS)} nor an existing PNG file")
    x_rep = x.repeat_interleave(args.n, 0)
    t0 = time.perf_counter()
    out = fn(model, meta, x_rep, keep, g, device, sampler=args.sampler, steps=args.steps, method=args.method,
             jump_length=args.jump_length, resample=args.resample, **_options(args.option))
    secs = time.perf_counter() - t0
    rows = []
    for b in range(len(x)):  # masked input (hole in grey), N inpaintings, original
        rows += [x[b:b + 1] * keep, out[b * args.n:(b + 1) * args.n], x[b:b + 1]]
    save_grid(torch.cat(rows), args.out, nrow=args.n + 2)
    result = {"out": args.out, "images": len(x), "n": args.n, "method": args.method, "sampler": args.sampler,
              "steps": args.steps, "masked_mse": float(masked_mse(out, x_rep, keep).mean()), "seconds": round(secs, 3)}
    print(json.dumps(result))
    return result


# ----------------------------------------------------------------------------------------------
# distill (one round of progressive distillation, ldmcourse.distill)
# ----------------------------------------------------------------------------------------------

def _add_distill_parser(sub) -> None:
    from .distill import WEIGHTINGS
    from .schedules import SPACINGS

    d = sub.add_parser("distill", help="one round of progressive distillation: an N-step student of a ddpm teacher's 2N DDIM steps",
                       description="Train a student (initialised with the teacher's weights) whose ONE DDIM step matches the "
                                   "teacher's TWO (Salimans & Ho 2022, Alg. 2). Writes OUT/checkpoint.pt, a ddpm checkpoint "
                                   "that `ldmcourse sample`/`eval` sample on the distilled grid at --steps N.")
    d.add_argument("--teacher", required=True, help="checkpoint of `ldmcourse train ddpm`, or a student of an earlier round (its own grid is halved)")
    d.add_argument("--steps", type=int, required=True, help="the student's DDIM steps N (the teacher takes 2N)")
    d.add_argument("--out", required=True, help="output folder")
    d.add_argument("--spacing", default="leading", choices=SPACINGS,
                   help="the teacher's 2N-step grid (default leading; trailing starts at T-1, see ldmcourse.distill)")
    d.add_argument("--weighting", default="truncated_snr", choices=WEIGHTINGS,
                   help="truncated_snr: the paper's max(SNR, 1) on the x-error; snr: the ε-space MSE")
    d.add_argument("--train-steps", type=int, default=None, help="optimiser updates (default: the profile's)")
    d.add_argument("--batch-size", type=int, default=None)
    d.add_argument("--lr", type=float, default=None)
    d.add_argument("--seed", type=int, default=None)
    d.add_argument("--n-train", dest="n_train", type=int, default=None, help="use a random subset of the teacher's training set")
    d.add_argument("--profile", choices=PROFILES, default=None, help="smoke | cpu | gpu (default: automatic)")
    d.add_argument("--device", default="auto")


def cmd_distill(args: argparse.Namespace) -> dict[str, Any]:
    from .data import load_dataset
    from .distill import SIZES, distill, teacher_timesteps
    from .train import FitConfig

    if not Path(args.teacher).exists():
        raise FileNotFoundError(f"--teacher {args.teacher} does not exist; train one with "
                                "`ldmcourse train ddpm --dataset D --out DIR` and pass DIR/checkpoint.pt")
    profile = get_profile(args.profile)
    device = _device(args.device, profile)
    teacher, meta, recipe = load_model(args.teacher, device)
    if meta["kind"] != "ddpm":
        raise ValueError(f"--teacher {args.teacher} is a {meta['kind']!r} checkpoint, not a pixel-space diffusion model; "
                         "distill a checkpoint of `ldmcourse train ddpm`")
    cfg = config_from_dict(recipe.model_config, meta["model_config"])
    # a teacher from an earlier round samples well only on the grid it learnt: the new student halves that grid
    teacher_grid = (meta.get("distill") or {}).get("timesteps")
    if teacher_grid is not None and len(teacher_grid) != 2 * args.steps:
        raise ValueError(f"--teacher {args.teacher} is a distilled {len(teacher_grid)}-step student; the next round halves "
                         f"its grid, so use --steps {len(teacher_grid) // 2}" if len(teacher_grid) % 2 == 0 else
                         f"--teacher {args.teacher} is a distilled {len(teacher_grid)}-step student: an odd grid cannot be halved")
    ts_teacher = teacher_grid if teacher_grid is not None else teacher_timesteps(cfg.T, args.steps, args.spacing).tolist()
    overrides = {k: v for k, v in (("steps", args.train_steps), ("batch_size", args.batch_size), ("lr", args.lr),
                                   ("seed", args.seed)) if v is not None}
    fit_cfg = FitConfig(**{**SIZES[profile], **overrides})
    data = load_dataset(meta["dataset"], "train", size=meta["image_shape"][-1], root=meta.get("data_root"),
                        n=args.n_train, download=False)
    print(f"[ldmcourse] distill {args.teacher}: {2 * args.steps} DDIM steps -> {args.steps}; profile={profile} "
          f"device={device} updates={fit_cfg.steps} batch={fit_cfg.batch_size} lr={fit_cfg.lr} weighting={args.weighting}")
    meta = {**meta, "profile": profile, "teacher_ckpt": str(args.teacher), "ldmcourse": __version__}
    res, ts = distill(teacher, data, fit_cfg, schedule=cfg.make_schedule(), student_steps=args.steps, prediction=cfg.prediction,
                      spacing=args.spacing, weighting=args.weighting, device=device, out_dir=args.out, meta=meta,
                      teacher_ts=teacher_grid)
    summary = {"out": str(Path(args.out) / "checkpoint.pt"), "steps": args.steps, "timesteps": ts.tolist(),
               "teacher_timesteps": ts_teacher, "weighting": args.weighting,
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


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    try:
        {"train": cmd_train, "sample": cmd_sample, "eval": cmd_eval, "inpaint": cmd_inpaint,
         "distill": cmd_distill, "zoo": cmd_zoo}[args.command](args)
    except KeyboardInterrupt:
        print("\n[ldmcourse] interrupted; the last checkpoint written is intact (resume with --resume)", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, RuntimeError, KeyError) as e:
        if os.environ.get("LDMCOURSE_TRACEBACK"):
            raise
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
