"""Config dataclasses from plain dicts (a checkpoint's ``meta["model_config"]``, a config file's section).

The one dict -> dataclass helper of the package, low in the import graph (it imports nothing of
ldmcourse), so recipes, the CLI and notebooks share it. :func:`migrate` renames the fields of a
previous config layout, so old checkpoints keep loading (each recipe lists its renames).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, TypeVar

T = TypeVar("T")


def field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def from_dict(cls: type[T], d: Mapping[str, Any], strict: bool = False) -> T:
    """``cls(**d)``; keys that are not fields of ``cls`` are dropped, or refused with ``strict=True``."""
    names = field_names(cls)
    unknown = set(d) - names
    if strict and unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {sorted(unknown)}; fields: {sorted(names)}")
    return cls(**{k: v for k, v in d.items() if k in names})


def migrate(d: Mapping[str, Any], renamed: Mapping[str, str]) -> dict[str, Any]:
    """A config dict of a previous layout in the current one: each old key of ``renamed`` becomes its new
    key (e.g. the LDM's ``diffusion_steps`` -> ``T``). A dict that has both keeps the new value."""
    out = dict(d)
    for old, new in renamed.items():
        if old in out:
            value = out.pop(old)
            out.setdefault(new, value)
    return out


__all__ = ["field_names", "from_dict", "migrate"]
