"""Classifier-free guidance: scale 1 is the conditional model, 0 the unconditional, others extrapolate."""

import pytest
import torch

from ldmcourse.guidance import cfg_eps_model, check_class

K = 3  # classes; label K is the null class


def toy_model(x, t, y=None):
    """A fake conditional ε-network whose output depends on the label in a known way."""
    if y is None:
        y = torch.full((x.shape[0],), K)
    w = torch.where(y == K, torch.full_like(y, -1), y).float()  # null -> -1, class c -> c
    return x * (1.0 + w.view(-1, 1, 1, 1)) + 0.01 * t.float().view(-1, 1, 1, 1)


@pytest.fixture
def xty():
    g = torch.Generator().manual_seed(0)
    return torch.randn(4, 2, 5, 5, generator=g), torch.tensor([3, 10, 500, 999]), torch.tensor([0, 1, 2, 1])


def test_scale_one_is_conditional_and_zero_is_unconditional(xty):
    x, t, y = xty
    assert torch.equal(cfg_eps_model(toy_model, y, 1.0)(x, t), toy_model(x, t, y=y))
    assert torch.equal(cfg_eps_model(toy_model, y, 0.0)(x, t), toy_model(x, t, y=None))


@pytest.mark.parametrize("uncond", [None, K])
def test_scale_extrapolates(xty, uncond):
    x, t, y = xty
    s = 3.5
    e_c, e_u = toy_model(x, t, y=y), toy_model(x, t, y=None)
    torch.testing.assert_close(cfg_eps_model(toy_model, y, s, uncond=uncond)(x, t), e_u + s * (e_c - e_u))


def test_batched_equals_two_calls_and_int_label_broadcasts(xty):
    x, t, _ = xty
    a = cfg_eps_model(toy_model, 2, 2.0, uncond=K, batched=True)(x, t)
    b = cfg_eps_model(toy_model, torch.full((4,), 2), 2.0, uncond=None, batched=False)(x, t)
    torch.testing.assert_close(a, b)


def test_wrong_batch_of_labels_is_a_clear_error(xty):
    x, t, _ = xty
    with pytest.raises(ValueError, match="one condition per sample"):
        cfg_eps_model(toy_model, torch.tensor([0, 1]), 2.0)(x, t)


def test_with_the_course_unet():
    unet_mod = pytest.importorskip("ldmcourse.unet")
    torch.manual_seed(0)
    net = unet_mod.UNet(unet_mod.UNetConfig(in_channels=4, base_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                                            attention=(), num_classes=K)).eval()
    for p in net.parameters():  # the output conv starts at zero: make the network's output non-trivial
        p.data.add_(0.05 * torch.randn_like(p))
    x, t, y = torch.randn(3, 4, 8, 8), torch.tensor([5, 400, 900]), torch.tensor([0, 2, 1])
    with torch.no_grad():
        e_c, e_u = net(x, t, y), net(x, t, None)
        assert not torch.allclose(e_c, e_u)
        torch.testing.assert_close(cfg_eps_model(net, y, 1.0)(x, t), e_c)
        torch.testing.assert_close(cfg_eps_model(net, y, 0.0)(x, t), e_u)
        torch.testing.assert_close(cfg_eps_model(net, y, 4.0, uncond=K)(x, t), e_u + 4.0 * (e_c - e_u), atol=1e-5, rtol=1e-4)


def test_check_class_names_the_valid_range():
    check_class(None, None)
    check_class(9, 10)
    check_class(torch.tensor([0, 9]), 10)
    with pytest.raises(ValueError, match=r"--class 10 is out of range: this model has classes 0\.\.9"):
        check_class(10, 10)
    with pytest.raises(ValueError, match="--class -1 is out of range"):
        check_class(torch.tensor([3, -1]), 10)
    with pytest.raises(ValueError, match="class-conditional"):
        check_class(0, None)
