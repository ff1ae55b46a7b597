"""What a ``train`` or ``eval`` command line resolves to, checked before any work starts.

- :class:`DataConfig`: the ``data`` section (dataset, image size, subset size, root), validated;
- :func:`read_config_file` / :func:`build_config`: a JSON or TOML file with sections ``model``, ``fit``,
  ``data``; an unknown section or key (a typo) is an error naming it, in every section;
- :func:`train_profile`: a resumed run keeps the profile it was trained with unless told otherwise;
- :func:`check_first_stage`: a latent model's first stage comes from its checkpoint, on the same dataset;
- :func:`eval_defaults`: evaluation sizes of a profile (``sizes[profile]["eval"][metric]``);
- :func:`check_finite_state`: refuse weights with NaN/inf (they would sample black images).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch

from .utils import check_range

SECTIONS = ("model", "fit", "data")
# model fields that train fills in from --first-stage's checkpoint: set by hand they build a random first stage
FILLED_IN = ("first_stage_kind", "first_stage_config", "latent_shape")


@dataclasses.dataclass
class DataConfig:
    """What ``ldmcourse train`` trains on: ``--dataset``, ``--image-size``, ``--n-train``, ``--data-root``."""

    dataset: str = "mnist5k"
    image_size: int = 32  # pad/resize to this size
    n_train: int | None = None  # a random subset of this many training images (None: all)
    data_root: str | None = None  # download root (default ./data or $LDMCOURSE_DATA)

    def __post_init__(self):
        check_range("image_size", self.image_size, 1, integer=True)
        if self.n_train is not None:
            check_range("n_train", self.n_train, 1, integer=True, hint="the number of training images, or none for all")


def read_config_file(path: str | None) -> dict[str, dict[str, Any]]:
    """The sections of ``--config FILE`` (JSON, or TOML for ``*.toml``); errors exit with an ``error:`` line."""
    if not path:
        return {}
    p = Path(path)
    if not p.is_file():
        raise SystemExit(f"error: --config {p} does not exist" if not p.exists() else f"error: --config {p} is not a file")
    kind = "TOML" if p.suffix == ".toml" else "JSON"
    try:
        if kind == "TOML":
            import tomllib

            cfg = tomllib.loads(p.read_text())
        else:
            cfg = json.loads(p.read_text())
    except Exception as e:
        raise SystemExit(f"error: --config {p} is not valid {kind}: {e}")
    if not isinstance(cfg, dict):
        raise SystemExit(f"error: --config {p} must hold sections {', '.join(SECTIONS)} (an object), not {type(cfg).__name__}")
    bad = set(cfg) - set(SECTIONS)
    if bad:
        raise SystemExit(f"error: --config {p} has unknown section(s) {sorted(bad)}; use 'model', 'fit', 'data'")
    for name, section in cfg.items():
        if not isinstance(section, dict):
            raise SystemExit(f"error: --config {p}: section {name!r} must be a table/object of settings")
    return cfg


def build_config(cls: type, *layers: dict[str, Any], where: str = "") -> Any:
    """``cls(**merged layers)``: an unknown key exits with an ``error:`` line; a value that ``__post_init__``
    refuses raises ``ValueError`` naming the section (``where``) and the value."""
    fields = {f.name for f in dataclasses.fields(cls)}
    merged: dict[str, Any] = {}
    for layer in layers:
        unknown = set(layer) - fields
        if unknown:
            raise SystemExit(f"error: {where}{cls.__name__} has no field(s) {sorted(unknown)}; fields: {sorted(fields)}")
        merged.update(layer)
    try:
        return cls(**merged)
    except (TypeError, ValueError) as e:  # e.g. a config file's "channels": 8 where a list is expected
        raise ValueError(f"{where}{e}") from None


def train_profile(explicit: str | None, out: Path, resume: bool) -> str:
    """``--profile``, else ``$LDMCOURSE_PROFILE``, else (on ``--resume``) the checkpoint's, else automatic."""
    from .checkpoint import load_checkpoint
    from .profiles import get_profile

    if explicit or os.environ.get("LDMCOURSE_PROFILE") or not resume or not (out / "checkpoint.pt").exists():
        return get_profile(explicit)
    return load_checkpoint(out / "checkpoint.pt")["meta"].get("profile") or get_profile(None)


def check_first_stage(explicit_model: dict[str, Any], first_stage: str | None, dataset: str) -> None:
    """A latent model's first stage is read from ``--first-stage CKPT``: its filled-in fields may not be set
    by hand, and it must have been trained on the dataset this run uses."""
    given = [k for k in FILLED_IN if k in explicit_model]
    if given:
        raise ValueError(f"{', '.join(given)} are filled in from --first-stage's checkpoint; do not set them "
                         "(a hand-written first_stage_config builds a randomly initialised first stage)")
    if first_stage in (None, "", "none"):
        return
    from .checkpoint import load_checkpoint

    fs_data = load_checkpoint(first_stage)["meta"].get("dataset")
    if fs_data is not None and fs_data != dataset:
        raise ValueError(f"the first stage {first_stage} was trained on {fs_data!r} but this run trains on {dataset!r}: "
                         f"pass --dataset {fs_data}, or train a first stage on {dataset}")


def eval_defaults(recipe, profile: str, metric: str) -> dict[str, Any]:
    """The profile's evaluation defaults for ``metric``: ``{"n": test images, option: value}`` (may be empty)."""
    return dict(recipe.sizes.get(profile, {}).get("eval", {}).get(metric, {}))


def check_finite_state(state: dict[str, torch.Tensor], what: str, path: str) -> None:
    for name, t in state.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ValueError(f"the {what} in {path} are not finite ({name} holds NaN/inf): the run diverged before "
                             "it was saved. Resume an earlier checkpoint with --resume --reset-optimizer and a lower --lr")


__all__ = ["DataConfig", "read_config_file", "build_config", "train_profile", "check_first_stage", "eval_defaults",
           "check_finite_state", "FILLED_IN"]
