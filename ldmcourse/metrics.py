"""Metrics: reconstruction (MSE, PSNR, SSIM), likelihood units (bits/dim) and sample quality (FID, KID).

Sample quality compares *feature vectors* of generated and real images:

- **FID** (Heusel et al., 2017) fits a Gaussian to each set of features and takes the Fréchet
  distance ``|μ_r − μ_g|² + Tr(Σ_r + Σ_g − 2 (Σ_r Σ_g)^{1/2})``. It is biased: with finitely many
  samples even two sets of *real* images score above 0 (the real-vs-real floor, which shrinks
  roughly like 1/n). Always report the floor and the number of samples.
- **KID** (Bińkowski et al., 2018) is the squared MMD with the cubic kernel
  ``k(a, b) = (aᵀb / d + 1)³``, estimated without bias on random subsets: its expectation for two
  sets from the same distribution is exactly 0, at any sample size (it can come out negative).

The features come from the course's own classifier (:mod:`ldmcourse.classifier`), so the numbers
are comparable with each other, not with published Inception FIDs. :func:`inception_fid` computes
the Inception version only when the weights are already on disk; it never downloads.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F


# ----------------------------------------------------------------------------------------------
# reconstruction and likelihood units
# ----------------------------------------------------------------------------------------------

@torch.no_grad()
def mse(x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean squared error over all pixels (images in [-1, 1])."""
    return float(((x.float() - y.float()) ** 2).mean())


@torch.no_grad()
def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB for images in [-1, 1] (peak-to-peak range 2)."""
    m = ((x.float() - y.float()) ** 2).flatten(1).mean(1).clamp_min(1e-12)  # per image
    return float((10 * torch.log10(4.0 / m)).mean())


def bits_per_dim(nats: float, dims: int) -> float:
    """Convert a negative log-likelihood in nats per image to bits per dimension."""
    return nats / (dims * math.log(2))


def _gaussian_window(size: int, sigma: float, channels: int, device, dtype) -> torch.Tensor:
    g = torch.exp(-((torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2) ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()  # (C, 1, k, k), depthwise


@torch.no_grad()
def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 2.0, win_size: int = 11, sigma: float = 1.5) -> float:
    """Mean structural similarity (Wang et al., 2004) of images in [-1, 1], averaged over images and channels.

    Gaussian 11x11 window with σ = 1.5, K1 = 0.01, K2 = 0.03, computed on the valid region only;
    equals ``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=2)`` (a test checks it).
    """
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"ssim needs two (B, C, H, W) tensors of the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if min(x.shape[-2:]) < win_size:
        raise ValueError(f"images of {tuple(x.shape[-2:])} are smaller than the {win_size}x{win_size} window; pass win_size=7 (or smaller, odd)")
    x, y = x.double(), y.double()
    w = _gaussian_window(win_size, sigma, x.shape[1], x.device, x.dtype)
    blur = lambda t: F.conv2d(t, w, groups=x.shape[1])  # noqa: E731  (B, C, H, W) -> (B, C, H-k+1, W-k+1)
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x ** 2
    var_y = blur(y * y) - mu_y ** 2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return float(s.mean())


# ----------------------------------------------------------------------------------------------
# features
# ----------------------------------------------------------------------------------------------

@torch.no_grad()
def extract_features(net: torch.nn.Module, images: torch.Tensor, batch_size: int = 500,
                     device: str | torch.device = "cpu") -> torch.Tensor:
    """(N, C, H, W) images in [-1, 1] -> (N, D) float64 features from ``net.features`` (on CPU)."""
    net.eval()
    feats = [net.features(images[i:i + batch_size].to(device)).double().cpu() for i in range(0, len(images), batch_size)]
    return torch.cat(feats) if feats else torch.zeros(0, 0, dtype=torch.float64)


def _check_features(a: torch.Tensor, b: torch.Tensor, who: str, min_n: int = 2) -> None:
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"{who} needs two (N, D) feature matrices with the same D, got {tuple(a.shape)} and {tuple(b.shape)}")
    if len(a) < min_n or len(b) < min_n:
        raise ValueError(f"{who} needs at least {min_n} samples per set, got {len(a)} and {len(b)}; use more samples (--n)")


# ----------------------------------------------------------------------------------------------
# FID
# ----------------------------------------------------------------------------------------------

def frechet_distance(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor) -> float:
    """Fréchet distance between N(μ1, Σ1) and N(μ2, Σ2): |μ1−μ2|² + Tr Σ1 + Tr Σ2 − 2 Tr (Σ1 Σ2)^{1/2}.

    Tr (Σ1 Σ2)^{1/2} = Σ_i sqrt(λ_i) with λ_i the eigenvalues of the symmetric PSD matrix
    Σ1^{1/2} Σ2 Σ1^{1/2} (similar to Σ1 Σ2), which avoids scipy's non-symmetric ``sqrtm``.
    """
    mu1, mu2, sigma1, sigma2 = (t.double() for t in (mu1, mu2, sigma1, sigma2))
    e1, v1 = torch.linalg.eigh(sigma1)
    s1_half = (v1 * e1.clamp_min(0).sqrt()) @ v1.T  # Σ1^{1/2}
    m = s1_half @ sigma2 @ s1_half
    tr_covmean = torch.linalg.eigvalsh((m + m.T) / 2).clamp_min(0).sqrt().sum()
    return float(((mu1 - mu2) ** 2).sum() + sigma1.trace() + sigma2.trace() - 2 * tr_covmean)


def gaussian_stats(feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (D,) and unbiased covariance (D, D) of features (N, D)."""
    f = feats.double()
    return f.mean(0), torch.cov(f.T)


def fid(feats_a: torch.Tensor, feats_b: torch.Tensor) -> float:
    """FID between two sets of features (N, D) and (M, D)."""
    _check_features(feats_a, feats_b, "fid")
    return frechet_distance(*gaussian_stats(feats_a), *gaussian_stats(feats_b))


# ----------------------------------------------------------------------------------------------
# KID
# ----------------------------------------------------------------------------------------------

def polynomial_mmd2_unbiased(a: torch.Tensor, b: torch.Tensor) -> float:
    """Unbiased MMD² with k(x, y) = (xᵀy / d + 1)³ (Bińkowski et al., 2018, eq. 2).

    MMD²_u = 1/(m(m−1)) Σ_{i≠j} k(a_i, a_j) + 1/(n(n−1)) Σ_{i≠j} k(b_i, b_j) − 2/(mn) Σ_{i,j} k(a_i, b_j).
    """
    d = a.shape[1]
    m, n = len(a), len(b)
    k_aa = (a @ a.T / d + 1) ** 3
    k_bb = (b @ b.T / d + 1) ** 3
    k_ab = (a @ b.T / d + 1) ** 3
    return float((k_aa.sum() - k_aa.diagonal().sum()) / (m * (m - 1))
                 + (k_bb.sum() - k_bb.diagonal().sum()) / (n * (n - 1))
                 - 2 * k_ab.mean())


def kid(feats_a: torch.Tensor, feats_b: torch.Tensor, n_subsets: int = 100, subset_size: int | None = 1000,
        generator: torch.Generator | None = None) -> tuple[float, float]:
    """KID: mean and standard deviation of the unbiased MMD² over ``n_subsets`` random subsets.

    ``subset_size`` is capped at half the smaller set (``None``: exactly that), so the subsets
    differ and their spread is a real error bar (a subset of the whole set is always the same set).
    """
    _check_features(feats_a, feats_b, "kid", min_n=4)
    a, b = feats_a.double(), feats_b.double()
    size = min(subset_size or len(a), len(a) // 2, len(b) // 2)
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    vals = torch.tensor([polynomial_mmd2_unbiased(a[torch.randperm(len(a), generator=g)[:size]],
                                                  b[torch.randperm(len(b), generator=g)[:size]])
                         for _ in range(n_subsets)])
    return float(vals.mean()), float(vals.std()) if n_subsets > 1 else 0.0


# ----------------------------------------------------------------------------------------------
# uncertainty, floor and the full report
# ----------------------------------------------------------------------------------------------

def wilson_interval(k: int, n: int, z: float = 1.96) -> list[float]:
    """Wilson score interval of a binomial proportion k/n (default 95 %): class agreement, attribute adherence.

    Unlike the normal approximation p ± z·sqrt(p(1-p)/n) it stays inside [0, 1] and keeps its coverage
    near p = 0 or 1 (Wilson 1927; Brown, Cai & DasGupta 2001 recommend it for n ≥ 40)."""
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"wilson_interval needs 0 <= k <= n and n >= 1, got k={k}, n={n}")
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(max(centre - half, 0.0), 4), round(min(centre + half, 1.0), 4)]


def bootstrap_ci(stat: Callable[[torch.Tensor, torch.Tensor], float], feats_a: torch.Tensor, feats_b: torch.Tensor,
                 n_boot: int = 50, level: float = 0.95, generator: torch.Generator | None = None) -> tuple[float, float]:
    """Bootstrap interval of ``stat(a, b)``: resample both sets with replacement ``n_boot`` times, then
    shift the bootstrap distribution so that its median sits on the estimate.

    Why the shift: a resampled set holds repeated rows (only ~63 % distinct), and repeats raise FID the
    way a smaller n does, so the raw percentiles sit *above* the estimate (on 256 samples we measured
    an estimate of 1.78 with raw percentiles [1.78, 4.92]). That offset is a property of resampling,
    not of the estimate; the spread of the bootstrap is what measures the sampling noise. The interval
    is clipped at 0 (a squared distance). It says nothing about FID's own bias at finite n: compare
    with the real-vs-real floor at the same n for that.
    """
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    est = stat(feats_a, feats_b)
    vals = torch.tensor([stat(feats_a[torch.randint(len(feats_a), (len(feats_a),), generator=g)],
                              feats_b[torch.randint(len(feats_b), (len(feats_b),), generator=g)]) for _ in range(n_boot)],
                        dtype=torch.float64)
    lo, hi = centred_interval(vals, est, level)
    return max(lo, 0.0), hi


def centred_interval(vals: torch.Tensor | list[float], est: float, level: float = 0.95) -> tuple[float, float]:
    """The ``level`` percentile interval of bootstrap values ``vals``, shifted so that their median sits on the
    estimate ``est`` (see :func:`bootstrap_ci` for why)."""
    vals = torch.as_tensor(vals, dtype=torch.float64)
    q = torch.tensor([(1 - level) / 2, 0.5, (1 + level) / 2], dtype=torch.float64)
    lo, med, hi = torch.quantile(vals, q).tolist()
    return lo - med + est, hi - med + est


def fid_report(feats_gen: torch.Tensor, feats_real: torch.Tensor, feats_real2: torch.Tensor | None = None,
               n_boot: int = 50, kid_subsets: int = 50, kid_subset_size: int = 1000, seed: int = 0) -> dict:
    """FID and KID of generated vs real features with their uncertainty and the real-vs-real floor.

    ``feats_real2``: a second, disjoint set of real features (e.g. training images) of at least the
    same size as ``feats_gen``; the floor is FID/KID(real2[:n], real) with n = len(feats_gen), i.e. what
    a perfect generator would score at this sample size. Without it the real set is split in halves
    and the floor is measured at half the size (stated in ``floor_n``).
    """
    g = torch.Generator().manual_seed(seed)
    n = len(feats_gen)
    out: dict = {"n_gen": n, "n_real": len(feats_real)}
    out["fid"] = fid(feats_gen, feats_real)
    out["fid_ci95"] = list(bootstrap_ci(fid, feats_gen, feats_real, n_boot=n_boot, generator=g)) if n_boot else None
    out["kid"], out["kid_std"] = kid(feats_gen, feats_real, kid_subsets, kid_subset_size, generator=g)
    if feats_real2 is not None and len(feats_real2) >= n:
        a, b = feats_real2[torch.randperm(len(feats_real2), generator=g)[:n]], feats_real
    else:
        perm = torch.randperm(len(feats_real), generator=g)
        half = len(feats_real) // 2
        a, b = feats_real[perm[:half]], feats_real[perm[half:2 * half]]
    out["floor_n"] = [len(a), len(b)]
    out["fid_floor"] = fid(a, b)
    out["kid_floor"], _ = kid(a, b, kid_subsets, kid_subset_size, generator=g)
    out["features"] = "course classifier (not Inception: compare only with other numbers from the same classifier)"
    return out


# ----------------------------------------------------------------------------------------------
# optional Inception FID
# ----------------------------------------------------------------------------------------------

def inception_fid(gen: torch.Tensor, real: torch.Tensor, weights_path: str | os.PathLike | None = None) -> float:
    """Inception-v3 FID through torchmetrics, ONLY when the Inception weights are already on disk.

    ``weights_path`` (or ``$LDMCOURSE_INCEPTION_WEIGHTS``) must point to torch-fidelity's
    ``weights-inception-2015-12-05-6726825d.pth``. Nothing is downloaded: without the file this
    raises and says how to get it. Images in [-1, 1], grey images are repeated to 3 channels.
    """
    path = weights_path or os.environ.get("LDMCOURSE_INCEPTION_WEIGHTS")
    if not path or not Path(path).is_file():
        raise FileNotFoundError(
            f"Inception weights not found ({path or 'no path given'}). ldmcourse never downloads them silently: "
            "download weights-inception-2015-12-05-6726825d.pth from the torch-fidelity releases yourself and pass "
            "weights_path= or set LDMCOURSE_INCEPTION_WEIGHTS. The course's classifier FID (fid_report) needs no download.")
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance
    except ImportError as e:
        raise ImportError("inception_fid needs torchmetrics and torch-fidelity: pip install torchmetrics torch-fidelity") from e
    metric = FrechetInceptionDistance(feature=2048, normalize=True, feature_extractor_weights_path=str(path))
    to01 = lambda t: ((t.float() + 1) / 2).clamp(0, 1).expand(-1, 3, -1, -1)  # noqa: E731
    for i in range(0, len(real), 256):
        metric.update(to01(real[i:i + 256]), real=True)
    for i in range(0, len(gen), 256):
        metric.update(to01(gen[i:i + 256]), real=False)
    return float(metric.compute())


__all__ = ["mse", "psnr", "ssim", "bits_per_dim", "extract_features", "frechet_distance", "gaussian_stats", "fid",
           "polynomial_mmd2_unbiased", "kid", "bootstrap_ci", "fid_report", "inception_fid"]
