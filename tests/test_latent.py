"""The KL autoencoder (first stage) and latent diffusion wiring."""

import math

import pytest
import torch

from ldmcourse.autoencoders.kl import (DiagonalGaussian, KLAutoencoder, KLAutoencoderConfig, _no_grad_params_call,
                                       kl_autoencoder_loss)
from ldmcourse.autoencoders.perceptual import PerceptualLoss, random_features


def tiny(**kw):
    base = dict(channels=(8, 16, 16), groups=4, perceptual_weight=0.0)
    return KLAutoencoderConfig(**{**base, **kw})


# ------------------------------------------------------------------------------------------------
# KL autoencoder
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("channels,f", [((8,), 1), ((8, 16), 2), ((8, 16, 16), 4), ((8, 8, 16, 16), 8)])
@pytest.mark.parametrize("c", [1, 4, 8])
def test_encode_decode_shapes(channels, f, c):
    cfg = KLAutoencoderConfig(channels=channels, latent_channels=c, groups=4, image_size=32)
    ae = KLAutoencoder(cfg)
    x = torch.randn(2, 1, 32, 32)
    post = ae.encode(x)
    assert cfg.factor == f and post.mean.shape == (2, c, 32 // f, 32 // f) == (2, *cfg.latent_shape)
    assert ae.decode(post.sample(torch.Generator().manual_seed(0))).shape == x.shape


def test_rgb_and_28px_shapes_and_errors():
    ae = KLAutoencoder(tiny(in_channels=3, image_size=28, channels=(8, 16, 16)))
    assert ae.encode(torch.randn(1, 3, 28, 28)).mean.shape == (1, 4, 7, 7)
    with pytest.raises(ValueError, match="expects images of shape"):
        ae.encode(torch.randn(1, 1, 28, 28))
    with pytest.raises(ValueError, match="latents"):
        ae.decode(torch.randn(1, 3, 7, 7))
    with pytest.raises(ValueError, match="divisible by f"):
        KLAutoencoderConfig(image_size=30, channels=(8, 16, 16))
    with pytest.raises(ValueError, match="rec_loss"):
        KLAutoencoderConfig(rec_loss="l3")


def test_diagonal_gaussian_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    moments = torch.randn(3, 8, 2, 2, generator=g)
    q = DiagonalGaussian(moments)
    ref = torch.distributions.kl_divergence(torch.distributions.Normal(q.mean, q.std),
                                            torch.distributions.Normal(0.0, 1.0)).flatten(1).sum(1)
    torch.testing.assert_close(q.kl(), ref)
    assert float(DiagonalGaussian(torch.zeros(1, 8, 2, 2)).kl().abs().max()) == 0.0
    s1, s2 = q.sample(torch.Generator().manual_seed(5)), q.sample(torch.Generator().manual_seed(5))
    assert torch.equal(s1, s2) and torch.equal(q.mode(), q.mean)


def test_perceptual_distance_is_a_distance_with_gradients():
    p = PerceptualLoss(random_features(1, channels=(8, 16)))
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(2, 1, 16, 16, generator=g), torch.randn(2, 1, 16, 16, generator=g)
    assert float(p(x, x).abs().max()) < 1e-6
    x.requires_grad_(True)
    d = p(x, y)
    assert d.shape == (2,) and bool((d > 0).all())
    d.sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    assert all(q.grad is None for q in p.parameters())
    a, b = random_features(1, seed=3), random_features(1, seed=3)  # same weights on every machine
    assert all(torch.equal(u, v) for u, v in zip(a.parameters(), b.parameters()))


def test_generator_view_of_discriminator_moves_no_discriminator_weight():
    disc = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.GroupNorm(2, 4))
    x = torch.randn(2, 1, 8, 8, requires_grad=True)
    out = _no_grad_params_call(disc, x)
    torch.testing.assert_close(out, disc(x))
    out.sum().backward()
    assert x.grad is not None and all(p.grad is None for p in disc.parameters())


@pytest.mark.parametrize("extra", [dict(), dict(rec_loss="l2", perceptual_weight=0.5, disc_weight=0.1)])
def test_training_reduces_reconstruction_error(extra):
    torch.manual_seed(0)
    cfg = tiny(**extra)
    ae = KLAutoencoder(cfg)
    loss_fn = kl_autoencoder_loss(cfg)
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
    x = torch.stack([torch.tanh(3 * (k * xx + (1 - k) * yy)) for k in torch.linspace(0, 1, 8)])[:, None]
    opt = torch.optim.Adam(ae.parameters(), lr=2e-3)
    first = None
    for _ in range(30):
        loss, logs = loss_fn(ae, (x, None), g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else logs["rec"]
    assert logs["rec"] < 0.6 * first, (first, logs)
    if cfg.disc_weight:
        assert "d_loss" in logs and int(ae.discriminator.step) == 30


# ------------------------------------------------------------------------------------------------
# latent diffusion
# ------------------------------------------------------------------------------------------------

def _ldm(num_classes=None, f_channels=(8, 16, 16)):
    pytest.importorskip("ldmcourse.diffusion")
    from ldmcourse.latent import FirstStage, LatentDiffusion
    from ldmcourse.unet import UNet, UNetConfig

    torch.manual_seed(0)
    ae = KLAutoencoder(tiny(channels=f_channels))
    c, h, _ = ae.cfg.latent_shape
    unet = UNet(UNetConfig(in_channels=c, base_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention=(),
                           num_classes=num_classes))
    return LatentDiffusion(FirstStage(ae), unet)


def test_scale_factor_makes_latent_std_one():
    ldm = _ldm()
    for p in ldm.first_stage.parameters():  # latents of an arbitrary scale, as a trained first stage gives
        p.data.mul_(1.7)
    x = torch.rand(16, 1, 32, 32) * 2 - 1
    g = torch.Generator().manual_seed(0)
    raw_std = float(ldm.first_stage.encode(x, g).std())
    s = ldm.set_scale_factor(x, torch.Generator().manual_seed(0))
    assert abs(raw_std - 1) > 0.2  # the test means something: raw latents are not unit-scale
    assert abs(s * raw_std - 1) < 1e-4
    assert abs(float(ldm.encode(x, torch.Generator().manual_seed(0)).std()) - 1) < 1e-3
    # decode inverts the scale: decode(encode(x)) == first-stage decode of the raw latent
    z_raw = ldm.first_stage.encode(x, torch.Generator().manual_seed(1))
    torch.testing.assert_close(ldm.decode(ldm.encode(x, torch.Generator().manual_seed(1))),
                               ldm.first_stage.decode(z_raw), atol=1e-5, rtol=1e-4)


def test_unset_scale_factor_is_a_clear_error():
    ldm = _ldm()
    with pytest.raises(RuntimeError, match="set_scale_factor"):
        ldm.encode(torch.zeros(1, 1, 32, 32))


def test_latent_loss_sets_scale_on_first_batch_and_trains_only_the_unet():
    from ldmcourse.latent import latent_diffusion_loss
    from ldmcourse.schedules import make_schedule

    ldm = _ldm(num_classes=10)
    loss_fn = latent_diffusion_loss(make_schedule("linear", 1000), p_uncond=0.2)
    x, y = torch.rand(8, 1, 32, 32) * 2 - 1, torch.arange(8)
    loss, logs = loss_fn(ldm, (x, y), torch.Generator().manual_seed(0))
    assert ldm.scale_is_set and math.isfinite(float(loss.detach()))
    loss.backward()
    assert all(p.grad is None for p in ldm.first_stage.parameters())
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in ldm.unet.parameters())


def test_sample_shapes_pixel_and_latent_and_guidance():
    from ldmcourse.latent import FirstStage, LatentDiffusion, sample_latent
    from ldmcourse.samplers import ddim as ddpm_sample  # a deterministic sampler: no batch-size warning
    from ldmcourse.schedules import make_schedule

    sched = make_schedule("linear", 1000)
    ldm = _ldm(num_classes=10)
    ldm.scale_factor.fill_(1.0)
    g = torch.Generator().manual_seed(0)
    x = sample_latent(ldm, ddpm_sample, sched, 3, steps=4, generator=g, y=2, guidance=3.0)
    assert x.shape == (3, 1, 32, 32)
    z = sample_latent(ldm, ddpm_sample, sched, 3, steps=4, generator=g, decode=False)
    assert z.shape == (3, 4, 8, 8)
    pix = LatentDiffusion(FirstStage(None, "identity", image_shape=(4, 8, 8)), ldm.unet, scale_factor=1.0)
    assert sample_latent(pix, ddpm_sample, sched, 2, steps=3, generator=g).shape == (2, 4, 8, 8)
    with pytest.raises(ValueError, match="--class"):
        sample_latent(ldm, ddpm_sample, sched, 1, steps=2, guidance=2.0)


def test_vae_first_stage_reshapes_vector_latents():
    pytest.importorskip("ldmcourse.diffusion")
    vae_mod = pytest.importorskip("ldmcourse.autoencoders.vae")
    from ldmcourse.latent import FirstStage

    vae = vae_mod.VAE(vae_mod.VAEConfig(arch="conv", image_size=28, latent_dim=16))
    fs = FirstStage(vae)
    assert fs.kind == "vae" and fs.latent_shape == (1, 4, 4) and fs.factor is None
    z = fs.encode(torch.rand(2, 1, 28, 28) * 2 - 1, torch.Generator().manual_seed(0))
    assert z.shape == (2, 1, 4, 4) and fs.decode(z).shape == (2, 1, 28, 28)


def test_ldm_checkpoint_round_trips_and_the_cli_samples_and_inpaints(tmp_path, capsys):
    """train kl-autoencoder -> train ldm on it -> the single ldm checkpoint loads (first stage included)."""
    import json

    from ldmcourse.checkpoint import load_checkpoint
    from ldmcourse.cli import load_model, main
    from ldmcourse.inpaint import box_mask
    from ldmcourse.recipes.ldm import inpaint as ldm_inpaint

    kl, ldm = tmp_path / "kl", tmp_path / "ldm"
    common = ["--profile", "smoke", "--n-train", "64", "--steps", "3", "--progress", "false", "--device", "cpu"]
    assert main(["train", "kl-autoencoder", "--out", str(kl), *common]) == 0
    assert main(["train", "ldm", "--first-stage", str(kl / "checkpoint.pt"), "--num-classes", "10", "--p-uncond", "0.1",
                 "--out", str(ldm), *common]) == 0
    model, meta, _ = load_model(ldm / "checkpoint.pt", torch.device("cpu"))
    ck = load_checkpoint(ldm / "checkpoint.pt")
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, ck["ema"][k], rtol=0, atol=0)
    kl_state = load_checkpoint(kl / "checkpoint.pt")["ema"]
    for k, v in model.first_stage.model.state_dict().items():  # the first stage's weights were copied in
        torch.testing.assert_close(v, kl_state[k], rtol=0, atol=0)
    assert model.scale_is_set and meta["model_config"]["in_channels"] == 4
    (kl / "checkpoint.pt").unlink()  # the ldm checkpoint is self-contained
    model2, _, _ = load_model(ldm / "checkpoint.pt", torch.device("cpu"))
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, model2.state_dict()[k], rtol=0, atol=0)

    capsys.readouterr()
    assert main(["sample", "--ckpt", str(ldm / "checkpoint.pt"), "--n", "4", "--steps", "3", "--guidance", "2",
                 "--class", "3", "--out", str(tmp_path / "s.png"), "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["n"] == 4
    assert main(["inpaint", "--ckpt", str(ldm / "checkpoint.pt"), "--image", "test:0,1", "--mask", "half", "--steps", "4",
                 "--n", "2", "--out", str(tmp_path / "i.png"), "--device", "cpu"]) == 0
    assert (tmp_path / "i.png").exists()
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    keep = box_mask(32, 0.5)
    out = ldm_inpaint(model, meta, x, keep, torch.Generator().manual_seed(0), "cpu", steps=4, method="repaint",
                      jump_length=2, resample=2)
    known = keep.expand_as(x).bool()
    torch.testing.assert_close(out[known], x[known], atol=1e-6, rtol=0)


def test_pixel_ldm_is_plain_diffusion(tmp_path):
    """--first-stage none: the same recipe on pixels, scale 1, latent shape = image shape."""
    from ldmcourse.recipes.ldm import LDMConfig, build

    model = build(LDMConfig(first_stage="none", base_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention=()))
    assert model.latent_shape == (1, 32, 32) and float(model.scale_factor) == 1.0 and model.first_stage.factor == 1
    x = torch.rand(2, 1, 32, 32)
    assert torch.equal(model.encode(x), x) and torch.equal(model.decode(x), x)
    with pytest.raises(ValueError, match="num-classes"):
        LDMConfig(p_uncond=0.1)


def test_nvae_first_stage_diffuses_the_top_group():
    pytest.importorskip("ldmcourse.diffusion")
    from ldmcourse.autoencoders.nvae import NVAE, NVAEConfig
    from ldmcourse.latent import FirstStage

    torch.manual_seed(0)
    nvae = NVAE(NVAEConfig(image_size=32, channels=8, latent_channels=4, groups_per_scale=(1, 1))).eval()
    fs = FirstStage(nvae)
    assert fs.kind == "nvae" and fs.latent_shape == (4, 8, 8) and fs.factor == 4
    x = torch.rand(3, 1, 32, 32) * 2 - 1
    z_mean = fs.encode(x, sample=False)
    z = fs.encode(x, torch.Generator().manual_seed(0))
    assert z.shape == z_mean.shape == (3, 4, 8, 8) and not torch.equal(z, z_mean)
    with torch.no_grad():
        out = fs.decode(z_mean)
        mu_q = 5 * torch.tanh(nvae.posterior[0](nvae.encode(x)[0]).chunk(2, dim=1)[0] / 5)  # q(z_1|x) mean
        # z_1 = 0 (the prior mean) with every finer group at its prior mean is NVAE's own temperature-0 sample
        ref = torch.sigmoid(nvae.sample(2, temperature=0.0)) * 2 - 1
        torch.testing.assert_close(fs.decode(torch.zeros(2, 4, 8, 8)), ref)
    torch.testing.assert_close(z_mean, mu_q)
    assert out.shape == (3, 1, 32, 32) and float(out.min()) >= -1 and float(out.max()) <= 1
