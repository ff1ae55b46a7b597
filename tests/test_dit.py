"""DiT: patchify identity, adaLN-Zero identity, conditioning; both text backbones train and sample."""

import pytest
import torch

from ldmcourse.dit import DiT, DiTBlock, DiTConfig, patchify, sincos_2d, unpatchify
from ldmcourse.latent import FirstStage
from ldmcourse.schedules import make_schedule
from ldmcourse.text import PromptError, TextEncoderConfig
from ldmcourse.text_ldm import build_text_ldm, count_parameters, notebook12_configs, sample_prompts, text_diffusion_loss
from ldmcourse.unet import UNetConfig

TINY = dict(hidden_dim=32, depth=2, heads=2)
TEXT = TextEncoderConfig(dim=16, depth=1, heads=2)


def _perturb(m, seed=0, s=0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(s * torch.randn(p.shape, generator=g))
    return m


@pytest.mark.parametrize("shape,p", [((2, 4, 8, 8), 2), ((1, 3, 12, 8), 4), ((2, 1, 6, 6), 1)])
def test_patchify_unpatchify_is_the_identity(shape, p):
    x = torch.randn(shape)
    tokens = patchify(x, p)
    assert tokens.shape == (shape[0], (shape[2] // p) * (shape[3] // p), p * p * shape[1])
    assert torch.equal(unpatchify(tokens, p, shape[1], *shape[2:]), x)
    # token (i, j) holds patch (i, j): the linear patch embedding is a p x p conv with stride p
    conv = torch.nn.Conv2d(shape[1], 5, p, stride=p)
    w = conv.weight.permute(0, 2, 3, 1).reshape(5, -1)  # (D, C, p, p) -> (D, p·p·C), patchify's order
    torch.testing.assert_close(tokens @ w.T + conv.bias, conv(x).flatten(2).transpose(1, 2), rtol=1e-5, atol=1e-5)


def test_sincos_positions_distinct_and_bounded():
    pe = sincos_2d(16, 4, 4)
    assert pe.shape == (16, 16) and pe.abs().max() <= 1
    assert torch.cdist(pe, pe).add(torch.eye(16)).min() > 0.1  # every position has its own code


@pytest.mark.parametrize("context_dim", [None, 8])
def test_adaln_zero_block_starts_as_the_identity(context_dim):
    torch.manual_seed(0)
    blk = DiTBlock(32, 4, context_dim=context_dim)
    x, c = torch.randn(2, 5, 32), torch.randn(2, 32)
    ctx, mask = (torch.randn(2, 3, 8), torch.tensor([[1, 1, 0], [1, 0, 0]]).bool()) if context_dim else (None, None)
    assert torch.equal(blk(x, c, ctx, mask), x)
    with torch.no_grad():
        blk.ada[-1].weight.normal_(0, 0.1)  # once the gates open, the block is no longer the identity
    assert (blk(x, c, ctx, mask) - x).abs().max() > 1e-3


def test_dit_starts_at_zero_and_conditions_on_t_and_class():
    m = DiT(DiTConfig(in_channels=4, num_classes=3, **TINY))
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([3, 700])
    out = m(x, t)
    assert out.shape == x.shape and torch.count_nonzero(out) == 0
    _perturb(m)
    torch.testing.assert_close(m(x, t), m(x, t, torch.tensor([3, 3])))  # y=None is the null class K
    assert (m(x, t, torch.tensor([0, 0])) - m(x, t, torch.tensor([1, 1]))).abs().max() > 1e-4
    assert (m(x, torch.tensor([3, 3])) - m(x, torch.tensor([700, 700]))).abs().max() > 1e-4
    with pytest.raises(ValueError, match="null class"):
        m(x, t, torch.tensor([4, 0]))
    with pytest.raises(ValueError, match="patch_size"):
        m(torch.randn(1, 4, 7, 8), t[:1])
    with pytest.raises(ValueError, match="text-conditioned"):
        DiT(DiTConfig(in_channels=4, context_dim=8, **TINY))(x, t)


def test_notebook12_configs_have_equal_parameters():
    cfg = notebook12_configs()
    fs = FirstStage(None, "identity", image_shape=(4, 8, 8))
    text = TextEncoderConfig(**cfg["text"])
    n_unet = count_parameters(build_text_ldm(fs, "unet", text, unet=UNetConfig(**cfg["unet"])).unet.backbone)
    n_dit = count_parameters(build_text_ldm(fs, "dit", text, dit=DiTConfig(**cfg["dit"])).unet.backbone)
    assert (n_unet, n_dit) == (1249284, 1228720) and abs(n_dit / n_unet - 1) < 0.1


def _tiny_ldm(backbone):
    torch.manual_seed(0)
    fs = FirstStage(None, "identity", image_shape=(1, 8, 8))  # pixels: the same code path as latents
    return build_text_ldm(fs, backbone, TEXT, unet=UNetConfig(base_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                                                               attention=(), head_dim=16), dit=DiTConfig(**TINY))


def _caption_data():
    """16 images whose content is their caption's class: a bar at column 2·class (classes 0..3)."""
    codes = torch.tensor([[k % 4, k % 3, -1, -1] for k in range(16)])
    x = -torch.ones(16, 1, 8, 8)
    for i, k in enumerate(codes[:, 0].tolist()):
        x[i, 0, :, 2 * k:2 * k + 2] = 1.0
    return x, codes


@pytest.mark.parametrize("backbone", ["unet", "dit"])
def test_few_steps_lower_the_text_loss(backbone):
    model = _tiny_ldm(backbone)
    loss_fn = text_diffusion_loss(make_schedule("linear", 1000), p_uncond=0.1, p_attr=0.5, p_class=0.0)
    batch = _caption_data()

    @torch.no_grad()
    def eval_loss():  # fixed t, noise and caption dropout
        return float(loss_fn(model, batch, torch.Generator().manual_seed(123))[0])

    before = eval_loss()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(40):
        loss, logs = loss_fn(model, batch, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = eval_loss()
    assert after < 0.7 * before, (before, after)
    assert all(p.grad is not None for p in model.unet.encoder.parameters())  # the text encoder trains jointly


@pytest.mark.parametrize("backbone", ["unet", "dit"])
def test_sample_prompts_shape_reproducible_and_bad_prompt(backbone):
    model = _perturb(_tiny_ldm(backbone))
    sched = make_schedule("linear", 1000)
    prompts = ["a thin three", "a bold one", "a thin three"]
    a = sample_prompts(model, prompts, sched, steps=3, guidance=2.0, generator=torch.Generator().manual_seed(0))
    b = sample_prompts(model, prompts, sched, steps=3, guidance=2.0, generator=torch.Generator().manual_seed(0), batch_size=1)
    assert a.shape == (3, 1, 8, 8)
    torch.testing.assert_close(a, b)  # the same images whatever the chunk size
    with pytest.raises(PromptError, match="'purple'"):
        sample_prompts(model, ["a thin three", "a purple three"], sched, steps=3)


def test_fit_trains_a_text_ldm_on_captioned_digits_and_checkpoints(tmp_path):
    """The course's training loop, unchanged: captioned mnist5k batches (x, codes), EMA, a checkpoint."""
    from ldmcourse.checkpoint import load_checkpoint
    from ldmcourse.data import load_dataset
    from ldmcourse.text_ldm import CaptionedData, picture_prompts
    from ldmcourse.train import FitConfig, fit

    data = CaptionedData(load_dataset("mnist5k", "train", size=8, n=64))  # 8x8: the codes mean little, the plumbing is tested
    model = _tiny_ldm("dit")
    sched = make_schedule("linear", 1000)
    res = fit(model, text_diffusion_loss(sched), data, FitConfig(steps=3, batch_size=16, warmup=1, progress=False,
                                                                  ema_decay=0.9), out_dir=tmp_path)
    assert res.step == 3 and len(res.history) >= 1
    ck = load_checkpoint(next(tmp_path.glob("*.pt")))
    fresh = _tiny_ldm("dit")
    fresh.load_state_dict(ck["model"])  # strict: the same build gives the same keys
    x, prompts = picture_prompts(res.ema, sched, torch.Generator().manual_seed(0), repeats=1, steps=2)
    assert x.shape == (8, 1, 8, 8) and len(prompts) == 8 and x.abs().max() <= 1
