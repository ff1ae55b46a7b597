"""The building blocks of NVAE (Vahdat & Kautz 2020, Fig. 3), each a small named module.

- :class:`SE`: squeeze-and-excitation, a per-channel gate from global average pooling.
- :class:`DepthwiseSeparableConv`: a depthwise k x k conv (one filter per channel) then a 1x1 conv
  that mixes channels; optionally BN-Swish between the two (as inside NVAE's generative cell).
- :class:`EncoderCell`: BN - Swish - conv 3x3 - BN - Swish - conv 3x3 - SE (Fig. 3b), residual;
  ``stride=2`` makes it the encoder's down-sampling cell.
- :class:`GenerativeCell`: BN - 1x1 expand - BN - Swish - depthwise 5x5 - BN - Swish - 1x1 - BN - SE
  (Fig. 3a), residual; ``upsample=True`` makes it the decoder's up-sampling cell.
- :class:`Conv2d`: ``nn.Conv2d`` plus the two power-iteration vectors that
  :func:`spectral_norms` uses to estimate its largest singular value (spectral regularisation, Sec. 3.2).

Every residual branch is scaled by 0.1 before it is added (as NVAE does): at initialisation the
deep network is close to the identity, which keeps early training stable.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

BN_MOMENTUM = 0.05  # NVAE's value: slower running statistics than PyTorch's default 0.1
RESIDUAL_SCALE = 0.1


class Conv2d(nn.Conv2d):
    """A convolution that carries its own power-iteration state ``sr_u``, ``sr_v``.

    The weight (C_out, C_in/groups, k, k) is viewed as a matrix W of shape (C_out, C_in/groups * k * k)
    (for a depthwise conv: (C, k*k), as NVAE does). ``sr_u`` (C_out,) and ``sr_v`` (C_in/groups*k*k,)
    are unit vectors that converge to W's top left/right singular vectors; they are buffers, so
    they are checkpointed and resumed with the weights.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        m, n = self.weight.shape[0], self.weight[0].numel()
        self.register_buffer("sr_u", F.normalize(torch.randn(m), dim=0))
        self.register_buffer("sr_v", F.normalize(torch.randn(n), dim=0))


def power_iteration(w: torch.Tensor, u: torch.Tensor, v: torch.Tensor, n_iter: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n_iter`` steps of v <- W^T u / |W^T u|, u <- W v / |W v| for a matrix ``w`` (m, n); no gradient."""
    with torch.no_grad():
        for _ in range(n_iter):
            v = F.normalize(w.t() @ u, dim=0)  # (n,)
            u = F.normalize(w @ v, dim=0)  # (m,)
    return u, v


def spectral_norms(model: nn.Module, n_iter: int = 1, update: bool = True) -> list[torch.Tensor]:
    """Largest-singular-value estimates sigma = u^T W v of every :class:`Conv2d` in ``model``.

    Each call runs ``n_iter`` more power iterations from the stored (u, v) (NVAE runs one per
    training step, so the estimate tracks the slowly changing weight for free) and, when ``update``,
    stores them back. The returned scalars carry gradients into the weights, so
    ``lambda * sum(spectral_norms(model))`` is the spectral regulariser L_SR of the paper (Eq. 4).
    """
    sigmas = []
    for m in model.modules():
        if isinstance(m, Conv2d):
            w = m.weight.flatten(1)  # (C_out, C_in/groups * k * k)
            u, v = power_iteration(w.detach().float(), m.sr_u.float(), m.sr_v.float(), n_iter)
            if update:
                m.sr_u.copy_(u)
                m.sr_v.copy_(v)
            sigmas.append(u @ (w.float() @ v))  # sigma_max(W) estimate, differentiable in W
    return sigmas


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, momentum=BN_MOMENTUM)


class SE(nn.Module):
    """Squeeze-and-excitation (Hu et al. 2018): x * sigmoid(FC(ReLU(FC(mean_hw(x)))))."""

    def __init__(self, c: int, reduction: int = 16):
        super().__init__()
        hidden = max(c // reduction, 4)  # NVAE: max(C // 16, 4)
        self.fc = nn.Sequential(nn.Linear(c, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, c), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.fc(x.mean(dim=(2, 3)))  # (B, C, H, W) -> (B, C) squeeze -> (B, C) excite
        return x * gate[:, :, None, None]


class DepthwiseSeparableConv(nn.Module):
    """Depthwise k x k conv (groups = C_in: k*k*C_in weights) then pointwise 1x1 (C_in*C_out weights).

    A full k x k conv costs k*k*C_in*C_out weights; the factorisation costs k*k*C_in + C_in*C_out,
    which is why NVAE can afford 5x5 kernels (a large receptive field) in its generative cells.
    ``mid=True`` puts BN-Swish between the two halves, as in the generative cell.
    """

    def __init__(self, c_in: int, c_out: int, k: int = 5, mid: bool = False):
        super().__init__()
        self.depthwise = Conv2d(c_in, c_in, k, padding=k // 2, groups=c_in)  # (B, C_in, H, W) -> same
        self.mid = nn.Sequential(_bn(c_in), nn.SiLU()) if mid else nn.Identity()
        self.pointwise = Conv2d(c_in, c_out, 1)  # (B, C_in, H, W) -> (B, C_out, H, W)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.mid(self.depthwise(x)))


class EncoderCell(nn.Module):
    """Bottom-up residual cell: BN - Swish - conv3x3 - BN - Swish - conv3x3 - SE.

    ``stride=2`` halves H, W and maps C_in -> C_out (the down-sampling cell); its skip path is a
    stride-2 1x1 conv. Otherwise C_in must equal C_out and the skip is the identity.
    """

    def __init__(self, c_in: int, c_out: int | None = None, stride: int = 1):
        super().__init__()
        c_out = c_in if c_out is None else c_out
        self.branch = nn.Sequential(
            _bn(c_in), nn.SiLU(), Conv2d(c_in, c_out, 3, stride=stride, padding=1),
            _bn(c_out), nn.SiLU(), Conv2d(c_out, c_out, 3, padding=1),
            SE(c_out),
        )
        self.skip = Conv2d(c_in, c_out, 1, stride=stride) if (stride != 1 or c_in != c_out) else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + RESIDUAL_SCALE * self.branch(x)  # (B, C_in, H, W) -> (B, C_out, H/stride, W/stride)


class GenerativeCell(nn.Module):
    """Top-down residual cell: BN - 1x1 expand (E*C) - BN - Swish - dw5x5 - BN - Swish - 1x1 - BN - SE.

    The expensive spatial mixing happens channel-by-channel (depthwise) in the wide E*C space.
    ``upsample=True`` doubles H, W first (nearest) and maps C_in -> C_out (the up-sampling cell); its
    skip path is nearest up-sampling followed by a 1x1 conv.
    """

    def __init__(self, c_in: int, c_out: int | None = None, expansion: int = 6, upsample: bool = False):
        super().__init__()
        c_out = c_in if c_out is None else c_out
        hidden = expansion * c_in
        self.up = nn.Upsample(scale_factor=2, mode="nearest") if upsample else nn.Identity()
        self.branch = nn.Sequential(
            _bn(c_in), Conv2d(c_in, hidden, 1),  # (B, C_in, H, W) -> (B, E*C_in, H, W)
            _bn(hidden), nn.SiLU(),
            DepthwiseSeparableConv(hidden, c_out, k=5, mid=True),  # dw5x5 - BN - Swish - 1x1: -> (B, C_out, H, W)
            _bn(c_out), SE(c_out),
        )
        self.skip = Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.up(x)  # (B, C_in, H, W) -> (B, C_in, 2H, 2W) when up-sampling
        return self.skip(x) + RESIDUAL_SCALE * self.branch(x)


class EncCombiner(nn.Module):
    """Posterior input: encoder feature + 1x1 conv(decoder state) (NVAE's ``EncCombinerCell``)."""

    def __init__(self, c_enc: int, c_dec: int):
        super().__init__()
        self.conv = Conv2d(c_dec, c_enc, 1)

    def forward(self, enc: torch.Tensor, dec: torch.Tensor) -> torch.Tensor:
        return enc + self.conv(dec)


class DecCombiner(nn.Module):
    """Feed a sampled latent into the top-down state: 1x1 conv of concat(s, z) (``DecCombinerCell``)."""

    def __init__(self, c_dec: int, c_z: int):
        super().__init__()
        self.conv = Conv2d(c_dec + c_z, c_dec, 1)

    def forward(self, s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([s, z], dim=1))  # (B, C+Z, h, w) -> (B, C, h, w)


__all__ = ["Conv2d", "power_iteration", "spectral_norms", "SE", "DepthwiseSeparableConv", "EncoderCell",
           "GenerativeCell", "EncCombiner", "DecCombiner", "BN_MOMENTUM", "RESIDUAL_SCALE"]
