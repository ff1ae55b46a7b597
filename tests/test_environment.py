"""environment.yml (conda users) and pyproject.toml (pip users) must describe the same environment."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[ ;]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_matches_pyproject():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = env["dependencies"]
    assert "python=3.11" in deps and "pip" in deps
    pip_section = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    assert "-e .[dev]" in pip_section, "the pip section must install the course itself with its dev extra"
    conda_pins = {_name(r): r.replace(" ", "") for r in pip_section if not r.startswith("-e")}
    wanted = project["dependencies"] + project["optional-dependencies"]["dev"]
    py_pins = {_name(r): r.replace(" ", "") for r in wanted}
    assert conda_pins == py_pins


def test_no_pin_to_local_cpu_wheel():
    text = (ROOT / "pyproject.toml").read_text() + (ROOT / "environment.yml").read_text()
    assert "+cpu" not in text and "torch==" not in text
