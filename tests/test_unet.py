"""U-Net: shapes for several resolutions/channels, conditioning, checkpointing parity, a few steps lower the loss."""

import pytest
import torch

from ldmcourse.nn import Attention, LinearAttention, timestep_embedding
from ldmcourse.unet import UNet, UNetConfig

SMALL = dict(base_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention=(2,), head_dim=16)


@pytest.mark.parametrize("in_ch,size,extra", [
    (1, 32, {}), (3, 16, {}), (4, 8, {"num_classes": 10}), (1, 28, {"channel_mult": (1, 2, 2)}),
    (2, 16, {"block": "convnext", "linear_attention": (1,)}), (4, 12, {"out_channels": 8}),
])
def test_output_shape(in_ch, size, extra):
    cfg = UNetConfig(in_channels=in_ch, **{**SMALL, **extra})
    m = UNet(cfg)
    x = torch.randn(3, in_ch, size, size)
    out = m(x, torch.tensor([0, 10, 999]))
    assert out.shape == (3, cfg.out_channels or in_ch, size, size)


def test_default_config_32px_shape_and_zero_init():
    m = UNet(UNetConfig())
    x = torch.randn(2, 1, 32, 32)
    out = m(x, torch.tensor([3, 700]))
    assert out.shape == x.shape
    assert torch.count_nonzero(out) == 0  # zero-initialised output conv: the net starts predicting 0


def test_bad_size_and_labels_give_clear_errors():
    m = UNet(UNetConfig(in_channels=1, **SMALL))
    with pytest.raises(ValueError, match="divisible by 2"):
        m(torch.randn(1, 1, 15, 15), torch.tensor([1]))
    with pytest.raises(ValueError, match="unconditional"):
        m(torch.randn(1, 1, 16, 16), torch.tensor([1]), torch.tensor([0]))
    mc = UNet(UNetConfig(in_channels=1, num_classes=3, **SMALL))
    with pytest.raises(ValueError, match="null class"):
        mc(torch.randn(1, 1, 16, 16), torch.tensor([1]), torch.tensor([4]))


def _perturb(m):
    torch.manual_seed(0)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


def test_null_class_is_y_none_and_labels_matter():
    m = _perturb(UNet(UNetConfig(in_channels=1, num_classes=3, **SMALL)))
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([5, 500])
    torch.testing.assert_close(m(x, t), m(x, t, torch.tensor([3, 3])))
    assert not torch.allclose(m(x, t, torch.tensor([0, 0])), m(x, t, torch.tensor([1, 1])))


def test_gradient_checkpointing_same_output_and_grads():
    cfg = dict(in_channels=1, **SMALL)
    a = _perturb(UNet(UNetConfig(**cfg)))
    b = UNet(UNetConfig(**cfg, checkpointing=True))
    b.load_state_dict(a.state_dict())
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([5, 500])
    a(x, t).square().sum().backward()
    b(x, t).square().sum().backward()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad)


def test_timestep_embedding_matches_diffusers():
    get_timestep_embedding = pytest.importorskip("diffusers.models.embeddings").get_timestep_embedding

    t = torch.tensor([0, 1, 17, 999])
    torch.testing.assert_close(timestep_embedding(t, 32), get_timestep_embedding(t, 32, flip_sin_to_cos=False, downscale_freq_shift=0))


def test_attention_matches_naive_softmax():
    torch.manual_seed(0)
    att = Attention(8, head_dim=4, groups=2)
    torch.nn.init.normal_(att.proj.weight)
    x = torch.randn(2, 8, 3, 3)
    q, k, v = att.qkv(att.norm(x)).reshape(2, 3, 2, 4, 9).unbind(1)  # (B, h, d, N)
    w = torch.softmax(torch.einsum("bhdn,bhdm->bhnm", q, k) / 2.0, dim=-1)  # / sqrt(d=4)
    out = torch.einsum("bhnm,bhdm->bhdn", w, v).reshape(2, 8, 3, 3)
    torch.testing.assert_close(att(x), x + att.proj(out))



def test_linear_attention_matches_naive_loops():
    """x + proj(out) with out[:, n] = Σ_m v[:, m] w[m, n], w[m, n] = Σ_d softmax_N(k)[d, m] softmax_d(q)[d, n] / √d,
    written as loops over heads and positions; each column of w sums to 1/√d (a constant v passes through ×1/√d)."""
    torch.manual_seed(0)
    lin = LinearAttention(8, head_dim=4, groups=2)
    torch.nn.init.normal_(lin.proj.weight)
    x = torch.randn(2, 8, 3, 3)
    q, k, v = lin.qkv(lin.norm(x)).reshape(2, 3, 2, 4, 9).unbind(1)  # (B, h, d, N)
    out = torch.zeros(2, 2, 4, 9)
    for b in range(2):
        for h in range(2):
            qs, ks = torch.softmax(q[b, h], 0) / 2.0, torch.softmax(k[b, h], 1)  # over d; over N
            w = torch.stack([torch.stack([(ks[:, m] * qs[:, n]).sum() for n in range(9)]) for m in range(9)])  # (N, N)
            torch.testing.assert_close(w.sum(0), torch.full((9,), 0.5))
            for n in range(9):
                out[b, h, :, n] = (v[b, h] * w[:, n]).sum(1)
    torch.testing.assert_close(lin(x), x + lin.proj(out.reshape(2, 8, 3, 3)), atol=1e-5, rtol=1e-4)


def test_few_steps_lower_denoising_loss():
    from functools import partial

    from ldmcourse.diffusion import diffusion_loss
    from ldmcourse.schedules import make_schedule

    torch.manual_seed(0)
    m = UNet(UNetConfig(in_channels=1, **SMALL))
    sched = make_schedule("linear", 1000)
    loss_fn = partial(diffusion_loss, schedule=sched)
    x = torch.zeros(16, 1, 16, 16)
    x[:, :, 4:12, 4:12] = 1.0
    x = x * 2 - 1  # a fixed white square on black
    g = torch.Generator().manual_seed(0)
    fixed = [(torch.randint(0, 1000, (16,), generator=g), torch.randn(x.shape, generator=g)) for _ in range(4)]

    def eval_loss():
        with torch.no_grad():
            return sum(float(loss_fn(m, x, t=t, noise=n)[0]) for t, n in fixed) / len(fixed)

    before = eval_loss()
    opt = torch.optim.Adam(m.parameters(), lr=2e-3)
    for _ in range(30):
        loss, _ = loss_fn(m, x, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = eval_loss()
    assert after < 0.7 * before, (before, after)
