"""Config dataclasses <-> command-line flags: one ``--field-name`` per field, typed from its hint.

Used by every command (``train``'s model and fit flags, ``sample``'s, ``inpaint``'s and ``distill``'s
option dataclasses), so a field added to a config is a flag without further code. A ``bool`` field's
flag alone means true (``--text``); ``--text true`` / ``--text false`` work too.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from typing import Any


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
        flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
        if flag in taken:
            flag = f"--{prefix.rstrip('_')}-" + f.name.replace("_", "-")
        taken.add(flag)
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
        required = f.metadata.get("required", False)  # field metadata: "flag", "help", "required"
        help_ = f.metadata.get("help", "") + ("" if required else f" (default {default!r})")
        if elem is not None:
            group.add_argument(flag, dest=prefix + f.name, nargs="+", type=_converter(elem, False),
                               default=argparse.SUPPRESS, help=help_, required=required)
        elif tp is bool and not optional:  # `--text` alone means true; `--text true/false` still works
            group.add_argument(flag, dest=prefix + f.name, nargs="?", const=True, type=_converter(tp, False),
                               required=required, default=argparse.SUPPRESS, metavar="BOOL", help=help_)
        else:
            group.add_argument(flag, dest=prefix + f.name, type=_converter(tp, optional), required=required,
                               default=argparse.SUPPRESS, metavar=tp.__name__.upper(), help=help_)


def _explicit(args: argparse.Namespace, prefix: str) -> dict[str, Any]:
    return {k[len(prefix):]: v for k, v in vars(args).items() if k.startswith(prefix)}


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
