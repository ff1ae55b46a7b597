"""Captions, tokenizer, text encoder, cross-attention and the U-Net's text path."""

import hashlib
import itertools
import math

import numpy as np
import pytest
import torch

from ldmcourse.captions import (ATTRIBUTES, UNSAID, adherence, attributes, caption, drop_attributes, fit_bins, measure,
                                parse_caption)
from ldmcourse.nn import CrossAttention, SpatialCrossAttention
from ldmcourse.text import PromptError, TextConditioned, TextEncoder, TextEncoderConfig, Tokenizer
from ldmcourse.unet import UNet, UNetConfig

SMALL = dict(base_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention=(2,), head_dim=16)
TEXT = TextEncoderConfig(dim=16, depth=1, heads=2)


def _perturb(m, seed=0, s=0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(s * torch.randn(p.shape, generator=g))
    return m


# ---------------------------------------------------------------------------------------------- cross-attention

@pytest.mark.parametrize("keep_weights", [False, True])
def test_cross_attention_is_softmax_qk_v_with_mask(keep_weights):
    torch.manual_seed(0)
    a = _perturb(CrossAttention(6, 5, heads=2, head_dim=3), s=0.3)
    a.keep_weights = keep_weights
    x, ctx = torch.randn(2, 4, 6), torch.randn(2, 3, 5)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    out = a(x, ctx, mask)
    # by hand, one sample and one head at a time
    expect = torch.zeros(2, 4, 6)
    for b in range(2):
        heads = []
        for h in range(2):
            sl = slice(3 * h, 3 * h + 3)
            q, k, v = x[b] @ a.to_q.weight[sl].T, ctx[b] @ a.to_k.weight[sl].T, ctx[b] @ a.to_v.weight[sl].T
            logits = q @ k.T / math.sqrt(3)  # (N, L)
            logits[:, ~mask[b]] = -float("inf")
            heads.append(torch.softmax(logits, -1) @ v)
        expect[b] = torch.cat(heads, -1) @ a.to_out.weight.T + a.to_out.bias
    torch.testing.assert_close(out, expect, rtol=1e-5, atol=1e-6)
    ctx2 = ctx.clone()
    ctx2[0, 2], ctx2[1, 1:] = 100.0, -7.0  # padded tokens cannot matter
    torch.testing.assert_close(a(x, ctx2, mask), out, rtol=1e-5, atol=1e-6)
    if keep_weights:
        assert a.weights.shape == (2, 2, 4, 3)
        torch.testing.assert_close(a.weights.sum(-1), torch.ones(2, 2, 4))
        assert float(a.weights[1, :, :, 1:].abs().max()) == 0.0


def test_spatial_cross_attention_starts_as_identity_and_reads_pixels_as_queries():
    torch.manual_seed(0)
    sa = SpatialCrossAttention(8, 5, head_dim=4, groups=2)
    x, ctx = torch.randn(2, 8, 3, 4), torch.randn(2, 6, 5)
    assert torch.equal(sa(x, ctx), x)  # zero-initialised output projection
    _perturb(sa, s=0.2)
    h = sa.norm(x).flatten(2).transpose(1, 2)  # (B, 12, 8)
    expect = x + sa.attn(h, ctx).transpose(1, 2).reshape(x.shape)
    torch.testing.assert_close(sa(x, ctx), expect)


# ---------------------------------------------------------------------------------------------- tokenizer, encoder

def test_tokenizer_round_trip_and_null_caption():
    tk = Tokenizer()
    ids = tk(["a thin three", "A bold, wide seven slanted to the right.", ""])
    assert ids.shape == (3, tk.max_len) and (ids[:, 0] == tk.start).all()
    assert tk.decode(ids) == ["a thin three", "a bold wide seven slanted to the right", ""]
    assert ids[2, 1:].eq(tk.pad).all() and torch.equal(tk.null(2), ids[2:].expand(2, -1))


def test_unknown_word_error_lists_the_vocabulary():
    with pytest.raises(PromptError, match="'fat'.*Use only: a an digit zero one two .* thin medium bold"):
        Tokenizer()("a fat three")
    with pytest.raises(PromptError, match="at most 11"):
        Tokenizer()(" ".join(["a"] * 12))
    with pytest.raises(PromptError, match="<pad>"):
        Tokenizer()("a <pad> three")


def test_every_caption_tokenizes_and_parses_back():
    tk = Tokenizer()
    for code in itertools.product(range(-1, 10), range(-1, 3), range(-1, 3), range(-1, 3)):
        text = caption(code)
        assert torch.equal(parse_caption(text), torch.tensor(code)), text
        tk(text)  # every caption is in the vocabulary and fits max_len
    assert caption((7, 2, 2, 2)) == "a bold wide seven slanted to the right"
    assert caption((8, -1, -1, 1)) == "an upright eight"
    assert caption((-1, 0, -1, -1)) == "a thin digit"


def test_text_encoder_shapes_mask_and_padding_independence():
    torch.manual_seed(0)
    enc = TextEncoder(TEXT)
    ids = Tokenizer()(["a thin three", "an eight"])
    h, mask = enc(ids)
    assert h.shape == (2, 12, 16) and mask.tolist()[1] == [True] * 3 + [False] * 9
    short, _ = enc(ids[:, :4])  # the real tokens' embeddings do not depend on how much padding follows
    torch.testing.assert_close(short[0], h[0, :4], rtol=1e-5, atol=1e-6)
    assert sum(p.numel() for p in TextEncoder(TextEncoderConfig()).parameters()) == 102208


# ---------------------------------------------------------------------------------------------- conditioning

def _text_unet(seed=0):
    torch.manual_seed(seed)
    net = TextConditioned(UNet(UNetConfig(in_channels=2, context_dim=TEXT.dim, **SMALL)), TextEncoder(TEXT))
    return _perturb(net, seed)


def test_empty_caption_is_the_null_condition_and_captions_matter():
    from ldmcourse.guidance import cfg_eps_model

    net = _text_unet()
    x, t = torch.randn(2, 2, 8, 8), torch.tensor([10, 600])
    null = net(x, t)
    torch.testing.assert_close(null, net(x, t, net.tokenize(["", ""])))
    torch.testing.assert_close(null, cfg_eps_model(net, net.tokenize(["a thin three"] * 2), 0.0, uncond=net.null_ids)(x, t))
    a, b = net(x, t, net.tokenize(["a thin three"] * 2)), net(x, t, net.tokenize(["a bold three"] * 2))
    assert (a - b).abs().max() > 1e-4 and (a - null).abs().max() > 1e-4


def test_guidance_batched_equals_two_calls():
    from ldmcourse.guidance import cfg_eps_model

    net = _text_unet()
    x, t = torch.randn(3, 2, 8, 8), torch.tensor([10, 300, 900])
    ids = net.tokenize(["a thin three", "a wide one", "a digit"])
    got = cfg_eps_model(net, ids, 3.0, uncond=net.null_ids)(x, t)
    e_c, e_u = net(x, t, ids), net(x, t)
    torch.testing.assert_close(got, e_u + 3.0 * (e_c - e_u), rtol=1e-4, atol=1e-5)


def test_text_unet_errors_and_cross_attention_levels():
    unet = UNet(UNetConfig(in_channels=2, context_dim=16, **SMALL))
    with pytest.raises(ValueError, match="text-conditioned"):
        unet(torch.randn(1, 2, 8, 8), torch.tensor([1]))
    with pytest.raises(ValueError, match="no cross-attention"):
        UNet(UNetConfig(in_channels=2, **SMALL))(torch.randn(1, 2, 8, 8), torch.tensor([1]), context=torch.randn(1, 3, 16))
    with pytest.raises(ValueError, match="context_dim"):
        TextConditioned(UNet(UNetConfig(in_channels=2, context_dim=8, **SMALL)), TextEncoder(TEXT))
    n_all = sum(isinstance(m, SpatialCrossAttention) for m in unet.modules())
    n_low = sum(isinstance(m, SpatialCrossAttention) for m in UNet(UNetConfig(in_channels=2, context_dim=16, cross_attention=(2,), **SMALL)).modules())
    assert (n_all, n_low) == (2 + 1 + 4, 1 + 1 + 2)  # down (1 per level), middle, up (2 per level)


def _fingerprint(cfg):
    torch.manual_seed(0)
    sd = UNet(cfg).state_dict()
    keys = hashlib.sha256("\n".join(f"{k}:{tuple(v.shape)}" for k, v in sd.items()).encode()).hexdigest()[:16]
    chk = sum((i + 1) * float((v.double().flatten() * torch.linspace(-1, 2, v.numel(), dtype=torch.float64)).sum())
              for i, v in enumerate(sd.values()))
    return keys, chk, len(sd)


@pytest.mark.parametrize("cfg,golden", [
    (UNetConfig(), ("d718a3dc883d1a29", 175696.16066920848, 244)),
    (UNetConfig(in_channels=4, num_classes=10, **SMALL), ("304174277bcdadf9", 21779.2796549537, 129)),
])
def test_text_off_unet_has_the_same_parameters_in_the_same_order(cfg, golden):
    """Golden values computed from the U-Net before cross-attention was added (main at f49a505)."""
    keys, chk, n = _fingerprint(cfg)
    assert (keys, n) == golden[::2]
    assert chk == pytest.approx(golden[1], rel=1e-9)


# ---------------------------------------------------------------------------------------------- attribute measures

def _bar(theta, tau, length=18, size=32, ss=4):
    """An anti-aliased bar (4x supersampled) of perpendicular thickness ``tau``, leaning ``theta``
    radians from the vertical (top to the right for theta > 0), in [-1, 1]."""
    from skimage.draw import polygon

    S, c0 = size * ss, size * ss / 2
    d, n = np.array([np.sin(theta), -np.cos(theta)]), np.array([np.cos(theta), np.sin(theta)])
    pts = [c0 + (s * length / 2 * d + q * tau / 2 * n) * ss for s, q in [(-1, -1), (-1, 1), (1, 1), (1, -1)]]
    img = np.zeros((S, S))
    rr, cc = polygon([p[1] for p in pts], [p[0] for p in pts], (S, S))
    img[rr, cc] = 1
    return img.reshape(size, ss, size, ss).mean((1, 3)) * 2 - 1


def _ring(radius, tau, size=32, ss=4):
    from skimage.draw import disk

    S = size * ss
    img = np.zeros((S, S))
    img[disk((S / 2, S / 2), (radius + tau / 2) * ss, shape=img.shape)] = 1
    img[disk((S / 2, S / 2), (radius - tau / 2) * ss, shape=img.shape)] = 0
    return img.reshape(size, ss, size, ss).mean((1, 3)) * 2 - 1


def test_measures_recover_slant_thickness_and_width_of_drawn_strokes():
    cases = list(itertools.product([-0.4, 0.2, 0.5], [2.0, 3.0, 4.5]))
    m = measure(torch.tensor(np.stack([_bar(th, tau) for th, tau in cases]))[:, None])
    for i, (theta, tau) in enumerate(cases):
        assert m["slant"][i] == pytest.approx(math.tan(theta), abs=0.05), (theta, tau)
        assert m["thickness"][i] == pytest.approx(tau, rel=0.1), (theta, tau)
        assert m["width"][i] == pytest.approx(tau / math.cos(theta), rel=0.06), (theta, tau)  # horizontal cross-section
    rings = measure(torch.tensor(np.stack([_ring(7, tau) for tau in (1.5, 3.0, 4.5)]))[:, None])
    np.testing.assert_allclose(rings["thickness"], [1.5, 3.0, 4.5], rtol=0.1)
    np.testing.assert_allclose(rings["slant"], 0, atol=1e-3)  # a disk drawn on the pixel grid is symmetric up to rounding
    assert np.all(np.diff(rings["thickness"]) > 0)


def test_bins_are_terciles_within_each_class_and_adherence_scores_them():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 30)
    meas = {a: rng.normal(size=300) + labels for a in ATTRIBUTES}  # each class on its own scale
    bins = fit_bins(meas, labels)
    for a in ATTRIBUTES:
        counts = np.stack([np.bincount(bins.bin(a, meas[a][labels == k], labels[labels == k]), minlength=3) for k in range(10)])
        assert (counts == 10).all()  # balanced within every class
    # real digits, scored against their own codes, adhere perfectly; against shuffled codes, at chance
    from ldmcourse.data import load_dataset

    x, y = load_dataset("mnist5k", "test", size=32).tensors()
    x, y = x[:300], y[:300]
    bins = fit_bins(measure(x), y.numpy())
    codes = attributes(x, y, bins)
    assert all(r["rate"] == 1.0 for r in adherence(x, codes, bins, predicted_class=y).values())
    perm = torch.randperm(300, generator=torch.Generator().manual_seed(0))
    wrong = codes.clone()
    wrong[:, 1:] = codes[perm, 1:]
    for a, r in adherence(x, wrong, bins).items():
        assert 0.2 < r["rate"] < 0.5 and r["ci95"][0] < r["rate"] < r["ci95"][1], (a, r)


def test_drop_attributes_rates():
    codes = torch.tensor([[3, 0, 1, 2]]).expand(4000, 4)
    g = torch.Generator().manual_seed(0)
    d = drop_attributes(codes, p_attr=0.5, p_class=0.1, generator=g)
    rates = (d == UNSAID).float().mean(0)
    assert abs(rates[0] - 0.1) < 0.02 and (abs(rates[1:] - 0.5) < 0.03).all()
    kept = d != UNSAID
    assert torch.equal(d[kept], codes[kept])
    assert (drop_attributes(codes, 0.0, 0.0) == codes).all()


def test_default_thresholds_are_mnist5k_terciles():
    from ldmcourse.captions import default_bins, fit_default_bins

    fitted, stored = fit_default_bins(), default_bins()
    for a in ATTRIBUTES:
        np.testing.assert_allclose(fitted.thresholds[a], stored.thresholds[a], atol=6e-4)


def test_captioned_data_prompts_and_ceiling_agree_with_the_measures():
    """Real digits adhere perfectly to their own captions, through every path that scores them."""
    from ldmcourse.data import load_dataset
    from ldmcourse.latent import FirstStage
    from ldmcourse.text_ldm import CaptionedData, build_text_ldm, ceiling_adherence, prompt_adherence

    ds = load_dataset("mnist5k", "test", size=32, n=120)
    data = CaptionedData(ds)
    x, codes = data.get_batch(torch.arange(120))
    assert x.shape == (120, 1, 32, 32) and codes.shape == (120, 4) and torch.equal(codes[:, 0], ds.labels)
    assert ((codes[:, 1:] >= 0) & (codes[:, 1:] <= 2)).all()
    res = prompt_adherence(x, data.captions())
    assert all(r["rate"] == 1.0 and r["n"] == 120 for r in res.values()), res
    model = build_text_ldm(FirstStage(None, "identity", image_shape=(1, 32, 32)), "unet", TEXT,
                           unet=UNetConfig(**SMALL))  # identity first stage: reconstructions are the digits
    res = ceiling_adherence(model, ds, classify=lambda im: ds.labels)
    assert all(r["rate"] == 1.0 for r in res.values()) and set(res) == {"thickness", "width", "slant", "class"}
    ext = ceiling_adherence(model, ds, classify=lambda im: ds.labels, extremes=True)  # only the bins the prompts ask for
    for j, a in enumerate(ATTRIBUTES, start=1):
        assert ext[a]["n"] == int((codes[:, j] != 1).sum()) < 120 and ext[a]["rate"] == 1.0
    assert ext["class"]["n"] == 120


def test_guidance_is_the_smallest_scale_that_meets_every_target_else_the_closest():
    from ldmcourse.text_ldm import choose_guidance, target_margin

    def row(cls, th, wd, sl):
        return {"class": {"rate": cls}, "thickness": {"rate": th}, "width": {"rate": wd}, "slant": {"rate": sl}}

    ceiling = row(0.98, 0.80, 0.85, 0.75)  # targets: class >= 0.90, attributes >= 0.70, 0.75, 0.65
    rows = {1.0: row(0.70, 0.60, 0.70, 0.60), 3.0: row(0.95, 0.72, 0.80, 0.70), 6.0: row(0.99, 0.75, 0.80, 0.66)}
    assert target_margin(rows[1.0], ceiling) == pytest.approx(-0.20)  # the class misses by 20 points
    assert target_margin(rows[3.0], ceiling) == pytest.approx(0.02)  # the thickness clears by 2 points
    assert choose_guidance(rows, ceiling) == 3.0  # 3 and 6 pass: the smaller
    rows[3.0]["width"]["rate"] = 0.70
    rows[6.0]["slant"]["rate"] = 0.62
    assert target_margin(rows[6.0], ceiling) == pytest.approx(-0.03) and target_margin(rows[3.0], ceiling) == pytest.approx(-0.05)
    assert choose_guidance(rows, ceiling) == 6.0  # none passes: the closest


def test_checkpointing_with_text_same_output_and_grads():
    torch.manual_seed(0)
    cfg = dict(in_channels=2, context_dim=16, **SMALL)
    a = _perturb(UNet(UNetConfig(**cfg)))
    b = UNet(UNetConfig(checkpointing=True, **cfg))
    b.load_state_dict(a.state_dict())
    x, t, ctx = torch.randn(2, 2, 8, 8), torch.tensor([5, 500]), torch.randn(2, 4, 16)
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]]).bool()
    a.train(), b.train()
    oa, ob = a(x, t, context=ctx, context_mask=mask), b(x, t, context=ctx, context_mask=mask)
    torch.testing.assert_close(oa, ob)
    oa.square().sum().backward()
    ob.square().sum().backward()
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, msg=n)


@pytest.mark.parametrize("backbone", ["unet", "dit"])
def test_attention_maps_over_the_prompt(backbone):
    from ldmcourse.dit import DiTConfig
    from ldmcourse.latent import FirstStage
    from ldmcourse.text_ldm import attention_maps, build_text_ldm

    torch.manual_seed(0)
    model = build_text_ldm(FirstStage(None, "identity", image_shape=(2, 8, 8)), backbone, TEXT, unet=UNetConfig(**SMALL),
                           dit=DiTConfig(hidden_dim=32, depth=2, heads=2))
    net = _perturb(model.unet)
    ids = net.tokenize(["a thin three", "an eight"])
    maps = attention_maps(net, torch.randn(2, 2, 8, 8), torch.tensor([10, 500]), ids)
    assert len(maps) == (7 if backbone == "unet" else 2)
    for name, w in maps.items():
        assert w.shape[0] == 2 and w.shape[-1] == 12, name
        torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:-1]))
        assert float(w[0, ..., 4:].abs().max()) == 0 and float(w[1, ..., 3:].abs().max()) == 0  # padding gets nothing
    assert not any(m.keep_weights for m in net.modules() if isinstance(m, CrossAttention))
