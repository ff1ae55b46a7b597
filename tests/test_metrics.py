"""Metrics: SSIM parity, FID maths and behaviour, KID unbiasedness, the feature classifier, eval CLI."""

import json

import numpy as np
import pytest
import scipy.linalg
import torch

from ldmcourse.classifier import Classifier, ClassifierConfig, accuracy, classification_loss, random_shift
from ldmcourse.data import load_dataset
from ldmcourse.metrics import (bits_per_dim, bootstrap_ci, extract_features, fid, fid_report, frechet_distance,
                               gaussian_stats, inception_fid, kid, polynomial_mmd2_unbiased, psnr, ssim)
from ldmcourse.train import FitConfig, fit


@pytest.fixture(scope="module")
def digits():
    x, y = load_dataset("mnist5k", "test").tensors()
    return x[:400], y[:400]


@pytest.fixture(scope="module")
def random_net():
    torch.manual_seed(0)
    return Classifier(ClassifierConfig(channels=(8, 16, 32))).eval()


def test_ssim_matches_skimage():
    from skimage.metrics import structural_similarity

    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 32, 32, generator=g) * 2 - 1
    y = (x + 0.3 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    ref = np.mean([structural_similarity(x[i, 0].numpy(), y[i, 0].numpy(), data_range=2.0, gaussian_weights=True,
                                         sigma=1.5, use_sample_covariance=False) for i in range(3)])
    assert abs(ssim(x, y) - ref) < 1e-5
    assert ssim(x, x) == pytest.approx(1.0, abs=1e-9)
    with pytest.raises(ValueError, match="win_size"):
        ssim(x[..., :8, :8], y[..., :8, :8])


def test_psnr_and_bpd_units():
    x = torch.zeros(2, 1, 4, 4)
    assert psnr(x, x + 0.2) == pytest.approx(10 * np.log10(4 / 0.04), rel=1e-6)
    assert bits_per_dim(784 * np.log(2), 784) == pytest.approx(1.0)


def test_frechet_distance_matches_scipy_and_closed_forms():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(6, 6, generator=g, dtype=torch.float64), torch.randn(6, 6, generator=g, dtype=torch.float64)
    s1, s2 = a @ a.T + 0.1 * torch.eye(6, dtype=torch.float64), b @ b.T
    mu1, mu2 = torch.randn(6, generator=g, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)
    covmean = scipy.linalg.sqrtm(s1.numpy() @ s2.numpy()).real  # the usual pytorch-fid formula
    ref = float(((mu1 - mu2) ** 2).sum()) + np.trace(s1.numpy() + s2.numpy() - 2 * covmean)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-6)
    eye = torch.eye(6, dtype=torch.float64)
    # N(0, a²I) vs N(m, b²I): |m|² + d (a - b)²
    assert frechet_distance(torch.zeros(6), 4 * eye, torch.ones(6), 9 * eye) == pytest.approx(6 + 6 * 1.0)


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_noise(digits, random_net):
    x, _ = digits
    f = extract_features(random_net, x)
    g = torch.Generator().manual_seed(0)
    fids = [fid(extract_features(random_net, (x + s * torch.randn(x.shape, generator=g)).clamp(-1, 1)), f)
            for s in (0.05, 0.2, 0.5, 1.0)]
    assert all(b > a for a, b in zip(fids, fids[1:])), fids
    assert abs(fid(f, f)) < 1e-6 * fids[0]  # (an untrained net's features are small: compare relatively)


def test_kid_is_unbiased_for_real_vs_real():
    """Over many random splits of one distribution, KID averages to 0 (the biased V-statistic does not)."""
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(4000, 16, generator=g, dtype=torch.float64) * torch.linspace(0.5, 2, 16, dtype=torch.float64)
    vals, biased = [], []
    for _ in range(200):
        p = torch.randperm(len(feats), generator=g)
        a, b = feats[p[:100]], feats[p[100:200]]
        vals.append(polynomial_mmd2_unbiased(a, b))
        k = lambda u, v: (u @ v.T / 16 + 1) ** 3  # noqa: E731
        biased.append(float(k(a, a).mean() + k(b, b).mean() - 2 * k(a, b).mean()))
    vals = torch.tensor(vals)
    se = vals.std() / len(vals) ** 0.5
    assert abs(vals.mean()) < 3 * se, (vals.mean(), se)
    assert torch.tensor(biased).mean() > 10 * se  # the biased estimate is clearly positive
    mean, std = kid(feats[:500], feats[500:1000], n_subsets=20, subset_size=100, generator=g)
    assert abs(mean) < 4 * std and std > 0


def test_kid_estimator_matches_brute_force():
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64) + 1
    k = lambda u, v: (float(u @ v) / 3 + 1) ** 3  # noqa: E731
    ref = (sum(k(a[i], a[j]) for i in range(5) for j in range(5) if i != j) / 20
           + sum(k(b[i], b[j]) for i in range(4) for j in range(4) if i != j) / 12
           - 2 * sum(k(a[i], b[j]) for i in range(5) for j in range(4)) / 20)
    assert polynomial_mmd2_unbiased(a, b) == pytest.approx(ref, rel=1e-10)


def test_fid_report_floor_ci_and_counts(digits, random_net):
    x, _ = digits
    f_real, f_other = extract_features(random_net, x[:200]), extract_features(random_net, x[200:])
    f_gen = extract_features(random_net, (x[200:] + 0.5 * torch.randn(x[200:].shape)).clamp(-1, 1))
    rep = fid_report(f_gen, f_real, f_other, n_boot=20, kid_subsets=10)
    assert rep["n_gen"] == 200 and rep["n_real"] == 200 and rep["floor_n"] == [200, 200]
    assert rep["fid"] > rep["fid_floor"] > 0
    assert rep["kid"] > rep["kid_floor"]
    lo, hi = rep["fid_ci95"]
    assert lo < hi and lo < rep["fid"] * 1.5
    lo2, hi2 = bootstrap_ci(fid, f_gen, f_real, n_boot=20)
    assert lo2 <= hi2


def test_bootstrap_interval_holds_the_estimate_and_narrows_with_n():
    """Raw bootstrap percentiles of FID sit above the estimate (repeated rows act like a smaller n);
    the re-centred interval contains it, and its width shrinks roughly like 1/sqrt(n)."""
    g = torch.Generator().manual_seed(0)
    widths = {}
    for n in (100, 1600):
        a = torch.randn(n, 8, generator=g, dtype=torch.float64)
        b = torch.randn(n, 8, generator=g, dtype=torch.float64) + 0.5
        est = fid(a, b)
        lo, hi = bootstrap_ci(fid, a, b, n_boot=40, generator=torch.Generator().manual_seed(1))
        assert lo < est < hi
        widths[n] = hi - lo
    assert 2 < widths[100] / widths[1600] < 8  # 1/sqrt(n): a factor 4


def test_fid_errors_are_clear():
    with pytest.raises(ValueError, match="same D"):
        fid(torch.zeros(5, 3), torch.zeros(5, 4))
    with pytest.raises(ValueError, match="at least"):
        fid(torch.zeros(1, 3), torch.zeros(5, 3))


def test_inception_fid_never_downloads(monkeypatch, tmp_path):
    monkeypatch.delenv("LDMCOURSE_INCEPTION_WEIGHTS", raising=False)
    with pytest.raises(FileNotFoundError, match="never downloads"):
        inception_fid(torch.zeros(2, 1, 32, 32), torch.zeros(2, 1, 32, 32), weights_path=tmp_path / "missing.pth")


def test_random_shift_keeps_content_and_uses_background():
    x = torch.full((4, 1, 8, 8), 0.5)
    g = torch.Generator().manual_seed(0)
    y = random_shift(x, 2, g)
    assert y.shape == x.shape
    assert set(torch.unique(y).tolist()) <= {-1.0, 0.5}
    assert torch.equal(random_shift(x, 0, g), x)


def test_classifier_learns_mnist5k():
    """A short run: well above chance. (The cpu-profile run, `ldmcourse train classifier --profile cpu`,
    is the number the course reports.)"""
    torch.manual_seed(0)
    train = load_dataset("mnist5k", "train", n=2000)
    xt, yt = load_dataset("mnist5k", "test").tensors()
    cfg = ClassifierConfig(channels=(8, 16, 32))
    res = fit(Classifier(cfg), classification_loss(cfg), train,
              FitConfig(steps=120, batch_size=64, lr=3e-3, warmup=10, ema_decay=None, progress=False, log_every=20))
    acc = accuracy(res.model, xt, yt)
    assert acc > 0.85, acc


def test_eval_cli_prints_json_last(tmp_path, capsys):
    from ldmcourse.cli import main

    out = tmp_path / "clf"
    assert main(["train", "classifier", "--profile", "smoke", "--out", str(out), "--progress", "false"]) == 0
    capsys.readouterr()
    assert main(["eval", "--ckpt", str(out / "checkpoint.pt"), "--metric", "floor", "--n", "200", "--option", "n_boot=5"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    rep = json.loads(last)
    assert rep["n_gen"] == rep["n_real"] == 200 and len(rep["fid_ci95"]) == 2 and rep["fid"] >= 0
    assert main(["eval", "--ckpt", str(out / "checkpoint.pt"), "--metric", "accuracy"]) == 0
    assert 0 <= json.loads(capsys.readouterr().out.strip().splitlines()[-1])["accuracy"] <= 1


def test_fid_metric_samples_a_generative_model(tmp_path, capsys):
    """fid_metric (what generative recipes list as "fid") samples the model and reports FID, CI, KID, floor, counts."""
    import dataclasses

    from ldmcourse.cli import main
    from ldmcourse.recipes import get_recipe
    from ldmcourse.recipes.classifier import fid_metric

    out = tmp_path / "clf"
    assert main(["train", "classifier", "--profile", "smoke", "--out", str(out), "--progress", "false"]) == 0
    vae_recipe = get_recipe("vae")
    torch.manual_seed(0)
    cfg = vae_recipe.model_config()
    model = vae_recipe.build(cfg).eval()
    meta = {"kind": "vae", "model_config": dataclasses.asdict(cfg), "dataset": "mnist5k", "image_shape": [1, 32, 32]}
    test = load_dataset("mnist5k", "test").subset(64)
    rep = fid_metric(model, meta, test, "cpu", {"classifier": str(out / "checkpoint.pt"), "n_boot": 5})
    assert rep["n_gen"] == rep["n_real"] == 64 and rep["fid"] > rep["fid_floor"]  # an untrained VAE is far from data
    with pytest.raises(FileNotFoundError, match="ldmcourse train classifier"):
        fid_metric(model, meta, test, "cpu", {"classifier": str(tmp_path / "none.pt")})


def test_generative_recipes_list_fid_and_the_cli_reports_it(tmp_path, capsys, monkeypatch):
    """ddpm, vae, nvae and ldm all offer `eval --metric fid|kid`; a classifier of another size is refused by name."""
    import dataclasses

    from ldmcourse.cli import main
    from ldmcourse.recipes import get_recipe
    from ldmcourse.recipes.classifier import fid_metric

    for kind in ("ddpm", "vae", "nvae", "ldm"):
        assert {"fid", "kid"} <= set(get_recipe(kind).metrics), kind
    monkeypatch.setenv("LDMCOURSE_OFFLINE", "1")
    clf = tmp_path / "clf"
    assert main(["train", "classifier", "--profile", "smoke", "--out", str(clf), "--steps", "5", "--progress", "false"]) == 0
    run = tmp_path / "ddpm"
    assert main(["train", "ddpm", "--profile", "smoke", "--out", str(run), "--steps", "2", "--n-train", "32", "--progress", "false"]) == 0
    capsys.readouterr()
    assert main(["eval", "--ckpt", str(run / "checkpoint.pt"), "--metric", "fid", "--n", "24", "--option", f"classifier={clf / 'checkpoint.pt'}",
                 "--option", "steps=2", "--option", "n_boot=3"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["n_gen"] == res["n_real"] == 24 and res["steps"] == 2 and res["fid"] > res["fid_floor"] >= 0
    vae = get_recipe("vae")
    cfg = vae.model_config()
    meta = {"kind": "vae", "model_config": dataclasses.asdict(cfg), "dataset": "mnist5k", "image_shape": [1, 28, 28]}
    with pytest.raises(ValueError, match="--image-size 28"):
        fid_metric(vae.build(cfg), meta, load_dataset("mnist5k", "test", size=28).subset(8), "cpu",
                   {"classifier": str(clf / "checkpoint.pt")})


def test_wilson_interval_known_values_and_bad_input():
    from ldmcourse.metrics import wilson_interval
    # 962/1000 (the class agreement of issue 14's closing note): [0.948, 0.972]
    lo, hi = wilson_interval(962, 1000)
    assert abs(lo - 0.9483) < 2e-4 and abs(hi - 0.9722) < 2e-4
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0 and wilson_interval(10, 10)[0] > 0.6
    with pytest.raises(ValueError, match="k <= n"):
        wilson_interval(11, 10)
