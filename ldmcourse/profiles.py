"""Profiles: one switch that sizes every experiment in the course.

- ``smoke``: CI. Tiny data and a handful of steps; each notebook runs in seconds to a couple of
  minutes on 2 CPU cores. Numbers are meaningless, but every line of code runs.
- ``cpu``: a laptop. Real (small) results in minutes.
- ``gpu``: proper training on one or more CUDA devices.

Resolution order (first hit wins):
1. an explicit argument (``--profile`` on the command line, ``get_profile("cpu")`` in code);
2. the environment variable ``LDMCOURSE_PROFILE``;
3. ``smoke`` when the environment variable ``CI`` is set (CI systems set it);
4. ``gpu`` when ``torch.cuda.is_available()``;
5. ``cpu``.

The knobs themselves live in dataclasses next to the experiment they size (see
:func:`for_profile`), never as scattered literals.
"""

from __future__ import annotations

import dataclasses
import os
import platform
from typing import Any, Mapping, TypeVar

import torch

PROFILES = ("smoke", "cpu", "gpu")

T = TypeVar("T")


def get_profile(explicit: str | None = None) -> str:
    """Return the active profile name (see the module docstring for the order)."""
    for source, value in (("argument", explicit), ("LDMCOURSE_PROFILE", os.environ.get("LDMCOURSE_PROFILE"))):
        if value:
            value = value.strip().lower()
            if value not in PROFILES:
                raise ValueError(
                    f"unknown profile {value!r} (from {source}); choose one of {', '.join(PROFILES)}"
                )
            return value
    if os.environ.get("CI"):
        return "smoke"
    if torch.cuda.is_available():
        return "gpu"
    return "cpu"


def default_device(profile: str | None = None) -> torch.device:
    """CUDA when available, else CPU. The smoke profile always uses the CPU (CI has no GPU)."""
    from .utils import resolve_device

    return resolve_device("auto", profile)


def for_profile(cls: type[T], profile: str, table: Mapping[str, Mapping[str, Any]], **overrides: Any) -> T:
    """Build dataclass ``cls`` from its defaults, then ``table[profile]``, then ``overrides``.

    Each experiment keeps its own table next to its config, e.g.::

        SIZES = {"smoke": dict(steps=30), "cpu": dict(steps=3000), "gpu": dict(steps=50_000)}
        cfg = for_profile(FitConfig, profile, SIZES, lr=1e-3)
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values = {**table.get(profile, {}), **overrides}
    unknown = set(values) - fields
    if unknown:
        raise TypeError(f"{cls.__name__} has no field(s) {sorted(unknown)}; fields are {sorted(fields)}")
    return cls(**values)


def banner(profile: str | None = None) -> str:
    """One line that every notebook prints first: profile, device, versions."""
    profile = get_profile(profile)
    device = default_device(profile)
    gpu = f" ({torch.cuda.get_device_name(0)})" if device.type == "cuda" else ""
    threads = torch.get_num_threads()
    return (
        f"ldmcourse profile={profile} device={device}{gpu} torch={torch.__version__} "
        f"python={platform.python_version()} cpu_threads={threads}"
    )
