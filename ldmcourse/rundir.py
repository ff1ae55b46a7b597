"""The run folder of :func:`ldmcourse.train.fit`: who may write into it, what it holds, what may change.

- :class:`RunLock`: ``OUT/.lock`` holds the owner's pid, host and start time; a second run on the same
  folder is refused while the owner lives; the lock of a dead process (``kill -9``, a power cut, a pid
  reused by another process) is taken over.
- :func:`check_out_dir`: a fresh run into a folder that holds another run's checkpoint is refused unless
  asked to overwrite it (a finished 300-step model is not silently replaced by a 2-step one).
- :func:`open_metrics_log`: ``metrics.jsonl`` stays in step order across resumes (lines written after
  the checkpoint a run resumes from are dropped; they are re-logged as the steps run again).
- :func:`resume_differences`: what a resumed run would change. Only the length, the logging and
  checkpoint intervals and the device may change; anything else needs ``reset_optimizer``.
- :class:`StopSignals`: SIGINT and SIGTERM stop training at the end of the current step, so that it can
  be saved, instead of killing the process mid-step.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
from pathlib import Path
from typing import Any

from .checkpoint import _norm, load_checkpoint

# FitConfig fields a resumed run may change; the others define the run (see resume_differences)
FREE_FIT_FIELDS = ("steps", "log_every", "sample_every", "ckpt_every", "progress", "fused_adam")
# meta entries that say what data a run trains on (compared where both runs record them)
DATA_KEYS = ("dataset", "n_train", "image_shape")


class RunLocked(RuntimeError):
    """Another live process is training into the same folder."""


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped ``fit``; ``str(e)`` says where the checkpoint of the current step is."""

    def __init__(self, message: str, signum: int, step: int, path: Path | None):
        super().__init__(message)
        self.signum, self.step, self.path = signum, step, path

    def __str__(self) -> str:
        return str(self.args[0])


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks (Linux ``/proc``), or "-": tells a live owner from a new process
    that got a dead owner's pid (common in containers, where a restarted job gets the same small pid)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "-"


def _alive(pid: int, started: str = "-") -> bool:
    if started != "-" and _start_time(pid) not in ("-", started):
        return False  # the pid was reused
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


class RunLock:
    """``with RunLock(out):`` holds ``out/.lock`` (created with O_EXCL) for the duration."""

    def __init__(self, out: str | os.PathLike):
        self.path = Path(out) / ".lock"
        self.held = False

    def _owner(self) -> tuple[int, str, str] | None:
        try:
            pid, host, *started = self.path.read_text().split()
            return int(pid), host, (started or ["-"])[0]
        except (OSError, ValueError):
            return None  # vanished, or half-written by a process killed between create and write

    def acquire(self) -> "RunLock":
        me = f"{os.getpid()} {socket.gethostname()} {_start_time(os.getpid())}\n"
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                owner = self._owner()
                if owner is not None:
                    pid, host, started = owner
                    here = host == socket.gethostname()
                    if not here or (pid != os.getpid() and _alive(pid, started)):
                        raise RunLocked(
                            f"another run (pid {pid} on {host}) is training into {self.path.parent}; wait for it to "
                            f"finish or stop it, or choose another --out (if no such process exists, delete {self.path})")
                with contextlib.suppress(OSError):  # the owner is dead: take the lock over
                    self.path.unlink()
                continue
            with os.fdopen(fd, "w") as f:
                f.write(me)
            self.held = True
            return self
        raise RunLocked(f"could not take the lock {self.path}; delete it if no run is training into {self.path.parent}")

    def release(self) -> None:
        if self.held:
            with contextlib.suppress(OSError):
                if (self._owner() or (0,))[:2] == (os.getpid(), socket.gethostname()):
                    self.path.unlink()
            self.held = False

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def check_out_dir(out: str | os.PathLike, resume: bool, overwrite: bool) -> None:
    """Refuse an ``out`` that is a file, and a fresh run into a folder holding another run's checkpoint."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder; choose a folder for the run's checkpoint and pictures")
    if resume and overwrite:
        raise ValueError("--resume continues the run in --out and --overwrite replaces it: choose one")
    ckpt = out / "checkpoint.pt"
    if resume or overwrite or not ckpt.exists():
        return
    try:
        ck = load_checkpoint(ckpt)
        what = f"a {ck['meta'].get('kind', '?')!r} model at step {ck.get('step', '?')}"
    except Exception:
        what = "a checkpoint that cannot be read"
    raise ValueError(f"{out} already holds a run ({what}); pass --resume (resume=True) to continue it, "
                     "--overwrite (overwrite=True) to replace it, or choose another --out")


def open_metrics_log(path: Path, resume_step: int | None):
    """``metrics.jsonl`` opened for appending. A fresh run (``resume_step=None``) starts it empty; a resumed
    run keeps only the records up to ``resume_step`` (a run killed after its last checkpoint logged steps
    that it will log again), so the file stays in step order without duplicates."""
    if resume_step is None or not path.exists():
        return path.open("w")
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= resume_step:
                keep.append(line)
        except (ValueError, KeyError, TypeError):  # a half-written last line
            continue
    tmp = path.with_name(path.name + ".rewrite.tmp")
    tmp.write_text("".join(line + "\n" for line in keep))
    os.replace(tmp, path)
    return path.open("a")


def resume_differences(ck: dict[str, Any], meta: dict[str, Any], fit_config: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{name: (checkpoint's value, this run's value)}`` for every setting a plain resume may not change:
    the FitConfig fields outside :data:`FREE_FIT_FIELDS` and the data entries :data:`DATA_KEYS` of ``meta``.
    (The model kind and config are checked by :func:`~ldmcourse.checkpoint.load_checkpoint`.)"""
    diffs: dict[str, tuple[Any, Any]] = {}
    old_fit = ck.get("fit_config") or {}
    for k, v in fit_config.items():
        if k not in FREE_FIT_FIELDS and k in old_fit and _norm(old_fit[k]) != _norm(v):
            diffs[k] = (old_fit[k], v)
    old_meta = ck.get("meta") or {}
    for k in DATA_KEYS:
        if k in old_meta and k in meta and _norm(old_meta[k]) != _norm(meta[k]):
            diffs[k] = (old_meta[k], meta[k])
    return diffs


def describe_differences(diffs: dict[str, tuple[Any, Any]]) -> str:
    return ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in diffs.items())


class StopSignals:
    """``with StopSignals() as stop:`` SIGINT and SIGTERM set ``stop.signum`` instead of interrupting;
    the training loop checks it after every step, saves, and raises :class:`TrainingInterrupted`.
    A second signal while stopping raises ``KeyboardInterrupt`` at once (the atomic checkpoint write
    keeps the previous file). Outside the main thread (where Python cannot install handlers) nothing
    changes."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old.clear()


__all__ = ["RunLock", "RunLocked", "TrainingInterrupted", "StopSignals", "check_out_dir", "open_metrics_log",
           "resume_differences", "describe_differences", "FREE_FIT_FIELDS", "DATA_KEYS"]
