"""Recipe for NVAE, the hierarchical VAE (``ldmcourse train nvae``; ``eval --metric elbo|nll|recon``).

Likelihood protocol (as for the VAE): dynamically binarised MNIST at its native 28x28 (the model's
scales are 28 -> 14 -> 7, so no padding changes the pixel count), Bernoulli decoder, NLL estimated
with the importance-weighted bound (``--option k=1000``), in nats per 28x28 image. The test set is
binarised once with a fixed seed (``--seed``), so repeated evaluations see the same bits.
"""

from __future__ import annotations

import torch

from ..autoencoders.nvae import NVAE, NVAEConfig, bernoulli_log_prob, iwae_log_likelihood, nvae_loss, readjust_bn
from ..data import dynamic_binarize
from ..metrics import bits_per_dim, mse, psnr
from ..utils import Progress, check_range, per_sample_generators
from . import Recipe, metric_options, refuse_sampler_options
from .classifier import fid_metric

# Per-profile sizes. smoke: every line runs; cpu: minutes on 2 cores (mnist5k); gpu: the NVAE paper's
# MNIST shape at reduced depth (2 scales x 5 groups of 20 channels, 32 base channels, expansion 6).
SIZES = {
    "smoke": {"fit": dict(steps=6, batch_size=16, lr=2e-3, warmup=2, log_every=2, grad_clip=200.0, ema_decay=None),
              "model": dict(channels=8, expansion=2, groups_per_scale=(1, 1), latent_channels=4, kl_warmup_steps=4),
              "data": dict(image_size=28, n_train=128),
              "eval": {"nll": dict(n=32, k=10), "elbo": dict(n=200), "recon": dict(n=200), "fid": dict(n=200), "kid": dict(n=200)}},
    "cpu": {"fit": dict(steps=800, batch_size=64, lr=3e-3, warmup=50, log_every=20, grad_clip=200.0, ema_decay=None),
            "model": dict(channels=8, expansion=3, groups_per_scale=(2, 2), latent_channels=8, kl_warmup_steps=240),
            "data": dict(image_size=28),
            "eval": {"nll": dict(n=100, k=1000)}},  # notebook 03's protocol
    "gpu": {"fit": dict(steps=60_000, batch_size=200, lr=3e-3, warmup=1000, log_every=200, grad_clip=200.0,
                        ema_decay=0.9999, amp="bf16"),
            "model": dict(channels=32, expansion=6, groups_per_scale=(5, 5), latent_channels=20, pre_cells=2,
                          kl_warmup_steps=18_000),
            "data": dict(dataset="mnist", image_size=28)},
}


def binarized_test_set(test_data, seed: int = 0, chunk: int = 250) -> torch.Tensor:
    """All test images, binarised once with a fixed seed, as {-1, 1}: (N, C, H, W).

    Same draw order as the VAE recipe (one CPU generator, 250 images at a time), so that
    ``ldmcourse eval`` scores the VAE and NVAE on identical bits.
    """
    x, _ = test_data.tensors()
    g = torch.Generator().manual_seed(int(seed))
    return torch.cat([dynamic_binarize(b, g) for b in _batches(x, chunk)]) * 2 - 1


def _batches(x: torch.Tensor, size: int):
    for i in range(0, len(x), size):
        yield x[i:i + size]


def probabilities_as_images(logits: torch.Tensor) -> torch.Tensor:
    """Bernoulli logits -> the mean image 2 p - 1 in [-1, 1] (what NVAE shows for MNIST)."""
    return torch.sigmoid(logits) * 2 - 1


@torch.no_grad()
def sample(model, meta, n, generator, device, sampler=None, steps=None, batch_size=256, temperature=1.0,
           readjust=True, **options):
    """Ancestral samples at ``temperature``; for t < 1 the decoder's BatchNorm statistics are
    re-estimated first (``readjust=false`` turns that off). Sample i's noise comes from its own generator
    (seeded from ``generator``), so the images do not depend on ``batch_size``. ``sampler``/``steps`` are refused."""
    refuse_sampler_options("NVAE", sampler, steps, options, takes=("temperature", "readjust"))
    check_range("batch_size", batch_size, 1, integer=True)
    check_range("temperature", float(temperature), 0)
    model = model.to(device).eval()
    if readjust and float(temperature) < 1:
        model = readjust_bn(model, float(temperature), generator=generator)
    gens = per_sample_generators(generator, n, device)
    out = [model.sample(len(gens[i:i + batch_size]), float(temperature), gens[i:i + batch_size]).float().cpu()
           for i in range(0, n, batch_size)]
    return probabilities_as_images(torch.cat(out))


def picture(model, cfg, data, device, generator):
    """Binarised originals, their reconstructions (Bernoulli means), then prior samples at t = 1."""
    x = binarized_test_set(data.subset(min(16, len(data))))[:16].to(device)
    with torch.no_grad():
        rec = probabilities_as_images(model(x, generator=generator).logits)
        smp = probabilities_as_images(model.sample(16, 1.0, generator))
    return torch.cat([x, rec, smp]).float().cpu(), "nvae.png"


@metric_options(batch_size=(int, 1))
@torch.no_grad()
def elbo_metric(model, meta, test_data, device, options):
    """One-sample ELBO (analytic KL per group) of the binarised test set, nats per image."""
    x = binarized_test_set(test_data, options.get("seed", 0))
    g = torch.Generator(device=device).manual_seed(options.get("seed", 0))
    recon, kl = [], []
    for b in _batches(x, int(options.get("batch_size", 250))):
        out = model(b.to(device), generator=g)
        recon.append(-bernoulli_log_prob(out.logits, b.to(device)).cpu())
        kl.append(torch.stack(out.kl, 1).cpu())
    recon, kl = torch.cat(recon), torch.cat(kl)  # (N,), (N, L)
    v = -(recon + kl.sum(1))
    return {"elbo_nats": float(v.mean()), "neg_elbo_nats": float(-v.mean()), "recon_nats": float(recon.mean()),
            "kl_nats": float(kl.sum(1).mean()), "kl_per_group": [float(k) for k in kl.mean(0)], "n": len(x)}


@metric_options(k=(int, 1), chunk=(int, 1))
@torch.no_grad()
def nll_metric(model, meta, test_data, device, options):
    k = int(options.get("k", 1000))
    x = binarized_test_set(test_data, options.get("seed", 0))
    g = torch.Generator(device=device).manual_seed(options.get("seed", 0))
    ll = []
    with Progress(len(x), f"nll k={k}") as bar:  # image by image inside, so batches of 10 change no draw
        for b in _batches(x, 10):
            ll.append(iwae_log_likelihood(model, b.to(device), k, g, chunk=int(options.get("chunk", 500))).cpu())
            bar.update(len(b))
    ll = torch.cat(ll)
    nll, dims = float(-ll.mean()), x[0].numel()
    return {"nll_nats": nll, "bits_per_dim": bits_per_dim(nll, dims), "nll_sem": float(ll.std() / len(ll) ** 0.5) if len(ll) > 1 else 0.0,
            "k": k, "n": len(x), "pixels": dims, "likelihood": "bernoulli"}


@metric_options()
@torch.no_grad()
def recon_metric(model, meta, test_data, device, options):
    """Reconstruction of the binarised test set: -log p(x | z) (nats/image), and MSE/PSNR of the Bernoulli mean."""
    x = binarized_test_set(test_data, options.get("seed", 0))
    g = torch.Generator(device=device).manual_seed(options.get("seed", 0))
    nll, rec = [], []
    for b in _batches(x, 256):
        logits = model(b.to(device), generator=g).logits
        nll.append(-bernoulli_log_prob(logits, b.to(device)).cpu())
        rec.append(probabilities_as_images(logits).cpu())
    x_hat = torch.cat(rec)
    return {"recon_nats": float(torch.cat(nll).mean()), "mse": mse(x_hat, x), "psnr": psnr(x_hat, x), "n": len(x)}


RECIPES = {
    "nvae": Recipe(
        name="nvae", model_config=NVAEConfig, build=NVAE, loss=nvae_loss, sizes=SIZES, picture=picture,
        sample=sample, metrics={"elbo": elbo_metric, "nll": nll_metric, "recon": recon_metric, "fid": fid_metric, "kid": fid_metric},
        description="NVAE hierarchical VAE (latent groups at 2+ scales, Bernoulli decoder, binarised MNIST)",
        takes_sampler=False,
    ),
}
