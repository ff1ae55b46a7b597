"""Recipe for the KL autoencoder, latent diffusion's first stage (``ldmcourse train kl-autoencoder``)."""

from __future__ import annotations

import torch

from ..autoencoders.kl import KLAutoencoder, KLAutoencoderConfig, kl_autoencoder_loss
from ..metrics import mse, psnr
from . import Recipe, metric_options

SIZES = {
    "smoke": {"fit": dict(steps=20, batch_size=32, lr=1e-3, warmup=5, log_every=5),
              "model": dict(channels=(8, 16, 16), groups=4), "data": dict(n_train=256)},
    # the knee of PSNR vs training time (issue 14; 1 thread, test PSNR of the EMA model, cosine over 800 steps):
    # 100 steps 20.3 dB, 200 23.8, 300 25.6, 400 26.6, 500 27.3, 600 27.7, 800 28.3: 400 steps it is.
    # (8, 16, 16) is 1.7x cheaper per step but slower per second: 24.0 dB at 400 steps, 26.8 dB at 1,000.
    "cpu": {"fit": dict(steps=400, batch_size=64, lr=1e-3, warmup=30, log_every=50, ema_decay=0.99),
            "model": dict(channels=(16, 32, 32))},
    "gpu": {"fit": dict(steps=20000, batch_size=128, lr=4.5e-4, warmup=500, log_every=100),
            "model": dict(channels=(64, 128, 256), num_res_blocks=2, disc_weight=0.5, disc_start=10000),
            "data": dict(dataset="fashion-mnist")},
}


@torch.no_grad()
def picture(model, cfg, data, device, generator):
    """Originals (top rows) over reconstructions from the posterior mean (bottom rows)."""
    x, _ = data.get_batch(torch.arange(min(32, len(data))))
    x = x.to(device)
    x_hat, _ = model(x, sample=False)
    return torch.cat([x, x_hat.clamp(-1, 1)]).cpu(), "reconstructions.png"


@metric_options()
@torch.no_grad()
def recon_metric(model, meta, test_data, device, options):
    """Reconstruction error (posterior mean) and the latent statistics latent diffusion cares about."""
    x, _ = test_data.tensors()
    outs, zs = [], []
    for i in range(0, len(x), 256):
        xb = x[i:i + 256].to(device)
        post = model.encode(xb)
        zs.append(post.mean.cpu())
        outs.append(model.decode(post.mean).clamp(-1, 1).cpu())
    x_hat, z = torch.cat(outs), torch.cat(zs)
    return {"mse": mse(x_hat, x), "psnr": psnr(x_hat, x), "n": len(x),
            "latent_std": float(z.std()), "scale_factor": 1.0 / float(z.std()),
            "latent_channel_mean": z.mean(dim=(0, 2, 3)).tolist(), "latent_channel_std": z.std(dim=(0, 2, 3)).tolist()}


RECIPES = {
    "kl-autoencoder": Recipe(
        name="kl-autoencoder", model_config=KLAutoencoderConfig, build=KLAutoencoder, loss=kl_autoencoder_loss,
        sizes=SIZES, picture=picture, sample=None, metrics={"recon": recon_metric},
        description="KL autoencoder (latent diffusion's first stage; reconstructs, does not sample: "
                    "train `ldm` on top of it with --first-stage CKPT)",
    ),
}
