"""Recipe for the VAE (MLP or conv; Bernoulli or Gaussian likelihood): ``ldmcourse train vae``.

Metrics (``ldmcourse eval --ckpt DIR/checkpoint.pt --metric M``):

- ``elbo``: the one-sample ELBO on the test set in nats per image (and its recon and KL terms);
- ``nll``: the importance-weighted bound −log p(x) ≈ −L_k in nats (``--option k=1000``, ``--option chunk=100``);
- ``recon``: MSE / PSNR of the decoded posterior mean against the model's target.

Bernoulli models are evaluated on the test images dynamically binarised with ``--seed`` (the literature's
protocol: with 28x28 MNIST the numbers are nats per 784-pixel image, comparable with 86.76 for a VAE).
Learning-rate schedule: ``fit``'s linear warm-up + cosine decay (the seed's ReduceLROnPlateau needs a
validation signal each epoch and makes resuming depend on it; cosine is a fixed function of the step).
"""

from __future__ import annotations

import torch

from ..autoencoders.vae import VAE, VAEConfig, elbo, iwae_nll, prepare_batch, vae_loss
from ..metrics import bits_per_dim, mse, psnr
from ..utils import Progress, check_range, per_sample_generators
from . import Recipe, metric_options, refuse_sampler_options
from .classifier import fid_metric

SIZES = {
    "smoke": {"fit": dict(steps=30, batch_size=64, lr=2e-3, warmup=5, log_every=10),
              "model": dict(channels=(8, 16), latent_dim=8), "data": dict(n_train=512, image_size=28),
              "eval": {"nll": dict(n=64, k=20), "elbo": dict(n=200), "recon": dict(n=200), "fid": dict(n=200), "kid": dict(n=200)}},
    # mnist5k (4,000 train digits), 28x28: a few minutes on 2 idle cores
    "cpu": {"fit": dict(steps=1000, batch_size=128, lr=2e-3, warmup=50, log_every=50, ema_decay=0.995),
            "model": dict(channels=(16, 32), latent_dim=16, kl_warmup=200), "data": dict(image_size=28),
            "eval": {"nll": dict(n=100, k=1000)}},  # the notebooks' protocol (k=1000 decodes 1000x per image)
    # full MNIST (60,000), 28x28; target: test NLL (IWAE k=1000) <= 86 nats. Not measured (no GPU lent).
    "gpu": {"fit": dict(steps=100_000, batch_size=128, lr=1e-3, warmup=1000, log_every=500, ema_decay=0.9995),
            "model": dict(channels=(64, 128), latent_dim=32, kl_warmup=10_000), "data": dict(dataset="mnist", image_size=28),
            "eval": {"nll": dict(k=1000)}},
}


def _test_batches(model: VAE, test_data, device, seed: int, batch_size: int = 250):
    """Test images as the model sees them at evaluation: binarised (Bernoulli) with a fixed seed."""
    x_all, _ = test_data.tensors()
    g = torch.Generator(device=device).manual_seed(int(seed))
    for i in range(0, len(x_all), batch_size):
        _, target = prepare_batch(model.cfg, x_all[i:i + batch_size].to(device), g, train=False)
        yield target, g


def picture(model, cfg, data, device, generator):
    """Rows: 16 test originals (as the model sees them), their reconstructions, then 32 samples from the prior."""
    x, _ = data.get_batch(torch.arange(min(16, len(data))))
    _, x = prepare_batch(model.cfg, x.to(device), generator, train=False)
    with torch.no_grad():
        mu, _ = model.encode(x)
        rec = model.decode_mean(mu)
        samples = model.sample_prior(32, generator, device=device)
    return torch.cat([x, rec, samples]).cpu(), "samples.png"


@torch.no_grad()
def sample(model, meta, n, generator, device, batch_size=256, sampler=None, steps=None, **options):
    """``n`` decoded prior samples. Sample i's z comes from its own generator (seeded from ``generator``),
    so the images do not depend on ``batch_size``. A VAE has no sampler: ``sampler``/``steps`` are refused."""
    refuse_sampler_options("VAE", sampler, steps, options)
    check_range("batch_size", batch_size, 1, integer=True)
    gens = per_sample_generators(generator, n, device)
    out = [model.sample_prior(len(gens[i:i + batch_size]), gens[i:i + batch_size], device=device).cpu()
           for i in range(0, n, batch_size)]
    return torch.cat(out)


@metric_options()
@torch.no_grad()
def elbo_metric(model, meta, test_data, device, options):
    sums = {"elbo": 0.0, "recon": 0.0, "kl": 0.0}
    n = 0
    for x, g in _test_batches(model, test_data, device, options.get("seed", 0)):
        t = elbo(model, x, g)
        for k in sums:
            sums[k] += float(getattr(t, k).sum())
        n += len(x)
    return {"elbo_nats": sums["elbo"] / n, "neg_elbo_nats": -sums["elbo"] / n, "recon_nats": sums["recon"] / n,
            "kl_nats": sums["kl"] / n, "n": n}


@metric_options(k=(int, 1), chunk=(int, 1), batch_size=(int, 1))
@torch.no_grad()
def nll_metric(model, meta, test_data, device, options):
    k, chunk = int(options.get("k", 1000)), int(options.get("chunk", 100))
    total, n = 0.0, 0
    with Progress(len(test_data), f"nll k={k}") as bar:
        for x, g in _test_batches(model, test_data, device, options.get("seed", 0), batch_size=int(options.get("batch_size", 100))):
            total += float(iwae_nll(model, x, k=k, generator=g, chunk=chunk).sum())
            n += len(x)
            bar.update(len(x))
    dims = test_data[0][0].numel()
    return {"nll_nats": total / n, "bits_per_dim": bits_per_dim(total / n, dims), "k": k, "n": n,
            "pixels": dims, "likelihood": model.cfg.likelihood}


@metric_options()
@torch.no_grad()
def recon_metric(model, meta, test_data, device, options):
    xs, recs = [], []
    for x, _ in _test_batches(model, test_data, device, options.get("seed", 0)):
        mu, _ = model.encode(x)
        xs.append(x.cpu())
        recs.append(model.decode_mean(mu).cpu())
    x, rec = torch.cat(xs), torch.cat(recs)
    return {"mse": mse(rec, x), "psnr": psnr(rec, x), "n": len(x),
            "target": "binarized" if model.cfg.likelihood == "bernoulli" and model.cfg.binarize else "grey"}


RECIPES = {
    "vae": Recipe(
        name="vae", model_config=VAEConfig, build=VAE, loss=vae_loss, sizes=SIZES, picture=picture, sample=sample,
        metrics={"elbo": elbo_metric, "nll": nll_metric, "recon": recon_metric, "fid": fid_metric, "kid": fid_metric},
        description="variational autoencoder (MLP or conv; samples from the prior; ELBO and IWAE NLL)",
        takes_sampler=False,
    ),
}
