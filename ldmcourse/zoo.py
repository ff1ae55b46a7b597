"""The model zoo: one named entry per model that a notebook or a command consumes, trained once and cached.

An entry is a recipe + dataset + config overrides; with a profile it resolves to the full configs
``ldmcourse train`` would use (dataclass defaults < the recipe's ``sizes[profile]`` < the entry's
overrides). The cache folder is named by a hash of that fully resolved config (less the logging and
checkpoint intervals, which cannot change the weights; entries checkpoint every tenth of their steps)::

    runs/zoo/<name>-<profile>-<hash>/checkpoint.pt     (written by `ldmcourse train`, nothing else)
    runs/zoo/<name>-<profile>-<hash>/zoo.json          (the record: key, command, seconds, steps, machine)

so a changed definition (an override, a recipe's sizes, a dataclass default) trains a new entry
instead of silently reusing a stale one. ``get(name, profile=...)`` returns the model, training it on
first use with the very code of ``ldmcourse train`` (it builds that command's arguments and calls
``run.cmd_train``, the code of ``ldmcourse train``), resuming a half-trained entry, and naming a corrupt checkpoint with the command
that rebuilds it. From the shell::

    ldmcourse zoo list
    ldmcourse zoo train ldm-mnist5k --profile cpu
    ldmcourse zoo train --all

``--first-stage auto`` (the default of ``ldmcourse train ldm``; accepted by every recipe with a first stage,
e.g. ``train flow``) is resolved here too (:func:`resolve_first_stage`): the zoo's KL autoencoder for that
dataset and profile, reused or trained.

The cache root is ``$LDMCOURSE_ZOO``, else ``runs/zoo`` of the checkout (``./runs/zoo`` when installed).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import shlex
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

ZOO_VERSION = 1  # part of every key: bump to invalidate every cached entry at once
BOOKKEEPING = ("progress", "log_every", "ckpt_every", "sample_every")  # FitConfig fields left out of the key


@dataclass(frozen=True)
class Entry:
    """One model of the zoo: ``ldmcourse train RECIPE --dataset DATASET`` plus ``model``/``fit``/``data`` overrides
    (``profile_fit``: fit overrides for one profile only, e.g. the steps of the cpu profile).

    ``model["first_stage"] = "auto"`` (ldm, flow) means the zoo's first stage for the same dataset and profile;
    ``model["reflow_from"] = "zoo:NAME"`` (flow) the zoo entry NAME at the same profile as the teacher (trained first).
    """

    name: str
    recipe: str
    dataset: str
    description: str
    model: dict[str, Any] = field(default_factory=dict)
    fit: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    profile_fit: dict[str, dict[str, Any]] = field(default_factory=dict)  # {profile: fit overrides} on top of ``fit``


ENTRIES: dict[str, Entry] = {}

# Training steps of the two text entries (issue 17): the same seconds of training for the U-Net and the DiT
# (fit has no time limit, so each gets the steps that fill the budget at its own measured step time). Measured
# together (fit, batch 64, 60 steps each, 2 threads, 2026-12-02, load 2.8): U-Net 80.8 ms, DiT 78.3 ms per step;
# 4,000 U-Net steps (about 5.4 min, well inside issue 17's 15-minute budget) and 4,000 x 80.8 / 78.3 DiT steps.
TEXT_STEPS = {"unet": 4000, "dit": 4130}


def register(entry: Entry) -> Entry:
    ENTRIES[entry.name] = entry
    return entry


for _e in (
    Entry("kl-f4-mnist5k", "kl-autoencoder", "mnist5k",
          "f=4 KL autoencoder (32x32 -> 4x8x8): latent diffusion's first stage (notebooks 08, 09)"),
    Entry("ldm-mnist5k", "ldm", "mnist5k",
          "class-conditional latent U-Net on kl-f4-mnist5k, label dropout for classifier-free guidance (notebooks 08, 09)",
          model=dict(first_stage="auto", num_classes=10, p_uncond=0.1)),
    Entry("pixel-mnist5k", "ldm", "mnist5k",
          "the same class-conditional U-Net in pixel space: latent diffusion's baseline (notebooks 08, 09)",
          model=dict(first_stage="none", num_classes=10, p_uncond=0.1)),
    # flow matching (issue 16, notebook 11): the sizes of `train flow` are those of `train ldm` per profile, so each
    # is the same class-conditional U-Net, budget and latent space (the zoo's first stage) as ldm-mnist5k
    Entry("rf-mnist5k", "flow", "mnist5k",
          "rectified flow (linear path, logit-normal t) in ldm-mnist5k's latent space, same U-Net and budget (notebook 11)",
          model=dict(first_stage="auto", path="linear", t_sampling="logit_normal", num_classes=10, p_uncond=0.1)),
    Entry("rf-uniform-mnist5k", "flow", "mnist5k",
          "rf-mnist5k with uniform t (Esser et al. 2024's comparison; notebook 11)",
          model=dict(first_stage="auto", path="linear", t_sampling="uniform", num_classes=10, p_uncond=0.1)),
    Entry("fm-vp-mnist5k", "flow", "mnist5k",
          "flow matching on the VP diffusion path, else as rf-mnist5k (Lipman et al. 2023's OT-vs-diffusion path; notebook 11)",
          model=dict(first_stage="auto", path="vp", t_sampling="logit_normal", num_classes=10, p_uncond=0.1)),
    # reflow and one-step distillation (Liu et al. 2022) of rf-mnist5k: the pairs (the recipe's reflow_pairs, 10,000 for
    # cpu) come from the teacher's ODE at guidance 3 (ldm-mnist5k's default), so the student learns the guided map and
    # samples with guidance 1 (no unconditional pass, hence no label dropout); the distilled model regresses rf2's own map
    Entry("rf2-mnist5k", "flow", "mnist5k",
          "2-rectified flow: rf-mnist5k retrained on its own (noise, guided sample) pairs (notebook 11)",
          model=dict(reflow_from="zoo:rf-mnist5k", reflow_guidance=3.0, p_uncond=0.0)),
    Entry("rf2-1step-mnist5k", "flow", "mnist5k",
          "rf2-mnist5k distilled to one Euler step on its own pairs (notebook 11)",
          model=dict(reflow_from="zoo:rf2-mnist5k", one_step=True, p_uncond=0.0)),
    # issue 17 (notebook 12): text-conditioned, the same first stage; the two backbones at the equal-parameter
    # configs of ldmcourse.text_ldm.notebook12_configs() (tests/test_text_wiring.py checks they agree), and at equal
    # training time: the steps of each (TEXT_STEPS, cpu profile) come from both step times measured together
    Entry("text-ldm-mnist5k", "ldm", "mnist5k",
          "text-conditioned latent U-Net (cross-attention on captions) on kl-f4-mnist5k (notebook 12)",
          model=dict(first_stage="auto", text=True, backbone="unet", p_uncond=0.1, base_channels=32, channel_mult=(1, 2, 2),
                     num_res_blocks=1, attention=(4,), head_dim=32, text_dim=64, text_depth=2, text_heads=4),
          profile_fit={"cpu": dict(steps=TEXT_STEPS["unet"])}),
    Entry("text-dit-mnist5k", "ldm", "mnist5k",
          "text-conditioned latent DiT (adaLN-Zero, the same text encoder and cross-attention) on kl-f4-mnist5k (notebook 12)",
          model=dict(first_stage="auto", text=True, backbone="dit", p_uncond=0.1, dit_patch_size=2, dit_hidden_dim=96,
                     dit_depth=6, dit_heads=4, text_dim=64, text_depth=2, text_heads=4),
          profile_fit={"cpu": dict(steps=TEXT_STEPS["dit"])}),
    Entry("ddpm-fashion-mnist", "ddpm", "fashion-mnist",
          "pixel-space DDPM on Fashion-MNIST, cosine schedule, eps prediction (notebooks 05, 10)",
          fit=dict(sample_every=500)),  # periodic samples for notebook 05 (bookkeeping: not in the key)
    Entry("classifier-mnist5k", "classifier", "mnist5k", "course classifier: FID/KID features, class agreement"),
    Entry("classifier-fashion-mnist", "classifier", "fashion-mnist", "course classifier on Fashion-MNIST (FID/KID features)"),
    Entry("classifier-digits", "classifier", "digits", "course classifier on scikit-learn's 8x8 digits (FID/KID features)"),
):
    register(_e)

FIRST_STAGE_RECIPE = "kl-autoencoder"


class ZooError(KeyError):
    """An unknown entry name."""

    def __str__(self) -> str:  # KeyError would print the message with quotes
        return str(self.args[0])


# ----------------------------------------------------------------------------------------------
# resolution: entry + profile -> full configs -> key -> folder
# ----------------------------------------------------------------------------------------------

def root() -> Path:
    env = os.environ.get("LDMCOURSE_ZOO")
    if env:
        return Path(env)
    checkout = Path(__file__).resolve().parents[1]
    return checkout / "runs" / "zoo" if (checkout / "pyproject.toml").exists() else Path("runs") / "zoo"


def entry(name: str) -> Entry:
    if name not in ENTRIES:
        raise ZooError(f"no zoo entry {name!r}; known entries: {', '.join(sorted(ENTRIES))}")
    return ENTRIES[name]


def first_stage_entry(dataset: str, data: dict[str, Any] | None = None) -> Entry:
    """The zoo's first stage for ``dataset``: the registered KL entry, else the same definition on ``dataset``."""
    from .run import DATA_FIELDS

    key = dataset.strip().lower().replace("_", "-")
    base = next((e for e in ENTRIES.values() if e.recipe == FIRST_STAGE_RECIPE and e.dataset == key), None)
    if base is None:
        template = ENTRIES.get("kl-f4-mnist5k") or Entry("kl-f4", FIRST_STAGE_RECIPE, key, "")
        base = dataclasses.replace(template, name=f"kl-f4-{key}", dataset=key,
                                   description=f"f=4 KL autoencoder on {key} (derived from kl-f4-mnist5k)")
    have = {**DATA_FIELDS, **base.data}
    extra = {k: v for k, v in (data or {}).items() if k != "dataset" and have.get(k) != v}
    return dataclasses.replace(base, data={**base.data, **extra}) if extra else base


@dataclass
class Resolved:
    """An entry at a profile: its full configs, key and folder."""

    entry: Entry
    profile: str
    data: dict[str, Any]
    fit: dict[str, Any]
    model: dict[str, Any]
    first_stage: "Resolved | None"
    key: str
    teacher: "Resolved | None" = None  # model["reflow_from"] = "zoo:NAME": that entry, trained before this one

    @property
    def dir(self) -> Path:
        return root() / f"{self.entry.name}-{self.profile}-{self.key}"

    @property
    def checkpoint(self) -> Path:
        return self.dir / "checkpoint.pt"

    @property
    def command(self) -> str:
        return f"ldmcourse zoo train {self.entry.name} --profile {self.profile}"

    def train_argv(self, device: str = "auto", resume: bool = False) -> list[str]:
        return train_argv(self, device, resume)


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


def resolve(name_or_entry: str | Entry, profile: str | None = None) -> Resolved:
    """Full configs of an entry at ``profile``, the same precedence as ``ldmcourse train``."""
    from .run import DATA_FIELDS, build_config
    from .profiles import get_profile
    from .recipes import get_recipe
    from .train import FitConfig

    e = entry(name_or_entry) if isinstance(name_or_entry, str) else name_or_entry
    profile = get_profile(profile)
    if profile in e.profile_fit:  # this profile's own fit overrides become the entry's (and its command's flags)
        e = dataclasses.replace(e, fit={**e.fit, **e.profile_fit[profile]}, profile_fit={})
    recipe = get_recipe(e.recipe)
    sizes = recipe.sizes.get(profile, {})
    data = {**DATA_FIELDS, **sizes.get("data", {}), **e.data, "dataset": e.dataset}
    fit = dataclasses.asdict(build_config(FitConfig, sizes.get("fit", {}), e.fit, where=f"zoo {e.name} fit: "))
    if not fit["ckpt_every"]:  # checkpoints along the way, so an interrupted entry has something to resume
        e = dataclasses.replace(e, fit={**e.fit, "ckpt_every": max(1, fit["steps"] // 10)})
        fit["ckpt_every"] = e.fit["ckpt_every"]
    model_over = dict(e.model)
    fs = None
    if model_over.get("first_stage", _default(recipe.model_config, "first_stage")) == "auto":  # ldm, flow: a latent model
        fs = resolve(first_stage_entry(e.dataset, {k: data[k] for k in ("image_size", "data_root")}), profile)
        model_over["first_stage"] = "auto"
    model = dataclasses.asdict(build_config(recipe.model_config, sizes.get("model", {}), model_over, where=f"zoo {e.name} model: "))
    teacher_name = _teacher_name(e)
    teacher = resolve(teacher_name, profile) if teacher_name else None  # its key names the teacher's folder
    # what the key hashes: the fully resolved config, less the cache location and the bookkeeping that
    # cannot change the weights (fit resumes exactly, whatever the checkpoint and logging intervals)
    fit_key = {k: v for k, v in fit.items() if k not in BOOKKEEPING}
    model_key = {k: v for k, v in model.items() if model.get("text") or k not in _text_fields()}  # inert with text off
    identity = {"zoo": ZOO_VERSION, "recipe": e.recipe, "profile": profile, "data": data, "fit": fit_key, "model": model_key,
                "first_stage": fs.dir.name if fs is not None else None}
    if teacher is not None:  # only when there is one: the other entries keep their keys
        identity["teacher"] = teacher.dir.name
    key = hashlib.sha256(json.dumps(_jsonable(identity), sort_keys=True, default=str).encode()).hexdigest()[:10]
    return Resolved(e, profile, data, fit, model, fs, key, teacher)


def _zoo_name(value: Any) -> str | None:
    """NAME of a ``reflow_from = "zoo:NAME"`` value (a teacher that is a zoo entry), else None."""
    return value[len("zoo:"):] if isinstance(value, str) and value.startswith("zoo:") else None


def _teacher_name(e: Entry) -> str | None:
    """The teacher entry of a reflowed or distilled flow entry, else None."""
    return _zoo_name(e.model.get("reflow_from", ""))


def _text_fields() -> set[str]:
    """The text-conditioning fields (``text_ldm.TextOptions``): with ``text`` off they cannot change the weights,
    so they stay out of the key (the entries trained before text existed keep their keys)."""
    from .text_ldm import TextOptions

    return {f.name for f in dataclasses.fields(TextOptions)}


def _default(cls: type, name: str) -> Any:
    f = {f.name: f for f in dataclasses.fields(cls)}.get(name)
    return None if f is None or f.default is dataclasses.MISSING else f.default


def _flag_values(v: Any) -> list[str] | None:
    """``v`` as command-line words, or None when the flags cannot say it (an empty tuple)."""
    if isinstance(v, (list, tuple)):
        return [str(x) for x in v] if v else None
    if v is None:
        return ["none"]
    if isinstance(v, bool):
        return ["true" if v else "false"]
    return [str(v)]


def train_argv(r: Resolved, device: str = "auto", resume: bool = False) -> list[str]:
    """The ``ldmcourse train ...`` arguments that train this entry (only the entry's own overrides are spelt out:
    the rest comes from the recipe's sizes for the profile, exactly as for a user's command)."""
    from .run import train_parser as build_parser

    e = r.entry
    argv = ["train", e.recipe, "--dataset", e.dataset, "--profile", r.profile, "--out", str(r.dir)]
    parser = build_parser(argv)
    train_parser = next(a for a in parser._actions if hasattr(a, "choices") and isinstance(a.choices, dict)).choices["train"]
    dests = {a.dest: a.option_strings[0] for a in train_parser._actions if a.option_strings}
    model_over = {**e.model, "reflow_from": str(r.teacher.checkpoint)} if r.teacher is not None else e.model
    for prefix, over in (("", e.data), ("fit__", e.fit), ("model__", model_over)):
        for k, v in over.items():
            flag, words = dests.get(prefix + k), _flag_values(v)
            if flag is None or words is None:
                raise ValueError(f"zoo entry {e.name}: {k}={v!r} cannot be written as an `ldmcourse train` flag")
            if prefix == "" and k == "dataset":
                continue
            argv += [flag, *words]
    if device != "auto":
        argv += ["--device", device]
    if resume:
        argv.append("--resume")
    return argv


# ----------------------------------------------------------------------------------------------
# state of an entry on disk
# ----------------------------------------------------------------------------------------------

def record(r: Resolved) -> dict[str, Any] | None:
    p = r.dir / "zoo.json"
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError:
        return None


def status(r: Resolved) -> str:
    """``trained`` | ``half-trained`` | ``missing``."""
    rec = record(r)
    if rec is not None and rec.get("complete") and r.checkpoint.exists():
        return "trained"
    return "half-trained" if r.checkpoint.exists() else "missing"


def machine(device: torch.device | str) -> dict[str, Any]:
    device = torch.device(device)
    return {"platform": platform.platform(), "python": platform.python_version(), "torch": str(torch.__version__),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": str(device),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "loadavg": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None}


def _rebuild_hint(r: Resolved) -> str:
    return f"{r.command} --rebuild"


def _corrupt(r: Resolved, err: Exception) -> RuntimeError:
    from .checkpoint import CheckpointError

    return CheckpointError(f"the zoo's cached checkpoint {r.checkpoint} of {r.entry.name!r} (profile {r.profile}) is corrupt "
                           f"({err}); rebuild it with: {_rebuild_hint(r)}")


def _checkpoint_step(r: Resolved) -> int:
    from .checkpoint import CheckpointError, load_checkpoint

    try:
        return int(load_checkpoint(r.checkpoint)["step"])
    except CheckpointError as e:
        raise _corrupt(r, e) from e


# ----------------------------------------------------------------------------------------------
# train / get
# ----------------------------------------------------------------------------------------------

def train(name: str | Entry, profile: str | None = None, device: str = "auto", rebuild: bool = False,
          verbose: bool = True) -> Resolved:
    """Make sure the entry is trained (train, resume or reuse); returns its :class:`Resolved`."""
    from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
    from .run import cmd_train, train_parser as build_parser

    r = resolve(name, profile)
    if rebuild and r.dir.exists():
        shutil.rmtree(r.dir)
    if r.first_stage is not None:  # a latent entry's first stage comes first (and is then found by cmd_train)
        train(r.first_stage.entry, r.profile, device=device, verbose=verbose)
    if r.teacher is not None:  # so is a reflowed model's teacher (whose own first stage comes before it)
        train(r.teacher.entry, r.profile, device=device, verbose=verbose)
    state = status(r)
    if state == "trained":
        return r
    rec = record(r) or {}
    sessions = list(rec.get("sessions", []))
    resume = state == "half-trained"
    if resume:
        start = _checkpoint_step(r)  # a corrupt half-trained checkpoint: named, with the rebuild command
        if verbose:
            print(f"[zoo] {r.entry.name} ({r.profile}) is half-trained (step {start} of {r.fit['steps']}): resuming")
    else:
        start = 0
        if verbose:
            print(f"[zoo] {r.entry.name} ({r.profile}) is not cached: training it into {r.dir}\n[zoo]   = "
                  + shlex.join(["ldmcourse", *train_argv(r, device)]))
    argv = train_argv(r, device, resume)
    args = build_parser(argv).parse_args(argv)
    t0, summary, session = time.perf_counter(), None, {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                                       "from_step": start}
    try:
        summary = cmd_train(args)
    except CheckpointError as e:
        raise _corrupt(r, e) from e
    finally:  # an interrupted session still counts (Ctrl-C in a notebook, an error)
        session["seconds"] = round(time.perf_counter() - t0, 2)
        session["loadavg"] = [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None
        if summary is not None:
            session["to_step"], session["train_seconds"] = summary["steps"], summary["train_seconds"]
        sessions.append(session)
        if r.dir.exists():
            _write_record(r, {"complete": False, "sessions": sessions})
    steps = int(summary["steps"])
    complete = steps >= int(r.fit["steps"])
    rec = {
        "entry": r.entry.name, "profile": r.profile, "key": r.key, "recipe": r.entry.recipe, "dataset": r.entry.dataset,
        "description": r.entry.description, "complete": complete, "steps": steps,
        "train_seconds": round(sum(s.get("train_seconds", s["seconds"]) for s in sessions), 2),
        "wall_seconds": round(sum(s["seconds"] for s in sessions), 2), "sessions": sessions,
        "command": r.command, "train_command": shlex.join(["ldmcourse", *train_argv(r, device)]),
        "machine": machine(summary["device"]), "first_stage": r.first_stage.dir.name if r.first_stage else None,
        **({"teacher": r.teacher.dir.name} if r.teacher is not None else {}),
        "eval": summary.get("eval"), "config": {"data": r.data, "fit": r.fit, "model": r.model},
    }
    _write_record(r, rec)
    if complete:  # the record also goes into the checkpoint's meta, so the one file says how it was made
        ck = load_checkpoint(r.checkpoint)
        ck["meta"] = {**ck["meta"], "zoo": json.loads(json.dumps({k: v for k, v in rec.items() if k != "config"}, default=str))}
        save_checkpoint(r.checkpoint, ck)
    return r


def _write_record(r: Resolved, rec: dict[str, Any]) -> None:
    p = r.dir / "zoo.json"
    old = record(r) or {}
    tmp = p.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_jsonable({**old, **rec}), indent=2, default=str))
    os.replace(tmp, p)


def path(name: str, profile: str | None = None, device: str = "auto", train_missing: bool = True) -> Path:
    """The checkpoint of entry ``name`` (trained first if needed and ``train_missing``)."""
    r = train(name, profile, device=device) if train_missing else resolve(name, profile)
    return r.checkpoint


def get(name: str, profile: str | None = None, device: str | torch.device = "cpu", verbose: bool = True,
        use_ema: bool = True):
    """The model of entry ``name`` at ``profile`` on ``device``, trained on first use; ``model.zoo`` is its record.

    Unknown names list the known ones; a corrupt cached checkpoint is named with the command that rebuilds it.
    """
    from .checkpoint import CheckpointError
    from .run import load_model

    dev = torch.device(device)
    r = train(name, profile, device=str(dev), verbose=verbose)
    try:
        model, meta, _ = load_model(str(r.checkpoint), dev, use_ema=use_ema)
    except (CheckpointError, RuntimeError, KeyError) as e:
        raise _corrupt(r, e) from e
    model.zoo = record(r)
    model.meta = meta
    if verbose:
        print(describe(r))
    return model


def describe(r: Resolved | str, profile: str | None = None) -> str:
    """One paragraph: which entry, how it was trained, how long it took."""
    r = resolve(r, profile) if isinstance(r, str) else r
    rec = record(r) or {}
    if not rec.get("complete"):
        return f"[zoo] {r.entry.name} ({r.profile}): {status(r)}; train it with `{r.command}`"
    m = rec.get("machine", {})
    return (f"[zoo] {r.entry.name} ({r.profile}, key {r.key}): {rec['steps']} steps in {rec['train_seconds']:.0f} s of training "
            f"over {len(rec['sessions'])} session(s) on {m.get('device')} ({m.get('cpu_count')} cpus, "
            f"{m.get('torch_threads')} threads, load {m.get('loadavg')})\n[zoo]   {r.checkpoint}\n"
            f"[zoo]   reproduce: {rec['command']}  (= {rec['train_command']})")


def list_entries(profile: str | None = None) -> list[dict[str, Any]]:
    rows = []
    for name in sorted(ENTRIES):
        r = resolve(name, profile)
        rec = record(r) or {}
        rows.append({"name": name, "recipe": r.entry.recipe, "dataset": r.entry.dataset, "profile": r.profile,
                     "status": status(r), "steps": rec.get("steps"), "train_seconds": rec.get("train_seconds"),
                     "dir": str(r.dir), "description": r.entry.description})
    return rows


# ----------------------------------------------------------------------------------------------
# `ldmcourse train ldm --first-stage auto`
# ----------------------------------------------------------------------------------------------

def _ready(e: str | Entry, profile: str, device: torch.device | str, what: str) -> Resolved:
    """Entry ``e`` reused or trained (a half-trained one resumes), said with :func:`describe`; refused if unfinished."""
    r = train(e, profile, device=str(device))
    if status(r) != "trained":
        raise RuntimeError(f"{what} {r.dir} stopped before its last step; finish it with `{r.command}`")
    print(describe(r))
    return r


def resolve_first_stage(recipe_name: str, model_cfg: Any, data_cfg: dict[str, Any], profile: str,
                        device: torch.device | str, args: Any = None) -> Any:
    """For a latent model (``ldm``, ``flow``) with ``first_stage == "auto"``: reuse or train the zoo's first stage
    for this dataset and profile and point ``model_cfg.first_stage`` at its checkpoint (a half-trained first
    stage resumes). (``run.cmd_train`` starts the U-Net fresh on ``--resume`` when it has no checkpoint yet.)"""
    if getattr(model_cfg, "first_stage", None) != "auto":
        return model_cfg
    fs = first_stage_entry(data_cfg["dataset"], {k: data_cfg.get(k) for k in ("image_size", "data_root")})
    model_cfg.first_stage = str(_ready(fs, profile, device, "the first stage").checkpoint)
    return model_cfg


def resolve_teacher(model_cfg: Any, profile: str, device: torch.device | str) -> Any:
    """``ldmcourse train flow --reflow-from zoo:NAME``: reuse or train the zoo entry NAME at this profile and point
    ``model_cfg.reflow_from`` at its checkpoint (as the zoo's own reflow entries do); anything else is left as is."""
    name = _zoo_name(getattr(model_cfg, "reflow_from", ""))
    if name is None:
        return model_cfg
    if entry(name).recipe != "flow":  # an unknown name lists the known entries
        raise ValueError(f"--reflow-from zoo:{name}: a teacher must be a flow entry, not a {entry(name).recipe!r} one; "
                         f"flow entries: {', '.join(sorted(n for n, e in ENTRIES.items() if e.recipe == 'flow'))}")
    model_cfg.reflow_from = str(_ready(name, profile, device, "the teacher").checkpoint)
    return model_cfg

