"""The pure parts of the benchmark scripts (their runs take an hour; their arithmetic must still be right)."""

import importlib.util
from pathlib import Path


def _load(name):
    spec = importlib.util.spec_from_file_location(name, Path(__file__).parent.parent / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _row(space, s, fid):
    return {"space": space, "train_seconds": s, "fid": fid, "fid_ci95": [fid, fid], "fid_floor": 0.3,
            "sample_seconds_per_image": 0.01}


def test_latent_vs_pixel_reads_the_time_to_equal_fid():
    lvp = _load("latent_vs_pixel")
    latent = [_row("latent", 30, 50.0), _row("latent", 60, 4.0), _row("latent", 120, 1.0)]
    pixel = [_row("pixel", 200, 400.0), _row("pixel", 600, 3.0), _row("pixel", 1000, 0.5)]
    # linear in seconds between the points around the crossing: 600 + (3 - 1)/(3 - 0.5) * 400 = 920
    assert lvp.crossing(pixel, 1.0) == 920.0 and lvp.crossing(latent, 1.0) == 120 and lvp.crossing(pixel, 0.1) is None
    s = lvp.summarize({"latent": latent, "pixel": pixel}, fs_seconds=60.0)
    assert s["common_fid"] == 1.0 and not s["ratio_is_lower_bound"]
    assert s["ratio_without_first_stage"] == 920 / 120 and s["ratio_with_first_stage"] == 920 / 180
    # a pixel run stopped above the common FID only bounds the ratio from below, and says so
    s = lvp.summarize({"latent": latent, "pixel": pixel[:2]}, fs_seconds=60.0)
    assert s["ratio_is_lower_bound"] and s["pixel_seconds"] is None and s["ratio_without_first_stage"] == 600 / 120
