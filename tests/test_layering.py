"""The import graph fixes the layering (STYLE.md, example 1): networks and processes never import each
other, the lowest modules import nothing of the package, and nothing imports the CLI.

Read statically (every ``import`` statement, at the top or inside a function), so a lazy import
cannot hide an arrow."""

from __future__ import annotations

import ast
from pathlib import Path

import ldmcourse

ROOT = Path(ldmcourse.__file__).parent
NETWORKS = ("ldmcourse.unet", "ldmcourse.autoencoders", "ldmcourse.nn")
PROCESSES = ("ldmcourse.diffusion", "ldmcourse.sde", "ldmcourse.samplers", "ldmcourse.schedules", "ldmcourse.conversions",
             "ldmcourse.flow")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p) for p in ROOT.rglob("*.py")}


def _imports(path: Path) -> set[str]:
    """Every ldmcourse module that ``path`` imports (relative imports resolved)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("ldmcourse")}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.startswith("ldmcourse"):  # `from . import conversions` imports the module ldmcourse.conversions
                subs = {f"{mod}.{a.name}" for a in node.names} & MODULES
                out |= subs if subs else {mod}
    return out


GRAPH = {_module_name(p): _imports(p) for p in ROOT.rglob("*.py")}


def _in(mod: str, group: tuple[str, ...]) -> bool:
    return any(mod == g or mod.startswith(g + ".") for g in group)


def test_the_graph_is_read():
    """The parser finds known arrows (so the tests below are not vacuous)."""
    assert "ldmcourse.conversions" in GRAPH["ldmcourse.diffusion"]
    assert "ldmcourse.samplers.grid" in GRAPH["ldmcourse.diffusion"]  # the lazy import inside ddpm_sample
    assert "ldmcourse.unet" in GRAPH["ldmcourse.recipes.ddpm"] and "ldmcourse.diffusion" in GRAPH["ldmcourse.recipes.ddpm"]
    assert "ldmcourse.cli" in GRAPH["ldmcourse.__main__"]
    assert "ldmcourse.conversions" in GRAPH["ldmcourse.flow.sampling"] and "ldmcourse.flow" in GRAPH["ldmcourse.recipes.flow"]
    assert len(GRAPH) > 40


def test_networks_and_processes_never_import_each_other():
    bad = [(m, i) for m, imps in GRAPH.items() for i in imps
           if (_in(m, NETWORKS) and _in(i, PROCESSES)) or (_in(m, PROCESSES) and _in(i, NETWORKS))]
    assert not bad, bad


def test_nothing_imports_the_cli():
    bad = [m for m, imps in GRAPH.items() if "ldmcourse.cli" in imps and m != "ldmcourse.__main__"]
    assert not bad, bad


def test_the_lowest_modules_import_nothing_of_the_package():
    for low in ("ldmcourse.conversions", "ldmcourse.configs"):
        assert GRAPH[low] == set(), (low, GRAPH[low])


def test_processes_import_no_wiring():
    """Processes see only processes and the small shared helpers (utils, configs, metrics' bits_per_dim, and the
    analytic mixture that samplers.bench measures against); never recipes, latent, inpaint, train or the CLI."""
    allowed = PROCESSES + ("ldmcourse.utils", "ldmcourse.metrics", "ldmcourse.configs", "ldmcourse.analytic")
    bad = [(m, i) for m, imps in GRAPH.items() if _in(m, PROCESSES) for i in imps if not _in(i, allowed)]
    assert not bad, bad
