"""NVAE: a deep hierarchical VAE (Vahdat & Kautz 2020, "NVAE: A Deep Hierarchical Variational Autoencoder").

The latent is split into groups z_1..z_L at several spatial scales (coarse first, e.g. 7x7 then 14x14
for 28x28 MNIST). Both distributions factorise over the groups (Eq. 1)::

    p(z) = prod_l p(z_l | z_<l)           q(z | x) = prod_l q(z_l | z_<l, x)

- A **bottom-up encoder** (:class:`~ldmcourse.autoencoders.nvae_cells.EncoderCell` s) turns x into one
  feature map per group.
- A **top-down path** (generative cells) is *shared*: walking down it gives the prior's parameters
  for z_l from the state s_l (which summarises z_<l), and the posterior combines the same s_l with
  the encoder feature for group l. Generation runs the same path with the posterior switched off.
- **Residual-normal posterior** (Eq. 2): if p(z_l | z_<l) = N(mu_p, sigma_p), the encoder outputs
  (dmu, dsigma) and q(z_l | z_<l, x) = N(mu_p + dmu, sigma_p * dsigma), whose KL is analytic::

      KL(q || p) = 0.5 * (dmu^2 / sigma_p^2 + dsigma^2 - 1) - log dsigma

  The first group's prior is N(0, I), so its posterior is simply N(dmu, dsigma).
- Bernoulli decoder (logits), for the dynamically binarised MNIST likelihood protocol.

The training aids (KL warm-up and balancing, spectral regularisation) are in :func:`nvae_loss`;
gradient clipping is done by :func:`ldmcourse.train.fit`. :func:`readjust_bn` re-estimates the
decoder's BatchNorm statistics for low-temperature sampling (Sec. 5 of the paper).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..utils import check_range, randn_like
from .nvae_cells import Conv2d, DecCombiner, EncCombiner, EncoderCell, GenerativeCell


@dataclass
class NVAEConfig:
    in_channels: int = 1
    image_size: int = 28
    channels: int = 16  # at full resolution; doubled by every down-sampling (28:16, 14:32, 7:64)
    n_pre_down: int = 1  # down-samplings before the finest latent scale (28 -> 14)
    pre_cells: int = 1  # encoder cells before each of those down-samplings (and generative cells after the mirror up-sampling)
    groups_per_scale: tuple[int, ...] = (2, 2)  # latent groups per scale, coarsest scale first (7x7, 14x14)
    latent_channels: int = 8  # channels of each group z_l
    cells_per_group: int = 1  # residual cells per group, in the encoder and in the top-down path
    expansion: int = 6  # channel expansion inside generative cells (NVAE: 6)
    # training aids, read by nvae_loss (here so the CLI makes flags of them)
    kl_warmup_steps: int = 500  # KL coefficient rises linearly from kl_min_coeff to 1 over these steps
    kl_min_coeff: float = 1e-4
    kl_balance: bool = True  # balance the KL across groups while the coefficient is < 1 (App. A)
    sr_lambda: float = 1e-2  # weight of the spectral regulariser (sum of the convs' sigma_max)
    sr_iters: int = 1  # power iterations per training step

    def __post_init__(self):
        self.groups_per_scale = tuple(int(g) for g in self.groups_per_scale)
        if not self.groups_per_scale or min(self.groups_per_scale) < 1:
            raise ValueError(f"groups_per_scale={self.groups_per_scale} needs at least one scale with >= 1 group")
        check_range("in_channels", self.in_channels, 1, integer=True)
        check_range("image_size", self.image_size, 1, integer=True)
        for name in ("channels", "latent_channels", "cells_per_group", "expansion"):
            check_range(name, getattr(self, name), 1, integer=True)
        for name in ("n_pre_down", "pre_cells", "kl_warmup_steps", "sr_iters"):
            check_range(name, getattr(self, name), 0, integer=True)
        check_range("kl_min_coeff", self.kl_min_coeff, 0, 1)
        check_range("sr_lambda", self.sr_lambda, 0, hint="0 turns the spectral regulariser off")
        down = 2 ** (self.n_pre_down + len(self.groups_per_scale) - 1)
        if self.image_size % down:
            raise ValueError(
                f"image_size={self.image_size} must be divisible by 2**(n_pre_down + scales - 1) = {down}. "
                f"For 28x28 MNIST use n_pre_down=1 with two scales (28 -> 14 -> 7), or load_dataset(..., size=32).")


def soft_clamp(x: torch.Tensor, c: float = 5.0) -> torch.Tensor:
    """c * tanh(x / c): keeps means and log-scales in (-c, c) without killing gradients (NVAE)."""
    return c * torch.tanh(x / c)


def normal_log_prob(z: torch.Tensor, mu: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, sigma^2), elementwise."""
    return -0.5 * ((z - mu) * torch.exp(-log_sigma)) ** 2 - log_sigma - 0.5 * torch.log(torch.tensor(2 * torch.pi))


def residual_normal_kl(d_mu: torch.Tensor, d_log_sigma: torch.Tensor, log_sigma_p: torch.Tensor) -> torch.Tensor:
    """KL(N(mu_p + dmu, sigma_p * dsigma) || N(mu_p, sigma_p)), elementwise (the paper's Eq. 2).

    It does not depend on mu_p: only the *relative* shift and scale matter.
    """
    return 0.5 * (d_mu ** 2 * torch.exp(-2 * log_sigma_p) + torch.exp(2 * d_log_sigma) - 1) - d_log_sigma


def bernoulli_log_prob(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log p(x | z) per image (B,) for x in {-1, 1} (binarised pixels) and Bernoulli logits."""
    target = (x + 1) / 2
    return -F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).sum(1)


@dataclass
class NVAEOutput:
    logits: torch.Tensor  # (B, C, H, W) Bernoulli logits of p(x | z)
    kl: list[torch.Tensor]  # per group l: (B,) KL(q(z_l | z_<l, x) || p(z_l | z_<l)), summed over (Z, h, w)
    log_q: list[torch.Tensor]  # per group: (B,) log q(z_l | z_<l, x) at the sampled z_l
    log_p: list[torch.Tensor]  # per group: (B,) log p(z_l | z_<l) at the sampled z_l
    z: list[torch.Tensor]  # per group: (B, Z, h, w)


class NVAE(nn.Module):
    def __init__(self, cfg: NVAEConfig):
        super().__init__()
        self.cfg = cfg
        c, zc, gps = cfg.channels, cfg.latent_channels, cfg.groups_per_scale
        # ---- bottom-up encoder: stem, pre-processing down-samplings, then cells per group (finest scale first)
        self.stem = Conv2d(cfg.in_channels, c, 3, padding=1)  # (B, 1, 28, 28) -> (B, c, 28, 28)
        pre: list[nn.Module] = []
        for _ in range(cfg.n_pre_down):
            pre += [EncoderCell(c) for _ in range(cfg.pre_cells)] + [EncoderCell(c, 2 * c, stride=2)]
            c *= 2
        self.pre = nn.Sequential(*pre)  # -> (B, c_fine, 14, 14)
        self.enc_groups, self.enc_down = nn.ModuleList(), nn.ModuleList()
        for i, n_groups in enumerate(reversed(gps)):  # finest scale first
            for _ in range(n_groups):
                self.enc_groups.append(nn.Sequential(*[EncoderCell(c) for _ in range(cfg.cells_per_group)]))
            if i < len(gps) - 1:
                self.enc_down.append(EncoderCell(c, 2 * c, stride=2))  # (B, c, h, w) -> (B, 2c, h/2, w/2)
                c *= 2
        self.enc0 = nn.Sequential(nn.ELU(), Conv2d(c, c, 1), nn.ELU())  # top feature -> first group's posterior
        # ---- top-down path, shared by prior and posterior (coarsest scale first)
        top = cfg.image_size // 2 ** (cfg.n_pre_down + len(gps) - 1)
        self.h0 = nn.Parameter(torch.rand(1, c, top, top))  # learned input of the top-down path
        self.scale_of = [s for s, n in enumerate(gps) for _ in range(n)]  # group l -> scale index (0 = coarsest)
        self.dec_cells, self.dec_up = nn.ModuleList(), nn.ModuleList()
        self.prior, self.posterior = nn.ModuleList(), nn.ModuleList()
        self.enc_comb, self.dec_comb = nn.ModuleList(), nn.ModuleList()
        self.latent_shapes: list[tuple[int, int, int]] = []
        size = top
        for l, s in enumerate(self.scale_of):
            if l > 0 and s != self.scale_of[l - 1]:
                self.dec_up.append(GenerativeCell(c, c // 2, cfg.expansion, upsample=True))  # (B, c, h, w) -> (B, c/2, 2h, 2w)
                c, size = c // 2, size * 2
            if l > 0:
                self.dec_cells.append(nn.Sequential(*[GenerativeCell(c, expansion=cfg.expansion) for _ in range(cfg.cells_per_group)]))
                self.prior.append(nn.Sequential(nn.ELU(), Conv2d(c, 2 * zc, 1)))  # s_l -> (mu_p, log sigma_p)
                self.enc_comb.append(EncCombiner(c, c))
            self.posterior.append(Conv2d(c, 2 * zc, 3, padding=1))  # combined feature -> (dmu, log dsigma)
            self.dec_comb.append(DecCombiner(c, zc))
            self.latent_shapes.append((zc, size, size))
        # ---- post-processing: mirror the pre-processing up to full resolution, then Bernoulli logits
        post: list[nn.Module] = []
        for _ in range(cfg.n_pre_down):
            post += [GenerativeCell(c, c // 2, cfg.expansion, upsample=True)]
            c //= 2
            post += [GenerativeCell(c, expansion=cfg.expansion) for _ in range(cfg.pre_cells)]
        self.post = nn.Sequential(*post)
        self.out = nn.Sequential(nn.ELU(), Conv2d(c, cfg.in_channels, 3, padding=1))  # (B, c, 28, 28) -> (B, 1, 28, 28)
        # number of optimisation steps taken; drives the KL warm-up and is checkpointed with the weights
        self.register_buffer("train_step", torch.zeros((), dtype=torch.long))
        # channels-last memory: on CPU, oneDNN's depthwise-conv backward is ~40x faster in this layout
        self.to(memory_format=torch.channels_last)

    @property
    def n_groups(self) -> int:
        return len(self.scale_of)

    def generative_modules(self) -> list[nn.Module]:
        """The modules that sampling runs through (whose BatchNorms :func:`readjust_bn` re-estimates)."""
        return [self.dec_cells, self.dec_up, self.prior, self.dec_comb, self.post, self.out]

    def _check(self, x: torch.Tensor) -> None:
        c, n = self.cfg.in_channels, self.cfg.image_size
        if x.ndim != 4 or x.shape[1] != c or tuple(x.shape[-2:]) != (n, n):
            raise ValueError(f"NVAE expects images of shape (B, {c}, {n}, {n}), got {tuple(x.shape)}. Load MNIST with "
                             f"load_dataset(..., size={n}), or build NVAEConfig(image_size={x.shape[-1]}, in_channels=...).")

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Bottom-up features, one per group, in top-down order (feature l conditions q(z_l | ...))."""
        self._check(x)
        h = self.pre(self.stem(x.contiguous(memory_format=torch.channels_last)))  # (B, c_fine, 14, 14)
        feats, g = [], 0
        for i, n_groups in enumerate(reversed(self.cfg.groups_per_scale)):
            for _ in range(n_groups):
                h = self.enc_groups[g](h)
                feats.append(h)
                g += 1
            if i < len(self.enc_down):
                h = self.enc_down[i](h)  # (B, c, h, w) -> (B, 2c, h/2, w/2)
        feats.reverse()  # top-down order; feats[0] is the top (coarsest) one
        feats[0] = self.enc0(feats[0])
        return feats

    def _prior(self, l: int, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if l == 0:  # p(z_1) = N(0, I)
            shape = (s.shape[0], *self.latent_shapes[0])
            zero = torch.zeros(shape, device=s.device, dtype=s.dtype)
            return zero, zero
        mu, log_sigma = self.prior[l - 1](s).chunk(2, dim=1)  # (B, 2Z, h, w) -> 2 x (B, Z, h, w)
        return soft_clamp(mu), soft_clamp(log_sigma)

    def _step_down(self, l: int, s: torch.Tensor) -> torch.Tensor:
        """Top-down state before group l: up-sample at a scale change, then the group's generative cells."""
        if l == 0:
            return s
        if self.scale_of[l] != self.scale_of[l - 1]:
            s = self.dec_up[self.scale_of[l] - 1](s)
        return self.dec_cells[l - 1](s)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> NVAEOutput:
        """x in [-1, 1] (binarised: {-1, 1}) -> logits of p(x | z) with z ~ q(z | x), and per-group KL terms."""
        return self.top_down(self.encode(x), generator)

    def top_down(self, feats: list[torch.Tensor], generator: torch.Generator | None = None) -> NVAEOutput:
        """Walk the shared top-down path with posterior samples, given the encoder's features."""
        s = self.h0.expand(feats[0].shape[0], -1, -1, -1)  # (B, c_top, 7, 7)
        kl, log_q, log_p, zs = [], [], [], []
        for l in range(self.n_groups):
            s = self._step_down(l, s)
            mu_p, log_sig_p = self._prior(l, s)
            h = feats[0] if l == 0 else self.enc_comb[l - 1](feats[l], s)
            d_mu, d_log_sig = (soft_clamp(t) for t in self.posterior[l](h).chunk(2, dim=1))
            mu_q, log_sig_q = mu_p + d_mu, log_sig_p + d_log_sig  # residual-normal posterior
            eps = torch.randn(mu_q.shape, generator=generator, device=mu_q.device, dtype=mu_q.dtype)
            z = mu_q + torch.exp(log_sig_q) * eps  # reparameterised sample, (B, Z, h, w)
            kl.append(residual_normal_kl(d_mu, d_log_sig, log_sig_p).flatten(1).sum(1))
            log_q.append(normal_log_prob(z, mu_q, log_sig_q).flatten(1).sum(1))
            log_p.append(normal_log_prob(z, mu_p, log_sig_p).flatten(1).sum(1))
            zs.append(z)
            s = self.dec_comb[l](s, z)
        return NVAEOutput(self.out(self.post(s)), kl, log_q, log_p, zs)

    @torch.no_grad()
    def top_posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, log sigma) of q(z_1 | x) for the top group (p(z_1) = N(0, I): the residual is the posterior)."""
        mu, log_sigma = (soft_clamp(t) for t in self.posterior[0](self.encode(x)[0]).chunk(2, dim=1))
        return mu, log_sigma

    def sample(self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None,
               return_latents: bool = False, z_top: torch.Tensor | None = None):
        """Ancestral sampling z_l = mu_p + t * sigma_p * eps down the top-down path -> logits (n, C, H, W).

        ``generator``: one, or one per sample (then sample i depends only on generator i; in eval mode
        BatchNorm uses its running statistics, so the batch size changes nothing).

        ``temperature`` t scales every group's prior standard deviation (t = 0: each z_l is its prior
        mean; no noise is drawn). ``z_top`` (n, *latent_shapes[0]): the top group given instead of drawn.
        With ``return_latents``, also returns the lists of z_l and of prior means.
        """
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        s = self.h0.expand(n, -1, -1, -1)
        zs, mus = [], []
        for l in range(self.n_groups):
            s = self._step_down(l, s)
            mu_p, log_sig_p = self._prior(l, s)
            if l == 0 and z_top is not None:
                z = z_top
            elif temperature == 0:
                z = mu_p
            else:
                eps = randn_like(mu_p, generator)
                z = mu_p + temperature * torch.exp(log_sig_p) * eps
            zs.append(z)
            mus.append(mu_p)
            s = self.dec_comb[l](s, z)
        logits = self.out(self.post(s))
        return (logits, zs, mus) if return_latents else logits


# ----------------------------------------------------------------------------------------------
# objective and training aids
# ----------------------------------------------------------------------------------------------

def kl_coeff(step: int, warmup_steps: int, min_coeff: float = 1e-4) -> float:
    """KL warm-up: beta rises linearly from ``min_coeff`` to 1 over ``warmup_steps`` (NVAE's ``kl_coeff``)."""
    if warmup_steps <= 0:
        return 1.0
    return max(min(step / warmup_steps, 1.0), min_coeff)


def group_alphas(model: NVAE) -> torch.Tensor:
    """Per-group size weights alpha_l for KL balancing: spatial size / groups at that scale, min 1.

    NVAE's ``kl_balancer_coeff(fun='square')``: a 14x14 group holds 4x the latent units of a 7x7 one,
    so a larger KL there is expected and is penalised less.
    """
    gps = model.cfg.groups_per_scale
    a = torch.tensor([4.0 ** s / gps[s] for s in model.scale_of])
    return a / a.min()


def kl_balance_coeffs(kl: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """gamma_l proportional to (mean_batch KL_l + 0.01) / alpha_l, normalised to mean 1 (NVAE App. A).

    ``kl``: (B, L) per-image, per-group KL. Groups that already carry much information are penalised
    more, groups close to collapse less, so during warm-up every group is pushed to stay in use.
    """
    g = (kl.detach().abs().mean(0) + 0.01) / alpha.to(kl)  # (L,)
    return g / g.mean()


def nvae_loss(cfg: NVAEConfig):
    """``loss_fn(model, batch, generator)`` for :func:`ldmcourse.train.fit` (negative ELBO in nats/image).

    loss = E_batch[ -log p(x|z) + beta(step) * sum_l gamma_l KL_l ] + lambda * sum_convs sigma_max(W)

    x is dynamically binarised each step. beta is the KL warm-up, gamma the KL balancing (only while
    beta < 1), the last term the spectral regulariser. The reported ``elbo`` always uses beta = gamma = 1.
    """
    from ..data import dynamic_binarize
    from .nvae_cells import spectral_norms

    def loss_fn(model, batch, generator):
        net = getattr(model, "module", model)  # unwrap DistributedDataParallel
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        x = dynamic_binarize(x, generator) * 2 - 1  # {-1, 1}
        out = model(x, generator=generator)
        recon = -bernoulli_log_prob(out.logits, x)  # (B,) nats
        kl = torch.stack(out.kl, dim=1)  # (B, L)
        beta = kl_coeff(int(net.train_step), cfg.kl_warmup_steps, cfg.kl_min_coeff)
        gamma = kl_balance_coeffs(kl, group_alphas(net)) if cfg.kl_balance and beta < 1 else torch.ones_like(kl[0])
        loss = (recon + beta * (kl * gamma).sum(1)).mean()
        recon, kl = recon.detach(), kl.detach()
        logs = {"recon": float(recon.mean()), "kl": float(kl.sum(1).mean()), "elbo": float(-(recon + kl.sum(1)).mean()),
                "kl_coeff": beta, **{f"kl_{l}": float(v) for l, v in enumerate(kl.mean(0))}}
        if cfg.sr_lambda:
            sr = torch.stack(spectral_norms(net, cfg.sr_iters, update=net.training)).sum()
            loss = loss + cfg.sr_lambda * sr
            logs["sr"] = float(sr.detach())
        if net.training:
            net.train_step += 1
        return loss, logs

    return loss_fn


def _log_w(out: NVAEOutput, x: torch.Tensor) -> torch.Tensor:
    return bernoulli_log_prob(out.logits, x) + sum(p - q for p, q in zip(out.log_p, out.log_q))


@torch.no_grad()
def log_weights(model: NVAE, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """log w = log p(x | z) + sum_l [log p(z_l | z_<l) - log q(z_l | z_<l, x)] for one z ~ q per image: (B,)."""
    return _log_w(model(x, generator=generator), x)


@torch.no_grad()
def elbo(model: NVAE, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """ELBO per image (B,) with the analytic KL: log p(x | z) - sum_l KL_l, one z ~ q(z | x)."""
    out = model(x, generator=generator)
    return bernoulli_log_prob(out.logits, x) - sum(out.kl)


@torch.no_grad()
def iwae_log_likelihood(model: NVAE, x: torch.Tensor, k: int, generator: torch.Generator | None = None,
                        chunk: int = 500) -> torch.Tensor:
    """Importance-weighted estimate of log p(x) per image (B,) (Burda et al. 2016)::

        log p(x) >= log (1/k) sum_i w_i,   w_i = p(x, z_i) / q(z_i | x),  z_i ~ q(z | x)

    The bound tightens as k grows (k = 1 is the single-sample ELBO). The bottom-up encoder runs once
    per image; the top-down path runs for ``chunk`` samples at a time. Call on a model in eval mode, so
    BatchNorm uses its running statistics and the k samples do not interact.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if model.training:
        raise ValueError("iwae_log_likelihood needs model.eval(): in train mode BatchNorm mixes the k samples")
    out = []
    for xi in x[:, None]:  # (1, C, H, W)
        feats = model.encode(xi)  # deterministic given x in eval mode
        lw = []
        for j in range(0, k, chunk):
            m = min(chunk, k - j)
            o = model.top_down([f.expand(m, -1, -1, -1) for f in feats], generator)
            lw.append(_log_w(o, xi.expand(m, -1, -1, -1)))
        lw = torch.cat(lw)  # (k,)
        out.append(torch.logsumexp(lw.double(), 0) - torch.log(torch.tensor(float(k), dtype=torch.float64)))
    return torch.stack(out).float()


@torch.no_grad()
def readjust_bn(model: NVAE, temperature: float, n_batches: int = 10, batch_size: int = 64,
                generator: torch.Generator | None = None) -> NVAE:
    """A copy of ``model`` whose generative BatchNorm statistics are re-estimated at ``temperature``.

    BatchNorm's running statistics were collected on posterior samples; at low temperature the
    activations are less spread, and the stale statistics wash samples out. NVAE re-runs sampling
    in train mode so the statistics are recomputed (here: an exact average over ``n_batches``).
    The original model is untouched (its statistics stay right for reconstruction and NLL).
    """
    m = copy.deepcopy(model)
    bns = [b for part in m.generative_modules() for b in part.modules() if isinstance(b, nn.BatchNorm2d)]
    for b in bns:
        b.reset_running_stats()
        b.momentum = None  # cumulative average over the batches below
    m.train()
    for _ in range(n_batches):
        m.sample(batch_size, temperature, generator)
    return m.eval()


__all__ = ["NVAE", "NVAEConfig", "NVAEOutput", "readjust_bn", "nvae_loss", "kl_coeff", "kl_balance_coeffs",
           "group_alphas", "log_weights", "elbo", "iwae_log_likelihood", "residual_normal_kl", "normal_log_prob",
           "bernoulli_log_prob", "soft_clamp"]
