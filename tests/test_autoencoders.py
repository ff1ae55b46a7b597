"""Deterministic autoencoders: the seed's MLPs, the conv AE, the CLI config, augmentation, training."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn as nn

from ldmcourse.autoencoders.ae import (
    AE_ARCHS, AEConfig, ConvAE, ConvAEConfig, MLPAE, MLPAEConfig, ae_loss, augment, build_ae, reconstruction_loss, rotate,
)
from ldmcourse.train import FitConfig, fit


def _widths(m: nn.Module) -> list[int]:
    lin = [l for l in m.modules() if isinstance(l, nn.Linear)]
    return [lin[0].in_features] + [l.out_features for l in lin]


def test_mlp_baseline_and_improved_match_the_seed():
    base, imp = MLPAE(MLPAEConfig.baseline()), MLPAE(MLPAEConfig.improved())
    assert _widths(base.encoder) == [784, 128, 64, 12, 3] and _widths(base.decoder) == [3, 12, 64, 128, 784]
    assert _widths(imp.encoder) == [784, 256, 128, 64, 16] and _widths(imp.decoder) == [16, 64, 128, 256, 784]
    assert not any(isinstance(l, (nn.BatchNorm1d, nn.LeakyReLU)) for l in base.modules())
    assert sum(isinstance(l, nn.BatchNorm1d) for l in imp.modules()) == 6
    assert sum(isinstance(l, nn.LeakyReLU) for l in imp.modules()) == 6


@pytest.mark.parametrize("arch", AE_ARCHS)
def test_shapes_and_range(arch):
    size = 32 if arch == "conv" else 28
    m = build_ae(AEConfig(arch=arch, image_size=size, channels=(8, 16, 32))).eval()
    x = torch.rand(5, 1, size, size) * 2 - 1
    z = m.encode(x)
    assert z.shape == (5, {"conv": 16, "mlp-baseline": 3, "mlp-improved": 16}[arch])
    y = m(x)
    assert y.shape == x.shape and y.min() >= -1 and y.max() <= 1


def test_aeconfig_overrides_and_old_checkpoint_configs():
    m = build_ae(AEConfig(arch="mlp-improved", image_size=28, latent_dim=8, hidden=(64, 32)))
    assert _widths(m.encoder) == [784, 64, 32, 8]
    # a checkpoint written with the skeleton's ConvAEConfig rebuilds as the same ConvAE
    from dataclasses import asdict

    from ldmcourse.cli import config_from_dict

    old = ConvAE(ConvAEConfig(channels=(8, 16, 32), latent_dim=4))
    new = build_ae(config_from_dict(AEConfig, asdict(old.cfg)))
    assert isinstance(new, ConvAE) and new.load_state_dict(old.state_dict()) is not None
    with pytest.raises(ValueError, match="arch"):
        AEConfig(arch="transformer")


def test_bad_input_raises_clear_error():
    m = MLPAE(MLPAEConfig.baseline())
    with pytest.raises(ValueError, match=r"MLPAE expects images of shape \(B, 1, 28, 28\), got \(2, 1, 32, 32\).*size=28"):
        m(torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match=r"got \(2, 3, 28, 28\)"):
        m(torch.zeros(2, 3, 28, 28))


def test_augment_rotation_and_noise():
    g = lambda: torch.Generator().manual_seed(0)
    x = torch.full((4, 1, 28, 28), -1.0)
    x[:, :, 10:18, 12:16] = 1.0  # a bar in the middle
    assert torch.equal(augment(x, g()), x)  # no options: identity
    r = augment(x, g(), rotate_deg=15)
    torch.testing.assert_close(r, augment(x, g(), rotate_deg=15))  # same generator, same batch
    assert not torch.allclose(r, x) and r.min() >= -1 - 1e-6 and r.max() <= 1 + 1e-6
    assert ((r + 1).sum((1, 2, 3)) / (x + 1).sum((1, 2, 3))).sub(1).abs().max() < 0.05  # ink is preserved
    assert torch.equal(r[:, :, :2, :], x[:, :, :2, :])  # background stays background at the border
    n = augment(torch.zeros(64, 1, 28, 28), g(), noise_std=0.3)
    assert n.mean().abs() < 0.01 and n.std().item() == pytest.approx(0.3, rel=0.02)


def test_rotate_matches_rot90_and_is_counter_clockwise():
    x = torch.randn(2, 1, 8, 8)
    r = rotate(x, torch.tensor([math.pi / 2, -math.pi / 2]))
    torch.testing.assert_close(r[0], torch.rot90(x[0], 1, (1, 2)), atol=1e-5, rtol=0)  # rot90 k=1: counter-clockwise
    torch.testing.assert_close(r[1], torch.rot90(x[1], -1, (1, 2)), atol=1e-5, rtol=0)
    torch.testing.assert_close(rotate(x, torch.zeros(2)), x, atol=1e-5, rtol=0)


def test_training_lowers_the_loss_with_augmentation():
    from ldmcourse.data import load_dataset

    data = load_dataset("mnist5k", "train", size=28, n=512)
    cfg = AEConfig(arch="mlp-improved", image_size=28, rotate_deg=10, noise_std=0.1)
    torch.manual_seed(0)
    m = build_ae(cfg)
    x = data.tensors()[0][:256]
    before = reconstruction_loss(m.eval(), (x,))[0].item()
    res = fit(m, ae_loss(cfg), data, FitConfig(steps=60, batch_size=64, lr=3e-3, warmup=5, log_every=10,
                                               ema_decay=None, progress=False))
    after = reconstruction_loss(res.model.eval(), (x,))[0].item()
    assert after < 0.5 * before
    assert ae_loss(AEConfig()) is reconstruction_loss  # no augmentation: the plain MSE


def test_cli_train_mlp_ae(tmp_path, monkeypatch, capsys):
    from ldmcourse.cli import main

    monkeypatch.setenv("LDMCOURSE_PROFILE", "smoke")
    monkeypatch.setenv("LDMCOURSE_TRACEBACK", "1")
    out = tmp_path / "ae"
    assert main(["train", "ae", "--arch", "mlp-baseline", "--image-size", "28", "--steps", "3", "--progress", "false",
                 "--out", str(out)]) == 0
    meta = json.loads((out / "metrics.json").read_text())
    assert meta["model_config"]["arch"] == "mlp-baseline" and "recon" in meta["eval"]
    capsys.readouterr()
    assert main(["eval", "--ckpt", str(out / "checkpoint.pt"), "--metric", "recon", "--n", "50"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["n"] == 50 and math.isfinite(res["mse"])
