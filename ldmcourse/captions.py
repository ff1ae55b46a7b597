"""Captions computed from the digits themselves: "a bold wide seven slanted to the right".

No captioned data set can be downloaded here, so every training digit is described by attributes
*measured* from its pixels; the same measures score a generated image, which makes caption
adherence measurable per attribute (:func:`adherence`).

Measures (ink p = (x+1)/2 ∈ [0, 1] per pixel, coordinates c = column, r = row, moments weighted by p):

- **slant** s = -cov(c, r) / var(r): the shear c ≈ c̄ - s·(r - r̄) that best fits the ink (rows grow
  downwards, so s > 0 means the top leans right). A straight stroke at angle θ from the vertical has
  s = tan θ exactly.
- **width** w = √12 · √(var(c) - cov(c, r)²/var(r)): the horizontal spread left once the slant is
  removed, scaled so that a uniform bar (or a sheared parallelogram) of horizontal width a gives a.
  MNIST digits are normalised to a 20-pixel box by their longer side, so height carries almost no
  information but width does.
- **thickness** τ: the ink mass A = Σp over the length ℓ of the stroke's skeleton (skimage
  ``skeletonize(method="lee")`` of p > ½, which leaves fewer spurs than the 2-D default; ℓ counts
  4-neighbour links as 1 and diagonal links as √2). The skeleton of a stroke of width τ stops τ/2
  short of each of its e end points, so A ≈ τ(ℓ + e·τ/2); τ is the positive root,
  τ = (√(ℓ² + 2eA) - ℓ)/e (A/ℓ for a closed loop, e = 0): exact for a bar or a ring.

Bins: each attribute is cut into three bins with *balanced counts within each class* (terciles of
the class's training digits: a "wide one" is wide for a one), stated in :data:`WORDS`:
thickness thin / medium / bold, width narrow / regular / wide, slant left / upright / right
(captioned "slanted to the left", "upright", "slanted to the right"). Being relative to the class,
the words are too: a "left" one (s < 0.13) may be upright to the eye, since most ones lean right.
:func:`fit_bins` computes thresholds; :data:`DEFAULT_THRESHOLDS` are those of mnist5k's 4,000
training digits at 32x32 (:func:`fit_default_bins` recomputes them; a test checks they agree):

    class   thickness thin|medium|bold   width narrow|regular|wide   slant left|upright|right
    zero          2.47 | 3.07                15.23 | 17.92              0.12 | 0.31
    one           2.44 | 2.98                 3.07 |  3.80              0.13 | 0.43
    two           2.22 | 2.73                12.85 | 14.96             -0.01 | 0.25
    three         2.26 | 2.63                11.47 | 13.15             -0.00 | 0.22
    four          2.09 | 2.55                12.17 | 14.65             -0.09 | 0.24
    five          2.05 | 2.52                11.55 | 13.52              0.10 | 0.42
    six           2.08 | 2.63                10.81 | 13.11             -0.04 | 0.14
    seven         2.31 | 2.77                11.00 | 13.37             -0.07 | 0.20
    eight         1.96 | 2.34                 9.90 | 11.98              0.09 | 0.32
    nine          2.03 | 2.45                 9.80 | 11.94             -0.09 | 0.16

(thickness and width in pixels of the 32x32 image, slant as the shear dc/dr.)

Attribute dropout (:func:`drop_attributes`): during training each attribute is left out of the
caption with probability ``p_attr`` (the class with ``p_class``, replaced by the word "digit"), so
partial prompts such as "a thin three" are in distribution; the empty caption "" is the null
condition of classifier-free guidance (``ldmcourse.text``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

CLASS_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ATTRIBUTES = ("thickness", "width", "slant")
WORDS = {"thickness": ("thin", "medium", "bold"), "width": ("narrow", "regular", "wide"),
         "slant": ("left", "upright", "right")}
SLANT_PHRASE = {0: "slanted to the left", 1: "upright", 2: "slanted to the right"}
# attribute codes: a (B, 4) LongTensor [class, thickness bin, width bin, slant bin]; -1 = not said
UNSAID = -1


# ----------------------------------------------------------------------------------------------
# measures
# ----------------------------------------------------------------------------------------------

def _ink(images) -> torch.Tensor:
    """(B, 1, H, W) or (B, H, W) or (H, W) in [-1, 1] -> (B, H, W) float64 ink in [0, 1]."""
    x = torch.as_tensor(images).detach().cpu().double()
    if x.ndim == 2:
        x = x[None]
    if x.ndim == 4:
        if x.shape[1] != 1:
            raise ValueError(f"expected grey images (B, 1, H, W), got {tuple(x.shape)}")
        x = x[:, 0]
    return ((x + 1) / 2).clamp(0, 1)


def skeleton_length(skel: np.ndarray) -> float:
    """Length of a one-pixel-wide skeleton: 4-neighbour links count 1, diagonal links √2 (a diagonal
    link already bridged by a 4-neighbour path is not counted twice)."""
    s = np.pad(skel.astype(bool), 1)
    c = s[1:-1, 1:-1]
    right, down = s[1:-1, 2:], s[2:, 1:-1]
    n4 = (c & right).sum() + (c & down).sum()
    dr, dl = s[2:, 2:], s[2:, :-2]  # down-right, down-left neighbours
    diag_dr = c & dr & ~right & ~down
    diag_dl = c & dl & ~s[1:-1, :-2] & ~down
    return float(n4 + math.sqrt(2) * (diag_dr.sum() + diag_dl.sum()))


def skeleton_ends(skel: np.ndarray) -> int:
    """Number of end points of a skeleton: pixels with exactly one of their 8 neighbours set."""
    s = np.pad(skel.astype(bool), 1).astype(np.int64)
    n = sum(np.roll(np.roll(s, i, 0), j, 1) for i in (-1, 0, 1) for j in (-1, 0, 1) if (i, j) != (0, 0))
    return int(((s == 1) & (n == 1)).sum())


def measure(images) -> dict[str, np.ndarray]:
    """Images (B, 1, H, W) in [-1, 1] -> {"thickness", "slant", "width", "mass"}: (B,) float arrays."""
    from skimage.morphology import skeletonize

    p = _ink(images)  # (B, H, W)
    B, H, W = p.shape
    r = torch.arange(H, dtype=torch.float64)[None, :, None]
    c = torch.arange(W, dtype=torch.float64)[None, None, :]
    mass = p.sum((1, 2)).clamp_min(1e-8)  # (B,)
    mean = lambda f: (p * f).sum((1, 2)) / mass  # noqa: E731  ink-weighted mean
    rbar, cbar = mean(r), mean(c)
    dr, dc = r - rbar[:, None, None], c - cbar[:, None, None]
    var_r, var_c, cov = mean(dr**2).clamp_min(1e-8), mean(dc**2), mean(dr * dc)
    slant = -cov / var_r
    width = (12 * (var_c - cov**2 / var_r) - 1).clamp_min(0).sqrt()  # -1: the pixel box adds 1/12 (Sheppard)
    binary = (p > 0.5).numpy()
    skels = [skeletonize(b, method="lee") for b in binary]
    length = torch.tensor([skeleton_length(s) for s in skels], dtype=torch.float64)
    ends = torch.tensor([skeleton_ends(s) for s in skels], dtype=torch.float64)
    A = p.sum((1, 2))
    # A = τ(ℓ + e·τ/2): each of the e stroke ends adds τ/2 beyond the skeleton -> the positive root
    root = ((length**2 + 2 * ends * A).sqrt() - length) / ends.clamp_min(1)
    thickness = torch.where(ends > 0, root, A / length.clamp_min(1))
    return {"thickness": thickness.numpy(), "slant": slant.numpy(), "width": width.numpy(), "mass": p.sum((1, 2)).numpy()}


# ----------------------------------------------------------------------------------------------
# bins within each class
# ----------------------------------------------------------------------------------------------

@dataclass
class CaptionBins:
    """Per-class tercile thresholds: ``thresholds[attr]`` is a (K, 2) array [low|mid, mid|high]."""

    thresholds: dict[str, np.ndarray]

    def bin(self, attr: str, values: np.ndarray, labels) -> np.ndarray:
        """(B,) values of ``attr`` for digits of class ``labels`` -> (B,) bins in {0, 1, 2}."""
        th = self.thresholds[attr][np.asarray(labels, dtype=np.int64)]  # (B, 2)
        v = np.asarray(values)[:, None]
        return (v >= th).sum(1).astype(np.int64)

    def summary(self) -> str:
        lines = [f"{'class':>6} " + " ".join(f"{a + ' ' + WORDS[a][0] + '|' + WORDS[a][1] + '|' + WORDS[a][2]:>30}" for a in ATTRIBUTES)]
        for k, w in enumerate(CLASS_WORDS[:len(self.thresholds['slant'])]):
            lines.append(f"{w:>6} " + " ".join(f"{self.thresholds[a][k, 0]:>19.2f} {self.thresholds[a][k, 1]:>10.2f}" for a in ATTRIBUTES))
        return "\n".join(lines)


def fit_bins(measures: dict[str, np.ndarray], labels, num_classes: int = 10) -> CaptionBins:
    """Terciles of each attribute within each class (balanced counts: a third of each class per bin)."""
    labels = np.asarray(labels)
    th = {}
    for a in ATTRIBUTES:
        rows = []
        for k in range(num_classes):
            v = measures[a][labels == k]
            if len(v) < 3:
                raise ValueError(f"class {k} has {len(v)} digits: need at least 3 to cut terciles")
            rows.append(np.quantile(v, [1 / 3, 2 / 3]))
        th[a] = np.array(rows)
    return CaptionBins(th)


# Terciles per class (zero … nine) on mnist5k's training split at 32x32: see the module docstring.
DEFAULT_THRESHOLDS = {
    "thickness": ((2.472, 3.073), (2.437, 2.978), (2.217, 2.728), (2.256, 2.626), (2.090, 2.551), (2.052, 2.519),
                  (2.080, 2.628), (2.310, 2.771), (1.959, 2.340), (2.029, 2.453)),
    "width": ((15.231, 17.917), (3.073, 3.802), (12.846, 14.965), (11.473, 13.148), (12.167, 14.650), (11.550, 13.519),
              (10.814, 13.110), (10.995, 13.373), (9.896, 11.983), (9.797, 11.936)),
    "slant": ((0.122, 0.314), (0.129, 0.426), (-0.012, 0.248), (-0.005, 0.223), (-0.087, 0.240), (0.097, 0.423),
              (-0.044, 0.145), (-0.068, 0.197), (0.086, 0.323), (-0.086, 0.159)),
}


def default_bins() -> CaptionBins:
    """The bins of the course's text-conditioned data (:data:`DEFAULT_THRESHOLDS`)."""
    return CaptionBins({a: np.array(v) for a, v in DEFAULT_THRESHOLDS.items()})


def fit_default_bins() -> CaptionBins:
    """Recompute :data:`DEFAULT_THRESHOLDS` from mnist5k's training split at 32x32 (a few seconds)."""
    from .data import load_dataset

    x, y = load_dataset("mnist5k", "train", size=32).tensors()
    return fit_bins(measure(x), y.numpy())


def attributes(images, labels, bins: CaptionBins | None = None) -> torch.Tensor:
    """Images and their class labels -> (B, 4) attribute codes [class, thickness, width, slant]."""
    bins = bins or default_bins()
    m, labels = measure(images), np.asarray(torch.as_tensor(labels).cpu())
    cols = [labels] + [bins.bin(a, m[a], labels) for a in ATTRIBUTES]
    return torch.from_numpy(np.stack(cols, 1).astype(np.int64))


# ----------------------------------------------------------------------------------------------
# captions
# ----------------------------------------------------------------------------------------------

def caption(code) -> str:
    """One (4,) attribute code -> a caption; UNSAID fields are left out ("a thin three", "a digit")."""
    k, th, wd, sl = (int(v) for v in code)
    words = []
    if th != UNSAID:
        words.append(WORDS["thickness"][th])
    if wd != UNSAID:
        words.append(WORDS["width"][wd])
    if sl == 1:
        words.append("upright")
    words.append(CLASS_WORDS[k] if k != UNSAID else "digit")
    if sl in (0, 2):
        words.append(SLANT_PHRASE[sl])
    return ("an " if words[0][0] in "aeiou" else "a ") + " ".join(words)


def captions(codes) -> list[str]:
    return [caption(c) for c in torch.as_tensor(codes).tolist()]


def drop_attributes(codes: torch.Tensor, p_attr: float = 0.5, p_class: float = 0.1,
                    generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """Set each attribute to UNSAID with probability ``p_attr`` and the class with ``p_class``
    (uniforms drawn from ``generator`` on ``device``, default the generator's)."""
    codes = torch.as_tensor(codes).cpu().clone()
    device = device if device is not None else (generator.device if generator is not None else "cpu")
    p = torch.tensor([p_class] + [p_attr] * len(ATTRIBUTES))
    drop = torch.rand(codes.shape, generator=generator, device=device).cpu() < p  # (B, 4)
    codes[drop] = UNSAID
    return codes


def parse_caption(text: str) -> torch.Tensor:
    """The attribute code a prompt asks for ((4,), UNSAID where it says nothing): the inverse of
    :func:`caption`, used to score samples drawn from a prompt."""
    words = text.lower().split()
    code = [UNSAID] * 4
    for w in words:
        if w in CLASS_WORDS:
            code[0] = CLASS_WORDS.index(w)
        for j, a in enumerate(ATTRIBUTES[:2], start=1):
            if w in WORDS[a]:
                code[j] = WORDS[a].index(w)
        if w == "upright":
            code[3] = 1
        elif w in ("left", "right"):
            code[3] = 0 if w == "left" else 2
    return torch.tensor(code)


# ----------------------------------------------------------------------------------------------
# adherence: do generated images have the attributes their prompt asked for?
# ----------------------------------------------------------------------------------------------

def adherence(images, requested, bins: CaptionBins | None = None, predicted_class=None) -> dict[str, dict]:
    """Per attribute, the fraction of images whose measured bin is the one requested.

    ``requested``: (B, 4) codes (from :func:`parse_caption` or the real digits' own codes); an UNSAID
    attribute is not scored. Bins are those of the *requested* class. ``predicted_class`` (B,) (the
    course classifier's labels) scores the class too. Returns {attr: {"rate", "n", "ci95"}} with a
    Wilson 95 % interval.
    """
    bins = bins or default_bins()
    req = torch.as_tensor(requested).cpu().numpy()
    if req.ndim == 1:
        req = np.broadcast_to(req, (len(_ink(images)), 4))
    if (req[:, 0] == UNSAID).any():
        raise ValueError("adherence needs the class of every image (bins are per class)")
    m = measure(images)
    hits = {}
    for j, a in enumerate(ATTRIBUTES, start=1):
        said = req[:, j] != UNSAID
        hits[a] = bins.bin(a, m[a], req[:, 0])[said] == req[said, j]
    if predicted_class is not None:
        hits["class"] = np.asarray(torch.as_tensor(predicted_class).cpu()) == req[:, 0]
    return {a: _rate(h) for a, h in hits.items()}


def _rate(hits: np.ndarray, z: float = 1.96) -> dict:
    n = int(len(hits))
    if n == 0:
        return {"rate": float("nan"), "n": 0, "ci95": (float("nan"), float("nan"))}
    k = float(hits.sum())
    p = k / n
    centre, half = (p + z * z / (2 * n)) / (1 + z * z / n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return {"rate": p, "n": n, "ci95": (centre - half, centre + half)}


__all__ = ["CLASS_WORDS", "ATTRIBUTES", "WORDS", "UNSAID", "measure", "skeleton_length", "CaptionBins", "fit_bins",
           "DEFAULT_THRESHOLDS", "default_bins", "fit_default_bins", "skeleton_ends", "attributes", "caption", "captions", "drop_attributes", "parse_caption", "adherence"]
