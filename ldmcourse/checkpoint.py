"""Checkpoints: atomic writes, safe reads, and a clear refusal when a checkpoint is not what you asked for.

A checkpoint is a plain dict of tensors and primitive values (so ``torch.load(weights_only=True)``
can read it without executing code). Its ``meta`` entry says what it is::

    {"kind": "ae", "model_config": {...}, "dataset": "mnist5k", "image_shape": [1, 32, 32], ...}
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


class CheckpointMismatch(ValueError):
    """The checkpoint belongs to a different model or config than the one requested."""


class CheckpointError(RuntimeError):
    """The checkpoint file is missing, truncated or not a ldmcourse checkpoint."""


def save_checkpoint(path: str | os.PathLike, obj: dict[str, Any]) -> None:
    """Write ``obj`` to ``path`` atomically: a temp file in the same folder, fsync, then ``os.replace``.

    A crash mid-write leaves the previous checkpoint intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
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
        raise CheckpointError(f"{path} could not be read ({type(e).__name__}: {e}); it is truncated or not a "
                              "ldmcourse checkpoint. If a run was interrupted, look for the previous good file.") from e
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


def _norm(v: Any) -> Any:
    """Compare configs structurally: tuples and lists alike (JSON round-trips turn one into the other)."""
    if isinstance(v, dict):
        return {k: _norm(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_norm(x) for x in v]
    return v
