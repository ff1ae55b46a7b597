from dataclasses import dataclass

import pytest

from ldmcourse.profiles import banner, for_profile, get_profile


def test_resolution_order(monkeypatch):
    monkeypatch.delenv("LDMCOURSE_PROFILE", raising=False)
    monkeypatch.setenv("CI", "true")
    assert get_profile() == "smoke"
    monkeypatch.setenv("LDMCOURSE_PROFILE", "cpu")
    assert get_profile() == "cpu"  # the env variable beats CI
    assert get_profile("gpu") == "gpu"  # an explicit argument beats both
    monkeypatch.delenv("CI")
    monkeypatch.delenv("LDMCOURSE_PROFILE")
    import torch

    assert get_profile() == ("gpu" if torch.cuda.is_available() else "cpu")


def test_unknown_profile_is_named(monkeypatch):
    monkeypatch.setenv("LDMCOURSE_PROFILE", "laptop")
    with pytest.raises(ValueError, match="laptop.*smoke, cpu, gpu"):
        get_profile()


@dataclass
class Sizes:
    steps: int = 1
    width: int = 8


def test_for_profile_layers_defaults_table_overrides():
    table = {"smoke": {"steps": 2}, "cpu": {"steps": 300, "width": 32}}
    assert for_profile(Sizes, "smoke", table) == Sizes(steps=2, width=8)
    assert for_profile(Sizes, "cpu", table, width=64) == Sizes(steps=300, width=64)
    assert for_profile(Sizes, "gpu", table) == Sizes()
    with pytest.raises(TypeError, match="no field"):
        for_profile(Sizes, "cpu", {"cpu": {"depth": 3}})


def test_banner_names_profile_and_device():
    b = banner("smoke")
    assert "profile=smoke" in b and "device=cpu" in b and "torch=" in b
