"""A perceptual distance that needs no download: compare images by the features of a small conv net.

LPIPS (Zhang et al. 2018) compares unit-normalised VGG/AlexNet activations, layer by layer. Those
weights cannot be downloaded here, and ImageNet features judge 32x32 grey digits badly anyway. The
course offers two feature networks, both plugged into the same :class:`PerceptualLoss`:

- ``random_features(in_channels, seed)``: a frozen, *randomly initialised* conv stack. Zhang et al.
  (Table 5, "rand" networks) found that even random conv features agree with human judgements far
  better than pixel L2 — they measure local structure (edges, strokes) at several scales.
- ``classifier_features(classifier)``: the stages of a trained course classifier
  (``ldmcourse.classifier.Classifier``, whose ``stages`` is an ``nn.Sequential``): features that
  know what a digit or a shoe looks like. Prefer it when a classifier checkpoint exists.

Distance (LPIPS without the learned linear heads, eq. 1 of the paper):
    d(x, y) = Σ_l mean_{h,w} ‖ n(φ_l(x)) - n(φ_l(y)) ‖²,   n(f) = f / ‖f‖ over channels.
"""

from __future__ import annotations

import torch
import torch.nn as nn


class FeatureStages(nn.Module):
    """Run ``stages`` in order and return the output of each one: a list of (B, C_l, H_l, W_l)."""

    def __init__(self, stages: nn.Sequential):
        super().__init__()
        self.stages = stages

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats


def random_features(in_channels: int = 1, channels: tuple[int, ...] = (16, 32, 64), seed: int = 0) -> FeatureStages:
    """Frozen random conv features: conv3x3-ReLU stages, each after the first halving H and W."""
    g = torch.Generator().manual_seed(seed)
    stages = []
    prev = in_channels
    for i, ch in enumerate(channels):
        conv1, conv2 = nn.Conv2d(prev, ch, 3, padding=1), nn.Conv2d(ch, ch, 3, padding=1)
        for conv in (conv1, conv2):  # Kaiming-normal from our own generator: the same net on every machine
            fan_in = conv.weight[0].numel()
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                conv.bias.zero_()
        down = [nn.AvgPool2d(2)] if i > 0 else []  # (B, prev, H, W) -> (B, prev, H/2, W/2)
        stages.append(nn.Sequential(*down, conv1, nn.ReLU(), conv2, nn.ReLU()))
        prev = ch
    return FeatureStages(nn.Sequential(*stages)).eval().requires_grad_(False)


def classifier_features(classifier: nn.Module) -> FeatureStages:
    """Tap every stage of a trained classifier that has an ``nn.Sequential`` attribute ``stages``."""
    stages = getattr(classifier, "stages", None)
    if not isinstance(stages, nn.Sequential):
        raise ValueError(f"{type(classifier).__name__} has no nn.Sequential `stages`; pass a course "
                         "ldmcourse.classifier.Classifier, or use random_features(in_channels)")
    import copy

    return FeatureStages(copy.deepcopy(stages)).eval().requires_grad_(False)


def _unit(f: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return f / (f.pow(2).sum(dim=1, keepdim=True) + eps).sqrt()  # normalise over channels


class PerceptualLoss(nn.Module):
    """d(x, y) per image, (B,): the sum over stages of the mean squared distance of unit-normalised features.

    The feature net is frozen; gradients still flow to ``x`` (the reconstruction). It belongs to the
    loss, not to the autoencoder: checkpoints of the autoencoder do not contain it.
    """

    def __init__(self, features: nn.Module):
        super().__init__()
        self.features = features.eval().requires_grad_(False)

    def train(self, mode: bool = True):  # the feature net always stays in eval mode (BatchNorm)
        super().train(mode)
        self.features.eval()
        return self

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        fx, fy = self.features(x), self.features(y)
        return sum(((_unit(a) - _unit(b)) ** 2).sum(1).mean(dim=(1, 2)) for a, b in zip(fx, fy))  # (B,)
