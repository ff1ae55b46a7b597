"""Speed options: each keeps the maths (same outputs / gradients) or changes it by a stated, bounded amount."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from ldmcourse.autoencoders.ae import ConvAE, ConvAEConfig
from ldmcourse.speed import (Checkpointed, checkpoint_children, distillation_loss, make_train_step, map_in_chunks,
                             param_bytes, prune_l1, quantize_dynamic_int8, sparsity, time_call)
from ldmcourse.train import FitConfig


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.SiLU(), nn.Conv2d(8, 8, 3, padding=1), nn.SiLU(),
                         nn.Flatten(), nn.Linear(8 * 8 * 8, 10))


def test_gradient_checkpointing_same_outputs_and_grads():
    net = _net()
    ck = checkpoint_children(net)
    assert all(isinstance(m, Checkpointed) for m in ck)
    x = torch.randn(4, 1, 8, 8)
    y1, y2 = net(x), ck(x)
    torch.testing.assert_close(y1, y2)
    y1.square().sum().backward()
    y2.square().sum().backward()
    for p, q in zip(net.parameters(), ck.parameters()):
        torch.testing.assert_close(p.grad, q.grad)


def test_map_in_chunks_equals_one_batch():
    net = _net().eval()
    x = torch.randn(10, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(map_in_chunks(net, x, 3), net(x))
    with pytest.raises(ValueError):
        map_in_chunks(net, x, 0)


def test_dynamic_int8_touches_only_linear_layers():
    ae = ConvAE(ConvAEConfig(channels=(8, 16, 32))).eval()
    q = quantize_dynamic_int8(ae)
    qlin = [m for m in q.modules() if type(m).__module__.startswith("torch.ao.nn.quantized.dynamic")]
    assert len(qlin) == 2  # to_z and from_z: the only Linear layers
    assert sum(isinstance(m, nn.Conv2d) for m in q.modules()) == sum(isinstance(m, nn.Conv2d) for m in ae.modules())
    z = torch.randn(4, 16)
    with torch.no_grad():
        ref, out = ae.decode(z), q.decode(z)
    assert 0 < (out - ref).abs().max() < 0.05  # int8 rounding: small but not zero
    assert param_bytes(q) < param_bytes(ae)
    # a purely convolutional decoder has nothing to quantise: identical outputs
    conv_only = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.SiLU(), nn.Conv2d(8, 1, 3, padding=1)).eval()
    zz = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(quantize_dynamic_int8(conv_only)(zz), conv_only(zz), rtol=0, atol=0)


def test_l1_pruning_zeros_the_smallest_weights_and_keeps_dense_shapes():
    net = _net()
    pruned = prune_l1(net, 0.5)
    assert sparsity(pruned) == pytest.approx(0.5, abs=0.01)
    sd = pruned.state_dict()
    for name, w in net.named_parameters():
        w_p = sd[name]
        assert w.shape == w_p.shape  # still dense: a dense kernel does the same work
        if name.endswith("weight"):
            kept = w_p != 0
            assert w.abs()[kept].min() >= w.abs()[~kept].max()
    assert param_bytes(pruned) == pytest.approx(param_bytes(net), rel=0.01)  # zeros are still stored
    with pytest.raises(ValueError):
        prune_l1(net, 1.0)


def test_distillation_loss_matches_its_formula():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 10, generator=g), torch.randn(5, 10, generator=g)
    y = torch.randint(0, 10, (5,), generator=g)
    T, a = 3.0, 0.7
    p_t = F.softmax(t / T, -1)
    kl = (p_t * (p_t.log() - F.log_softmax(s / T, -1))).sum(-1).mean()
    ref = a * T * T * kl + (1 - a) * F.cross_entropy(s, y)
    torch.testing.assert_close(distillation_loss(s, t, y, T, a), ref)
    assert float(distillation_loss(t, t, None, T)) == pytest.approx(0.0, abs=1e-6)


def test_train_step_learns_and_options_run():
    x = torch.randn(8, 1, 8, 8)
    target = torch.randint(0, 10, (8,))
    loss_fn = lambda m, b, g: (F.cross_entropy(m(b), target), {})  # noqa: E731
    for kw in ({}, {"amp": "bf16"}, {"channels_last": True}, {"ema_every": None}, {"ema_every": 3}):
        step = make_train_step(_net(), loss_fn, x, lr=1e-2, **kw)
        first = step()
        for _ in range(10):
            last = step()
        assert last < first, kw
    assert time_call(lambda: None, warmup=0, iters=3) >= 0


def test_ema_every_is_validated():
    with pytest.raises(ValueError, match="ema_every"):
        FitConfig(ema_every=0)


@pytest.mark.timeout(120)
def test_peak_memory_sees_tensor_storage_that_tracemalloc_misses():
    from ldmcourse.speed import peak_memory_mb

    # a 256 MiB float32 tensor, written so that its pages are resident, then freed: the peak still holds it
    big = peak_memory_mb("n = 64 * 2 ** 20", "x = torch.ones(n); del x")
    small = peak_memory_mb("n = 64 * 2 ** 20", "x = torch.ones(n // 64); del x")
    assert 230 < big < 300 and small < 30, (big, small)
    with pytest.raises(RuntimeError, match="ZeroDivisionError"):
        peak_memory_mb("", "1 / 0")


def test_int8_quantisation_does_not_warn():
    import warnings

    # the UserWarning that notebook 10 printed on stderr (torch's module-level DeprecationWarning of
    # torch.ao.quantization depends on the torch build and is not what this checks)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quantize_dynamic_int8(ConvAE(ConvAEConfig()))
    assert not [w for w in caught if "quantize_per_tensor" in str(w.message)], [str(w.message) for w in caught]
