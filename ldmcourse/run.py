"""One training run from ``ldmcourse train`` arguments: the train parser, the run itself, and loading
its checkpoint back. The command line (``cli``) and the model zoo (``zoo``) both call it, so a zoo entry
is trained by exactly the code of ``ldmcourse train`` without the zoo importing the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .distributed import cleanup, ddp_wrap, launched_by_torchrun, setup
from .flags import _explicit, add_dataclass_flags
from .profiles import PROFILES
from .runconfig import DataConfig, build_config, read_config_file

DATA_FIELDS = {f.name: f.default for f in dataclasses.fields(DataConfig)}


def add_train_parser(sub, argv: list[str]) -> None:
    """The ``train`` sub-command; the model's and the loop's flags are added when ``argv`` names the model."""
    from .recipes import available, get_recipe
    from .train import FitConfig

    t = sub.add_parser("train", help="train a model; writes DIR/checkpoint.pt, DIR/metrics.json and a picture",
                       description="Train MODEL. `ldmcourse train MODEL --help` lists MODEL's flags.")
    t.add_argument("model", choices=available(), help="which model")
    t.add_argument("--dataset", default=argparse.SUPPRESS, help=f"dataset name (default {DATA_FIELDS['dataset']})")
    t.add_argument("--image-size", dest="image_size", type=int, default=argparse.SUPPRESS, help="pad/resize to this size (default 32)")
    t.add_argument("--n-train", dest="n_train", type=int, default=argparse.SUPPRESS, help="use a random subset of this many training images")
    t.add_argument("--data-root", dest="data_root", default=argparse.SUPPRESS, help="download root (default ./data or $LDMCOURSE_DATA)")
    t.add_argument("--profile", choices=PROFILES, default=None, help="smoke | cpu | gpu (default: automatic)")
    t.add_argument("--out", required=True, help="output folder")
    t.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt exactly where it stopped "
                   "(only --steps, the logging/checkpoint intervals and --device may change)")
    t.add_argument("--reset-optimizer", dest="reset_optimizer", action="store_true",
                   help="with --resume: keep the weights and EMA, start a fresh optimiser and LR schedule (warm-up from "
                        "the current step) at the new --lr, --warmup, ... (the recovery from a NaN)")
    t.add_argument("--overwrite", action="store_true", help="replace the run already in OUT (else it is refused)")
    t.add_argument("--config", default=None, help="JSON or TOML file with sections model, fit, data")
    t.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    # model-specific flags, generated from the dataclasses of the model named on the command line
    if len(argv) > 1 and argv[0] == "train" and argv[1] in available():
        taken = {"--dataset", "--image-size", "--n-train", "--data-root", "--profile", "--out", "--resume", "--config", "--device",
                 "--reset-optimizer", "--overwrite"}
        add_dataclass_flags(t, FitConfig, "fit__", taken, "training (FitConfig)")
        recipe = get_recipe(argv[1])
        add_dataclass_flags(t, recipe.model_config, "model__", taken, f"model ({recipe.model_config.__name__})")


def train_parser(argv: list[str]) -> argparse.ArgumentParser:
    """A parser of ``train MODEL ...`` alone (what the zoo builds its runs with)."""
    p = argparse.ArgumentParser(prog="ldmcourse")
    add_train_parser(p.add_subparsers(dest="command", required=True), argv)
    return p


def _device(name: str, profile: str | None = None) -> torch.device:
    from .utils import resolve_device

    return resolve_device(name, profile)


def cmd_train(args: argparse.Namespace) -> dict[str, Any]:
    from .data import load_dataset
    from .recipes import get_recipe
    from .rundir import check_out_dir
    from .runconfig import check_first_stage, train_profile
    from .train import FitConfig, fit
    from .utils import save_grid

    out = Path(args.out)
    if args.resume and not (out / "checkpoint.pt").exists():
        if getattr(args, "model__first_stage", getattr(get_recipe(args.model).model_config, "first_stage", None)) == "auto":
            # the interrupted stage was the zoo's first stage: it resumes there; the latent U-Net starts at step 0
            print(f"[zoo] --resume: {out} has no latent U-Net checkpoint yet; it starts from step 0")
            args.resume = False
        else:
            raise FileNotFoundError(f"--resume: no checkpoint at {out / 'checkpoint.pt'}; drop --resume to start fresh")
    check_out_dir(out, args.resume, args.overwrite)  # before loading data and building the model
    profile = train_profile(args.profile, out, args.resume)
    device = _device(args.device, profile)
    dist_info = None
    if launched_by_torchrun():  # torchrun --nproc_per_node N -m ldmcourse train ...: one process per device
        dist_info = setup("cpu" if device.type == "cpu" else "auto")
        device = dist_info.device
    rank, world = (dist_info.rank, dist_info.world) if dist_info else (0, 1)
    recipe = get_recipe(args.model)
    sizes = recipe.sizes.get(profile, {})
    file_cfg = read_config_file(args.config)

    data_cfg = dataclasses.asdict(build_config(DataConfig, sizes.get("data", {}), file_cfg.get("data", {}),
                                              {k: v for k, v in vars(args).items() if k in DATA_FIELDS}, where="data: "))
    fit_cfg = build_config(FitConfig, sizes.get("fit", {}), file_cfg.get("fit", {}), _explicit(args, "fit__"), where="fit: ")

    train_data = load_dataset(data_cfg["dataset"], "train", size=data_cfg["image_size"], root=data_cfg["data_root"], n=data_cfg["n_train"])
    test_data = load_dataset(train_data.name, "test", size=data_cfg["image_size"], root=data_cfg["data_root"], download=False)
    c, h, w = train_data[0][0].shape
    model_layers = [sizes.get("model", {}), file_cfg.get("model", {}), _explicit(args, "model__")]
    auto = {k: v for k, v in (("in_channels", c), ("image_size", h)) if k in {f.name for f in dataclasses.fields(recipe.model_config)}}
    model_cfg = build_config(recipe.model_config, auto, *model_layers, where="model: ")
    fit_data = recipe.training_data(model_cfg, train_data)  # e.g. captioned digits (ldm --text); refused early
    from .zoo import resolve_first_stage, resolve_teacher  # --first-stage auto (ldm, flow), --reflow-from zoo:NAME (flow)

    model_cfg = resolve_first_stage(recipe.name, model_cfg, data_cfg, profile, device, args)
    model_cfg = resolve_teacher(model_cfg, profile, device)
    if hasattr(model_cfg, "first_stage"):  # latent diffusion: the first stage comes from its checkpoint, same data
        check_first_stage({**model_layers[1], **model_layers[2]}, model_cfg.first_stage, train_data.name)
    torch.manual_seed(fit_cfg.seed)  # the initial weights: recent PyTorch seeds its global generator per process
    model = recipe.build(model_cfg)

    meta = {
        "kind": recipe.name, "model_config": dataclasses.asdict(model_cfg), "dataset": train_data.name,
        "dataset_requested": data_cfg["dataset"], "image_shape": [c, h, w], "data_root": data_cfg["data_root"],
        "n_train": len(train_data), "profile": profile, "ldmcourse": __version__,
    }
    out.mkdir(parents=True, exist_ok=True)
    pic_gen_seed = fit_cfg.seed + 12345

    def picture_fn(m, step):
        m.eval()
        g = torch.Generator(device=device).manual_seed(pic_gen_seed)
        images, name = recipe.picture(m, model_cfg, test_data, device, g)
        save_grid(images, out / name, nrow=8)
        save_grid(images, out / "pictures" / f"step{step:07d}_{name}", nrow=8)
        picture_fn.name = name

    n_params = sum(p.numel() for p in model.parameters())
    if rank == 0:
        print(f"[ldmcourse] train {recipe.name} on {train_data.name} ({len(train_data)} images, {c}x{h}x{w}); "
              f"profile={profile} device={device} params={n_params:,} steps={fit_cfg.steps} batch={fit_cfg.batch_size}"
              + (f" (global; {world} processes)" if world > 1 else ""))
    try:
        res = fit(model, recipe.loss(model_cfg), fit_data, fit_cfg, device=device, out_dir=out, resume=args.resume,
                  overwrite=args.overwrite, reset_optimizer=args.reset_optimizer, picture_fn=picture_fn, meta=meta, rank=rank, world=world,
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
    tmp = out / "metrics.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, out / "metrics.json")
    print(f"[ldmcourse] wrote {out / 'checkpoint.pt'}, {out / 'metrics.json'}, {out / getattr(picture_fn, 'name', 'samples.png')}")
    return summary


def load_model(ckpt: str, device: torch.device, use_ema: bool = True):
    """(model, meta, recipe) from a checkpoint written by ``ldmcourse train``."""
    from .checkpoint import load_checkpoint
    from .recipes import get_recipe
    from .runconfig import check_finite_state

    ck = load_checkpoint(ckpt)
    meta = ck["meta"]
    recipe = get_recipe(meta["kind"])
    model = recipe.build(recipe.config(meta["model_config"]))  # migrates a previous config layout
    state = ck["ema"] if use_ema and ck.get("ema") is not None else ck["model"]
    check_finite_state(state, "EMA weights" if state is ck.get("ema") else "weights", ckpt)
    model.load_state_dict(state)
    return model.to(device).eval(), meta, recipe
