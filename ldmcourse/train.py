"""``fit``: the one small training loop every model in the course uses.

The network never owns the process: ``fit`` takes a model, a ``loss_fn(model, batch, generator)``
that returns ``(loss, logs)``, and data. It provides

- AdamW, linear warm-up then cosine decay of the learning rate, gradient clipping;
- autocast (bf16 on CPU/CUDA; fp16 on CUDA with a GradScaler);
- an EMA of the weights (what you sample from);
- progress with the loss (:class:`ldmcourse.utils.Progress`: tqdm on a terminal, plain lines in logs);
  a JSON-lines metrics log that stays in step order across resumes;
- a callback that saves a picture every N steps;
- checkpoints every N steps, written atomically (temp file + ``os.replace``) and read back with
  ``torch.load(weights_only=True)``;
- ``resume=True`` continues *exactly*: data order, noise and dropout RNGs, optimiser, scaler, EMA
  (a test trains 2N steps straight and N + resume + N: same weights);
- a NaN/inf guard (the loss at every step; weights, buffers and the EMA before every save) that stops
  with a clear message and keeps the last good checkpoint;
- SIGINT (Ctrl-C) and SIGTERM save a checkpoint of the current step, say where, and raise
  :class:`~ldmcourse.rundir.TrainingInterrupted` (a ``KeyboardInterrupt``);
- a run folder that is never lost by mistake (:mod:`ldmcourse.rundir`): a fresh run into a folder holding
  another run's checkpoint is refused unless ``overwrite=True``; a lock refuses a second concurrent run;
  temp files of interrupted writes are removed;
- refusal to resume a different run: another model or config, dataset, batch size, seed, lr, warm-up...
  (only ``steps``, the logging/checkpoint intervals and the device may change), unless
  ``reset_optimizer=True``: then the weights, the EMA and the data/noise streams continue, with a fresh
  optimiser and LR schedule (warm-up from the current step to the new lr). The recovery from a NaN.

Data order is a pure function of (seed, step), so resuming needs no DataLoader state:
epoch ``e`` uses ``randperm(N, seed + e)``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
from torch.utils.data import Dataset, default_collate

from .checkpoint import CheckpointMismatch, load_checkpoint, remove_temp_files, save_checkpoint
from .distributed import gather_objects, mean_over_ranks
from .optim import EMA, autocast_context, lr_lambda
from .rundir import (FREE_FIT_FIELDS, RunLock, StopSignals, TrainingInterrupted, check_out_dir, describe_differences,
                     open_metrics_log, resume_differences)
from .utils import Progress, check_choice, check_range

LossFn = Callable[[nn.Module, Any, torch.Generator], "tuple[torch.Tensor, dict[str, float]]"]


@dataclass
class FitConfig:
    """How long and how to optimise. Sized per profile by each experiment (see ``profiles.for_profile``)."""

    steps: int = 1000
    batch_size: int = 128
    lr: float = 2e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup: int = 100  # linear warm-up steps, then cosine decay to lr * min_lr_ratio
    min_lr_ratio: float = 0.1
    grad_clip: float | None = 1.0  # max global grad norm; None disables
    ema_decay: float | None = 0.999  # None: no EMA
    ema_start: int = 0  # EMA copies the weights until this step, then averages
    ema_every: int = 1  # update the EMA every k steps with decay**k (takes its cost off most steps)
    amp: str = "none"  # "none" | "bf16" | "fp16" (fp16: CUDA only, uses a GradScaler)
    seed: int = 0
    log_every: int = 50
    sample_every: int = 0  # 0: only at the end
    ckpt_every: int = 0  # 0: only at the end
    progress: bool = True
    fused_adam: bool = False  # fused AdamW kernel (CUDA only)

    def __post_init__(self):
        check_choice("amp", self.amp, ("none", "bf16", "fp16"))
        for name in ("steps", "batch_size", "log_every", "ema_every"):
            check_range(name, getattr(self, name), 1, integer=True)
        for name in ("warmup", "sample_every", "ckpt_every", "ema_start", "seed"):
            check_range(name, getattr(self, name), 0, integer=True, hint="0 turns it off" if name.endswith("every") else "")
        check_range("lr", self.lr, 0, lo_open=True)
        check_range("weight_decay", self.weight_decay, 0)
        check_range("min_lr_ratio", self.min_lr_ratio, 0, 1)
        self.betas = tuple(self.betas)  # type: ignore[assignment]
        if len(self.betas) != 2:
            raise ValueError(f"betas={self.betas!r} must be two numbers, e.g. 0.9 0.999")
        for b in self.betas:
            check_range("betas entry", b, 0, 1, hi_open=True, hint=f"betas={self.betas!r}")
        if self.grad_clip is not None:
            check_range("grad_clip", self.grad_clip, 0, lo_open=True, hint="a max gradient norm; none disables clipping")
        if self.ema_decay is not None:
            check_range("ema_decay", self.ema_decay, 0, 1, lo_open=True, hi_open=True, hint="e.g. 0.999; none disables the EMA")


class NonFiniteLossError(FloatingPointError):
    """The loss, a weight, a buffer or the EMA became NaN or inf; the last good checkpoint is untouched."""


@dataclass
class FitResult:
    model: nn.Module
    ema: nn.Module | None
    history: list[dict[str, float]] = field(default_factory=list)
    step: int = 0
    seconds: float = 0.0

    @property
    def best_model(self) -> nn.Module:
        """The EMA model when there is one (what to sample from), else the trained model."""
        return self.ema if self.ema is not None else self.model


# ----------------------------------------------------------------------------------------------
# pieces
# ----------------------------------------------------------------------------------------------

def batch_indices(n: int, batch_size: int, step: int, seed: int, rank: int = 0, world: int = 1) -> torch.Tensor:
    """Indices of the batch for global ``step``: a pure function of (n, batch_size, step, seed).

    Each epoch is a fresh permutation seeded by ``seed + epoch``; batches never straddle epochs
    (the last incomplete batch is dropped). With ``world > 1`` each rank takes its slice of the
    global batch, so the union over ranks equals the single-process batch.
    """
    per_epoch = max(1, n // batch_size)
    epoch, i = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    idx = perm[i * batch_size:(i + 1) * batch_size] if n >= batch_size else perm
    return idx[rank::world] if world > 1 else idx


def get_batch(data: Dataset, idx: torch.Tensor):
    if hasattr(data, "get_batch"):
        return data.get_batch(idx)
    return default_collate([data[int(i)] for i in idx])


def to_device(batch, device: torch.device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _first_nonfinite(module: nn.Module) -> str | None:
    """Name of the first parameter or floating-point buffer (BatchNorm statistics...) holding NaN/inf."""
    for name, t in list(module.named_parameters()) + list(module.named_buffers()):
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return name
    return None


# ----------------------------------------------------------------------------------------------
# the loop
# ----------------------------------------------------------------------------------------------

def fit(
    model: nn.Module,
    loss_fn: LossFn,
    data: Dataset,
    cfg: FitConfig,
    *,
    device: str | torch.device = "cpu",
    out_dir: str | os.PathLike | None = None,
    resume: bool = False,
    overwrite: bool = False,
    reset_optimizer: bool = False,
    picture_fn: Callable[[nn.Module, int], None] | None = None,
    meta: dict[str, Any] | None = None,
    callbacks: list[Callable[[int, dict[str, float]], None]] | None = None,
    rank: int = 0,
    world: int = 1,
    wrap: Callable[[nn.Module], nn.Module] | None = None,
    stop_after: int | None = None,
) -> FitResult:
    """Train ``model`` on ``data`` with ``loss_fn``; see the module docstring.

    ``meta`` identifies the run (model kind and config, dataset...). It is stored in the checkpoint;
    resuming from a checkpoint whose ``meta["kind"]`` or ``meta["model_config"]`` differ is refused, and so
    is one whose FitConfig or data (``meta["dataset"]``, ``"n_train"``, ``"image_shape"``) differ in more than
    :data:`~ldmcourse.rundir.FREE_FIT_FIELDS`, unless ``reset_optimizer``. ``overwrite``: replace the run
    in ``out_dir`` (without it, a fresh run into a folder holding a checkpoint is refused).
    ``picture_fn(model, step)`` is called with the EMA model every ``cfg.sample_every`` steps and at
    the end (it typically writes ``samples.png``). ``rank``/``world``/``wrap`` are for
    DistributedDataParallel (``wrap`` wraps the model, see :mod:`ldmcourse.distributed`): rank ``r``
    trains on slice ``[r::world]`` of the global batch of ``cfg.batch_size``, the logged loss is
    the mean over ranks, and only rank 0 writes files.
    ``stop_after``: stop after this many steps in this call (checkpoint written), e.g. to split a long
    run into time-limited jobs; a later ``resume=True`` call continues exactly.
    """
    if world > 1 and cfg.batch_size % world:
        raise ValueError(f"batch_size={cfg.batch_size} is the global batch and must be divisible by the "
                         f"number of processes ({world}); use e.g. --batch-size {cfg.batch_size // world * world or world}")
    if reset_optimizer and not resume:
        raise ValueError("--reset-optimizer (reset_optimizer=True) applies to a resumed run: add --resume")
    n = len(data)  # type: ignore[arg-type]
    if n == 0:
        raise ValueError("the dataset is empty")
    is_main = rank == 0
    out = Path(out_dir) if out_dir is not None else None
    ckpt_path = out / "checkpoint.pt" if out is not None else None
    if out is not None:
        check_out_dir(out, resume, overwrite)
        if resume and not ckpt_path.exists():
            raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_path}; drop --resume to start fresh")
    elif resume:
        raise ValueError("resume=True needs out_dir (the folder holding checkpoint.pt)")
    lock = RunLock(out) if out is not None and is_main else None
    if lock is not None:
        out.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    try:
        return _fit(model, loss_fn, data, cfg, device, out, ckpt_path, resume, reset_optimizer, picture_fn,
                    dict(meta or {}), callbacks, rank, world, wrap, stop_after)
    finally:
        if lock is not None:
            lock.release()


def _fit(model, loss_fn, data, cfg, device, out, ckpt_path, resume, reset_optimizer, picture_fn, meta, callbacks,
         rank, world, wrap, stop_after) -> FitResult:
    device = torch.device(device)
    is_main, n = rank == 0, len(data)
    torch.manual_seed(cfg.seed + rank)
    model.to(device)
    train_model = wrap(model) if wrap is not None else model
    opt_kwargs = dict(lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    if cfg.fused_adam and device.type == "cuda":
        opt_kwargs["fused"] = True
    opt = torch.optim.AdamW(model.parameters(), **opt_kwargs)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
    ema = EMA(model, cfg.ema_decay) if cfg.ema_decay else None
    gen = torch.Generator(device=device).manual_seed(cfg.seed * 7919 + rank)
    history: list[dict[str, float]] = []
    resets: list[dict[str, Any]] = []
    step, phase_start, ck = 0, 0, None
    if out is not None and is_main:
        remove_temp_files(out)  # left by a process killed mid-write; we hold the lock
        remove_temp_files(out, "metrics.jsonl")
    if resume:
        ck = load_checkpoint(ckpt_path, expect=meta)  # tensors on CPU; load_state_dict moves them
        diffs = resume_differences(ck, meta, asdict(cfg))
        if diffs and not reset_optimizer:
            raise CheckpointMismatch(
                f"--resume would change {describe_differences(diffs)} of the run in {ckpt_path.parent}. A resumed run "
                f"continues the same run: only {', '.join(FREE_FIT_FIELDS)} and the device may change. Use the first run's "
                "values (its flags, --profile and --config), or add --reset-optimizer to continue these weights with a "
                "fresh optimiser and LR schedule (warm-up from this step) at the new values.")
        step = int(ck["step"])
        model.load_state_dict(ck["model"])
        if ema is not None:  # a run that had no EMA starts one from the weights it resumes
            ema.module.load_state_dict(ck["ema"] if ck.get("ema") is not None else ck["model"])
        resets = list(ck.get("resets", []))
        if reset_optimizer:
            phase_start = step
            resets.append({"step": step, "changed": {k: [a, b] for k, (a, b) in diffs.items()}})
            if is_main:
                print(f"[fit] --reset-optimizer at step {step}: fresh optimiser and LR schedule (warm-up {cfg.warmup} "
                      f"steps to lr={cfg.lr:g}), same weights and EMA" + (f"; changed {describe_differences(diffs)}" if diffs else ""))
        else:
            phase_start = int(ck.get("lr_phase_start", 0))
        gens, rngs = ck.get("generators"), ck.get("rngs")
        if world > 1 and (gens is None or len(gens) != world):
            raise CheckpointMismatch(f"{ckpt_path} was written by {len(gens) if gens else 1} process(es); "
                                     f"resume it with the same number of processes (now {world})")
        gen.set_state(gens[rank] if world > 1 else ck["generator"])
        _set_rng_state(rngs[rank] if world > 1 else ck["rng"], device)
        history = [h for h in ck.get("history", []) if h["step"] <= step]
        if step >= cfg.steps and is_main:
            print(f"[fit] checkpoint at {ckpt_path} is already at step {step} >= steps={cfg.steps}; nothing to do")
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg, start=phase_start))
    if ck is not None and not reset_optimizer:  # after LambdaLR(), which would set the lr of its step 0
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        scaler.load_state_dict(ck["scaler"])
    del ck

    def check_finite(step_now: int) -> None:
        for what, module in (("model", model), ("EMA", ema.module if ema else None)):
            bad = _first_nonfinite(module) if module is not None else None
            if bad:  # never overwrite a good checkpoint with a broken model
                kept = f"kept the last good checkpoint {ckpt_path}" if ckpt_path and ckpt_path.exists() else "nothing saved"
                raise NonFiniteLossError(f"the {what}'s {bad} is not finite at step {step_now}; {kept}. "
                                         "Try a lower --lr or --amp none, then --resume --reset-optimizer.")

    def save(step_now: int) -> None:
        if ckpt_path is None:
            return
        # every rank's noise generator, so that resuming with the same world size is exact
        gens = gather_objects(gen.get_state(), world)
        rngs = gather_objects(_rng_state(device), world)
        if not is_main:
            return
        check_finite(step_now)
        save_checkpoint(ckpt_path, {
            "meta": meta, "fit_config": asdict(cfg), "step": step_now, "lr_phase_start": phase_start, "resets": resets,
            "model": model.state_dict(), "ema": ema.module.state_dict() if ema else None,
            "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "scaler": scaler.state_dict(),
            "generator": gen.get_state(), "rng": _rng_state(device), "history": history,
            **({"generators": gens, "rngs": rngs} if world > 1 else {}),
        })

    metrics_log = open_metrics_log(out / "metrics.jsonl", step if resume else None) if out is not None and is_main else None
    bar = Progress(cfg.steps, meta.get("kind", "fit"), initial=step, enabled=is_main and cfg.progress)
    t0 = time.perf_counter()
    last_good = step
    end = cfg.steps if stop_after is None else min(cfg.steps, step + stop_after)
    model.train()
    try:
        with StopSignals() as stop:
            while step < end:
                idx = batch_indices(n, cfg.batch_size, step, cfg.seed, rank, world)
                batch = to_device(get_batch(data, idx), device)
                with autocast_context(cfg.amp, device):
                    loss, logs = loss_fn(train_model, batch, gen)
                if not torch.isfinite(loss):
                    where = f"; the last good checkpoint (step {last_good}) is kept at {ckpt_path}" if ckpt_path and ckpt_path.exists() else ""
                    raise NonFiniteLossError(
                        f"loss is {loss.item()} at step {step} (lr={sched.get_last_lr()[0]:.3g}, amp={cfg.amp}){where}. "
                        "Try a lower --lr, --amp none, or a smaller --grad-clip; then --resume --reset-optimizer."
                    )
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                gnorm = None
                if cfg.grad_clip:
                    scaler.unscale_(opt)
                    gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                scaler.step(opt)
                scaler.update()
                sched.step()
                if ema is not None and (step + 1) % cfg.ema_every == 0:
                    ema.update(model, step=max(0, step - cfg.ema_start), copy_only=step < cfg.ema_start, every=cfg.ema_every)
                step += 1

                if step % cfg.log_every == 0 or step == cfg.steps:
                    rec = {"step": step, "loss": mean_over_ranks(float(loss.detach()), world), "lr": sched.get_last_lr()[0],
                           **{k: mean_over_ranks(float(v), world) for k, v in logs.items()}}
                    if gnorm is not None:
                        rec["grad_norm"] = float(gnorm)
                    history.append(rec)
                    if metrics_log is not None:
                        metrics_log.write(json.dumps(rec) + "\n")
                        metrics_log.flush()
                    for cb in callbacks or []:
                        cb(step, rec)
                bar.update(1, **({"loss": float(loss.detach())} if step % 10 == 0 else {}))
                stopping = stop.signum is not None
                if world > 1:  # every rank stops at the same step (the save is collective)
                    stopping = mean_over_ranks(float(stopping), world) > 0
                if stopping and step < end:
                    save(step)
                    name = signal.Signals(stop.signum).name if stop.signum else "a signal on another rank"
                    msg = (f"[fit] {name} at step {step}: saved {ckpt_path}; continue with --resume (resume=True)"
                           if ckpt_path else f"[fit] {name} at step {step}: nothing saved (no out_dir)")
                    if is_main:
                        print(msg, file=sys.stderr, flush=True)
                    raise TrainingInterrupted(msg, stop.signum or signal.SIGTERM, step, ckpt_path)
                if cfg.ckpt_every and step % cfg.ckpt_every == 0 and step < cfg.steps:
                    save(step)
                    last_good = step
                if picture_fn is not None and is_main and cfg.sample_every and step % cfg.sample_every == 0 and step < cfg.steps:
                    picture_fn(ema.module if ema else model, step)
                    model.train()
    finally:
        bar.close()
        if metrics_log is not None:
            metrics_log.close()
    save(step)
    seconds = time.perf_counter() - t0
    if picture_fn is not None and is_main:
        picture_fn(ema.module if ema else model, step)
    model.eval()
    return FitResult(model=model, ema=ema.module if ema else None, history=history, step=step, seconds=seconds)


__all__ = ["FitConfig", "FitResult", "fit", "EMA", "NonFiniteLossError", "CheckpointMismatch", "batch_indices", "lr_lambda", "TrainingInterrupted"]
