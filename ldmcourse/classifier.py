"""A small classifier whose features the course uses for FID and KID.

Why not Inception? FID (Heusel et al., 2017) compares Gaussians fitted to the features of an
Inception-v3 trained on ImageNet. Inception sees 299x299 colour photographs; a 28x28 grey digit
blown up to 299x299 is far outside what it was trained on, and its weights cannot be downloaded
here. Like fastai's course (FID on Fashion-MNIST with its own classifier), we train a small CNN on
the dataset itself and take its globally pooled last-block activations as the feature vector:
those features separate what matters for the dataset (which digit, stroke shape), and the
classifier trains in a minute.

FID numbers on these features are *not* comparable with published Inception FIDs; compare them
only with each other and with the real-vs-real floor (see :func:`ldmcourse.metrics.fid_report`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .utils import check_counts, check_range


@dataclass
class ClassifierConfig:
    in_channels: int = 1
    image_size: int = 32
    num_classes: int = 10
    channels: tuple[int, ...] = (32, 64, 128)  # one stage per entry; every stage after the first halves H, W
    dropout: float = 0.2
    shift: int = 2  # training augmentation: random translation by up to this many pixels (0: none)

    def __post_init__(self):
        self.channels = tuple(self.channels)
        if not self.channels:
            raise ValueError("channels must name at least one stage, e.g. (32, 64, 128)")
        check_range("in_channels", self.in_channels, 1, integer=True)
        check_range("image_size", self.image_size, 1, integer=True)
        check_counts("channels", self.channels)
        check_range("num_classes", self.num_classes, 2, integer=True)
        check_range("dropout", self.dropout, 0, 1, hi_open=True)
        check_range("shift", self.shift, 0, integer=True, hint="0: no translation")

    @property
    def feature_dim(self) -> int:
        return self.channels[-1]


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class Classifier(nn.Module):
    """conv stages -> global average pool (the FID features) -> dropout -> linear logits."""

    def __init__(self, cfg: ClassifierConfig):
        super().__init__()
        self.cfg = cfg
        stages: list[nn.Module] = []
        prev = cfg.in_channels
        for i, ch in enumerate(cfg.channels):
            down = [nn.MaxPool2d(2)] if i > 0 else []  # (B, prev, H, W) -> (B, prev, H/2, W/2)
            stages.append(nn.Sequential(*down, _block(prev, ch), _block(ch, ch)))
            prev = ch
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(prev, cfg.num_classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [-1, 1] -> (B, feature_dim): the vectors FID and KID compare."""
        if x.ndim != 4 or x.shape[1] != self.cfg.in_channels:
            raise ValueError(f"Classifier expects (B, {self.cfg.in_channels}, H, W) images in [-1, 1], got {tuple(x.shape)}; "
                             f"build it with in_channels={x.shape[1] if x.ndim == 4 else '?'} for this data")
        return self.stages(x).mean(dim=(2, 3))  # (B, C_last, h, w) -> (B, C_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (B, num_classes) logits


def random_shift(x: torch.Tensor, shift: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Translate each image by an integer offset in [-shift, shift]^2, filling with the background (-1)."""
    if shift <= 0:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, (shift, shift, shift, shift), value=-1.0)
    dx, dy = torch.randint(0, 2 * shift + 1, (2, b), generator=generator, device=x.device).tolist()
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])


def classification_loss(cfg: ClassifierConfig):
    """loss_fn for :func:`ldmcourse.train.fit`: cross-entropy on shifted images; logs accuracy."""

    def loss_fn(model: nn.Module, batch, generator: torch.Generator | None = None):
        x, y = batch
        logits = model(random_shift(x, cfg.shift, generator))
        loss = F.cross_entropy(logits, y)
        return loss, {"acc": float((logits.argmax(1) == y).float().mean())}

    return loss_fn


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500,
             device: str | torch.device = "cpu") -> float:
    """Top-1 accuracy of ``model`` on images ``x`` (N, C, H, W) with labels ``y`` (N,)."""
    model.eval()
    hits = 0
    for i in range(0, len(x), batch_size):
        hits += int((model(x[i:i + batch_size].to(device)).argmax(1).cpu() == y[i:i + batch_size]).sum())
    return hits / max(1, len(x))


def load_classifier(path, device: str | torch.device = "cpu") -> tuple[Classifier, dict]:
    """A trained :class:`Classifier` (EMA weights) and its meta from ``ldmcourse train classifier``'s checkpoint."""
    from .checkpoint import CheckpointError, load_checkpoint

    ck = load_checkpoint(path)
    meta = ck["meta"]
    if meta.get("kind") != "classifier":
        raise CheckpointError(f"{path} holds a {meta.get('kind')!r} model, not a classifier; train one with "
                              f"`ldmcourse train classifier --dataset {meta.get('dataset', 'D')} --out runs/classifier-D`")
    fields = {k: v for k, v in meta["model_config"].items() if k in ClassifierConfig.__dataclass_fields__}
    net = Classifier(ClassifierConfig(**fields))
    net.load_state_dict(ck["ema"] if ck.get("ema") is not None else ck["model"])
    return net.to(device).eval(), meta


__all__ = ["ClassifierConfig", "Classifier", "classification_loss", "accuracy", "random_shift", "load_classifier"]
