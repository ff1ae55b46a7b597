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


def test_flow_nfe_plan_paired_difference_and_targets():
    import torch

    fn = _load("flow_nfe")
    runs = fn.plan()
    assert {r["nfe"] for r in runs if r["row"] == "rf heun"} == {2, 4, 8, 16, 32}  # Heun: 2 calls a step, no NFE 1
    assert all(r["steps"] * fn.NFE_PER_STEP[r["sampler"]] == r["nfe"] for r in runs)
    assert [r["nfe"] for r in runs if r["row"] == "rf2-1step"] == [1]
    assert not any(r["guided"] for r in runs if r["entry"].startswith("rf2"))  # guidance is in their pairs
    g = torch.Generator().manual_seed(0)
    real, a = torch.randn(400, 4, generator=g), torch.randn(300, 4, generator=g)
    same = fn.paired_fid_diff(a, a, real, n_boot=20)
    assert same["diff"] == 0 and same["ci95"] == [0, 0]  # a row against itself: exactly no difference
    d = fn.paired_fid_diff(a + 1.0, a, real, n_boot=50)
    assert d["diff"] > 0 and d["ci95"][0] > 0 and d["ci95"][0] <= d["diff"] <= d["ci95"][1]
    rows = [{"row": "rf2 euler", "nfe": 2, "fid": 1.4}, {"row": "eps ddim", "nfe": 4, "fid": 2.0},
            {"row": "eps dpm++2m", "nfe": 4, "fid": 1.5}, {"row": "rf euler", "nfe": 32, "fid": 1.2},
            {"row": "rf heun", "nfe": 32, "fid": 0.9}]
    t = fn.targets(rows)
    assert t["rf2@2 <= eps-best@4"]["met"] and t["rf2@2 <= eps-best@4"]["eps_best"] == "eps dpm++2m"
    assert not t["rf2@2 <= 1.5 x rf@32"]["met"] and t["rf2@2 <= 1.5 x rf@32"]["rf_best"] == "rf heun"


def test_flow_nfe_adaptive_solve_is_exact_on_a_linear_field():
    import torch

    fn = _load("flow_nfe")
    x0 = torch.randn(3, 2, dtype=torch.float64)
    x, nfe = fn.adaptive_solve(lambda x, t: -x, x0, 1.0, 0.0)  # dx/dt = -x from t = 1 to 0: x(0) = e x(1)
    torch.testing.assert_close(x, x0 * torch.e, rtol=1e-4, atol=1e-4)
    assert 6 <= nfe < 200


def test_text_adherence_reads_each_target_against_its_ceiling():
    ta = _load("text_adherence")

    def r(rate, n=100):
        return {"rate": rate, "n": n, "ci95": (rate - 0.05, rate + 0.05)}

    adh = {"class": r(0.93, 600), "thickness": r(0.71), "width": r(0.60), "slant": r(0.80)}
    ceiling = {"class": r(0.97), "thickness": r(0.80), "width": r(0.75), "slant": r(0.85)}
    t = ta.target_table(adh, ceiling)
    assert list(t) == ["class", "thickness", "width", "slant"]
    assert t["class"]["met"] and t["class"]["needs"] == 0.90 and "ceiling" not in t["class"]
    assert t["thickness"]["met"] and abs(t["thickness"]["needs"] - 0.70) < 1e-12 and t["thickness"]["ceiling"] == 0.80
    assert not t["width"]["met"] and t["slant"]["met"]  # 0.60 < 0.75 - 0.10; 0.80 >= 0.85 - 0.10
    assert t["class"]["n"] == 600 and t["width"]["ci95"] == list(adh["width"]["ci95"])


def test_sampler_sweep_plan_covers_the_table_cheapest_first():
    sw = _load("sampler_sweep")
    cells = sw.plan()
    assert len(cells) == len(set(cells))  # no cell twice
    # every sampler at every default step count, the adaptive solver, and seed 001's long chains
    assert {(lab, s) for lab in sw.SAMPLERS for s in sw.DEFAULT_STEPS} <= set(cells)
    assert {lab for lab, _ in cells} >= {"SDE-Heun", "SDE-Euler", "DDPM", "DDIM", *sw.ADAPTIVE}
    assert ("DDPM", 1000) in cells and ("SDE-Heun", 250) in cells
    # cheapest first, so that a run stopped by --budget-s leaves whole rows at few steps
    steps = [s for lab, s in cells if lab in sw.SAMPLERS]
    assert steps[: 3 * len(sw.SAMPLERS)] == sorted(steps[: 3 * len(sw.SAMPLERS)]) and max(steps) == steps[-1] == 1000
    assert all(name in __import__("ldmcourse.samplers", fromlist=["SAMPLERS"]).SAMPLERS for name, _ in sw.SAMPLERS.values())
