"""Checkpoints: atomic writes, safe reads, and a clear refusal when a checkpoint is not what you asked for.

A checkpoint is a plain dict of tensors and primitive values (so ``torch.load(weights_only=True)``
can read it without executing code). Its ``meta`` entry says what it is::

    {"kind": "ae", "model_config": {...}, "dataset": "mnist5k", "image_shape": [1, 32, 32], ...}
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from pathlib import Path
from typing import Any

import torch


TEMP_SUFFIX = ".tmp"  # of the files save_checkpoint writes before renaming them


class CheckpointMismatch(ValueError):
    """The checkpoint belongs to a different model or config than the one requested."""


class CheckpointError(RuntimeError):
    """The checkpoint file is missing, truncated or not a ldmcourse checkpoint."""


def save_checkpoint(path: str | os.PathLike, obj: dict[str, Any]) -> None:
    """Write ``obj`` to ``path`` atomically: a temp file in the same folder, fsync, then ``os.replace``.

    A crash mid-write leaves the previous checkpoint intact; a temp file left by a kill -9 mid-write is
    removed by :func:`remove_temp_files` when the next run starts. The file gets the same permissions as
    every other output (0666 less the umask), not ``mkstemp``'s private 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def remove_temp_files(folder: str | os.PathLike, name: str = "checkpoint.pt") -> list[Path]:
    """Delete ``NAME.*.tmp`` files that an interrupted :func:`save_checkpoint` left in ``folder``.

    Call it only while no other process writes there (``fit`` holds the run lock when it does)."""
    removed = []
    for p in Path(folder).glob(f"{name}.*{TEMP_SUFFIX}"):
        with contextlib.suppress(OSError):
            p.unlink()
            removed.append(p)
    return removed


def _describe(meta: dict[str, Any]) -> str:
    return f"kind={meta.get('kind')!r} model_config={meta.get('model_config')}"


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                    expect: dict[str, Any] | None = None) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``.

    ``expect``: if given, its ``kind`` and ``model_config`` must equal the checkpoint's, else
    :class:`CheckpointMismatch` says what the checkpoint is and what was asked for.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}; train one with `ldmcourse train MODEL --out {path.parent}`")
    try:
        ck = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        detail = _torch_detail(e)
        if "GLOBAL" in detail:  # a pickle that asks for code (torch's own message would suggest running it)
            raise CheckpointError(
                f"{path} contains Python objects other than tensors and plain values ({detail}); refused to load it, "
                "because unpickling such a file can run arbitrary code. A checkpoint written by ldmcourse never "
                "contains them: this file came from elsewhere or was altered.") from None
        raise CheckpointError(f"{path} could not be read ({type(e).__name__}: {detail}); it is truncated or not a "
                              "ldmcourse checkpoint. If a run was interrupted, look for the previous good file.") from None
    if not isinstance(ck, dict) or "meta" not in ck or "model" not in ck:
        raise CheckpointError(f"{path} is not a ldmcourse checkpoint (no 'meta'/'model' entries)")
    if expect:
        have = ck["meta"]
        for key in ("kind", "model_config"):
            if key in expect and _norm(have.get(key)) != _norm(expect.get(key)):
                raise CheckpointMismatch(
                    f"{path} holds a different model: it is {_describe(have)}, but this run is {_describe(expect)}. "
                    "Resume with the same model and flags (or --config), or choose a new --out folder."
                )
    return ck


def _torch_detail(e: Exception) -> str:
    """The informative part of torch.load's error, without its advice to retry with weights_only=False."""
    msg = str(e)
    m = re.search(r"(Unsupported global: GLOBAL \S+|Trying to load unsupported GLOBAL \S+|WeightsUnpickler error:\s*(.+?)\n)", msg, re.S)
    if m:
        return (m.group(2) or m.group(1)).strip()
    return " ".join(line for line in msg.splitlines() if "weights_only" not in line).strip() or type(e).__name__


def _norm(v: Any) -> Any:
    """Compare configs structurally: tuples and lists alike (JSON round-trips turn one into the other)."""
    if isinstance(v, dict):
        return {k: _norm(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_norm(x) for x in v]
    return v
