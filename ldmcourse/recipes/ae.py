"""Recipe for the deterministic autoencoders: ``ldmcourse train ae --arch conv|mlp-baseline|mlp-improved``.

Augmentation: ``--rotate-deg 10 --noise-std 0.1``. Learning-rate schedule: ``fit``'s warm-up + cosine.
"""

from __future__ import annotations

import torch

from ..autoencoders.ae import AEConfig, ae_loss, build_ae
from ..metrics import mse, psnr
from . import Recipe, metric_options

SIZES = {
    "smoke": {"fit": dict(steps=20, batch_size=32, warmup=5, log_every=5), "model": dict(channels=(8, 16, 32)), "data": dict(n_train=256)},
    "cpu": {"fit": dict(steps=600, batch_size=128, lr=2e-3, warmup=50, log_every=50)},
    "gpu": {"fit": dict(steps=5000, batch_size=256, lr=2e-3, warmup=200, log_every=100), "model": dict(channels=(64, 128, 256), latent_dim=32)},
}


def picture(model, cfg, data, device, generator):
    """Originals (top rows) over their reconstructions (bottom rows)."""
    x, _ = data.get_batch(torch.arange(min(32, len(data))))
    x = x.to(device)
    with torch.no_grad():
        x_hat = model(x)
    return torch.cat([x, x_hat]).cpu(), "reconstructions.png"


@metric_options()
@torch.no_grad()
def recon_metric(model, meta, test_data, device, options):
    x, _ = test_data.tensors()
    outs = [model(x[i:i + 256].to(device)).cpu() for i in range(0, len(x), 256)]
    x_hat = torch.cat(outs)
    return {"mse": mse(x_hat, x), "psnr": psnr(x_hat, x), "n": len(x)}


RECIPES = {
    "ae": Recipe(
        name="ae", model_config=AEConfig, build=build_ae, loss=ae_loss, sizes=SIZES,
        picture=picture, sample=None, metrics={"recon": recon_metric},
        description="autoencoder: conv or the seed's MLPs (deterministic; reconstructs, cannot sample)",
    ),
}
