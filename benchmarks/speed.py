"""Speed table: train steps/s and sampling ms per model call, with and without each option.

    python benchmarks/speed.py                  # CPU here, CUDA when available; prints a table
    python benchmarks/speed.py --compile        # also torch.compile (slow to compile on a few cores)
    python benchmarks/speed.py --quick          # tiny sizes, a few seconds (what CI would run)

Writes ``benchmarks/results/<device>.json`` (read by notebook 10). Every number is a median of
``--iters`` timed calls after warm-up, on whatever else the machine is doing: on a shared machine
compare rows of the same run, not runs.

Models: the pixel U-Net (1x32x32), the latent U-Net (4x8x8, the KL autoencoder's f=4 latent),
diffusers' ``UNet2DModel`` at the pixel U-Net's widths, and the conv decoders for deployment
(int8 dynamic quantisation, L1 pruning).
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import sys
import time
import zlib
from functools import partial
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ldmcourse.autoencoders.ae import ConvAE, ConvAEConfig  # noqa: E402
from ldmcourse.autoencoders.kl import Decoder, KLAutoencoderConfig  # noqa: E402
from ldmcourse.diffusion import diffusion_loss  # noqa: E402
from ldmcourse.samplers import sample_chunked  # noqa: E402
from ldmcourse.schedules import make_schedule  # noqa: E402
from ldmcourse.speed import make_train_step, param_bytes, prune_l1, quantize_dynamic_int8, sparsity, time_call  # noqa: E402
from ldmcourse.unet import UNet, UNetConfig  # noqa: E402

PIXEL = dict(in_channels=1, base_channels=32, channel_mult=(1, 2, 2), num_res_blocks=2, attention=(4,))
LATENT = dict(in_channels=4, base_channels=64, channel_mult=(1, 2), num_res_blocks=2, attention=(2,))


def diffusers_unet(cfg: UNetConfig, size: int):
    """diffusers' UNet2DModel with our widths: same levels, blocks per level, attention placement and GroupNorm groups."""
    from diffusers import UNet2DModel

    n = len(cfg.channel_mult)
    attn_levels = {i for i in range(n) if 2 ** i in cfg.attention}
    down = tuple("AttnDownBlock2D" if i in attn_levels else "DownBlock2D" for i in range(n))
    up = tuple("AttnUpBlock2D" if i in attn_levels else "UpBlock2D" for i in reversed(range(n)))
    return UNet2DModel(sample_size=size, in_channels=cfg.in_channels, out_channels=cfg.in_channels,
                       block_out_channels=tuple(cfg.base_channels * m for m in cfg.channel_mult),
                       layers_per_block=cfg.num_res_blocks, down_block_types=down, up_block_types=up,
                       norm_num_groups=cfg.groups, attention_head_dim=cfg.head_dim)


class DiffusersEps(torch.nn.Module):
    """unet(x, t) -> ε for diffusers' model (its forward returns an object)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x, t, y=None):
        return self.net(x, t).sample


def n_params(m) -> int:
    return sum(p.numel() for p in m.parameters())


def train_rows(name, build, shape, batch, device, args, schedule):
    """(option, steps/s) rows for one network."""
    loss = partial(diffusion_loss, schedule=schedule)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *shape, generator=g).clamp(-1, 1).to(device)
    options = [("baseline fp32 (EMA every step)", {}, {}),
               ("EMA off", {"ema_every": None}, {}),
               ("EMA every 10 steps", {"ema_every": 10}, {}),
               ("bf16 autocast", {"amp": "bf16"}, {}),
               ("channels_last", {"channels_last": True}, {}),
               ("gradient checkpointing", {}, {"checkpointing": True})]
    if device.type == "cuda":
        options += [("fp16 autocast", {"amp": "fp16"}, {}), ("fused AdamW", {"fused": True}, {}),
                    ("bf16 + channels_last + fused", {"amp": "bf16", "channels_last": True, "fused": True}, {})]
    rows = []
    for label, step_kw, model_kw in options:
        torch.manual_seed(0)
        model = build(**model_kw).to(device).train()
        step = make_train_step(model, loss, x, generator=torch.Generator(device=device).manual_seed(0), **step_kw)
        s = time_call(step, warmup=2, iters=args.iters, device=device)
        rows.append({"model": name, "option": label, "steps_per_s": 1 / s, "ms": 1000 * s})
        print(f"  {name:<22} {label:<34} {1 / s:8.2f} steps/s", flush=True)
    if args.compile:
        torch.manual_seed(0)
        model = build().to(device).train()
        cmodel = torch.compile(model)
        step = make_train_step(cmodel, loss, x, generator=torch.Generator(device=device).manual_seed(0))
        t0 = time.perf_counter()
        step()
        compile_s = time.perf_counter() - t0
        s = time_call(step, warmup=1, iters=args.iters, device=device)
        rows.append({"model": name, "option": "torch.compile (warm)", "steps_per_s": 1 / s, "ms": 1000 * s,
                     "compile_s": compile_s})
        print(f"  {name:<22} {'torch.compile (warm)':<34} {1 / s:8.2f} steps/s  (first call {compile_s:.0f} s)", flush=True)
    return rows


@torch.no_grad()
def sample_rows(name, build, shape, batch, device, args):
    """ms per model call (forward, no grad) at inference batch ``batch``."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *shape, generator=g).to(device)
    t = torch.full((batch,), 500, device=device, dtype=torch.long)
    rows = []
    for label, amp, cl in (("fp32", False, False), ("bf16 autocast", True, False), ("channels_last", False, True)):
        torch.manual_seed(0)
        model = build().to(device).eval()
        xi = x
        if cl:
            model, xi = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
        ctx = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if amp else torch.no_grad
        def call():
            with ctx():
                model(xi, t)
        s = time_call(call, warmup=1, iters=args.iters, device=device)
        rows.append({"model": name, "option": f"sample call {label}", "ms_per_call": 1000 * s, "batch": batch})
        print(f"  {name:<22} {'sample call ' + label:<34} {1000 * s:8.1f} ms/call (batch {batch})", flush=True)
    return rows


@torch.no_grad()
def chunk_rows(device, args, schedule):
    """sample_chunked: the same 32 samples in chunks of 4, 16, 32 (the result is identical)."""
    torch.manual_seed(0)
    model = UNet(UNetConfig(**PIXEL)).to(device).eval()
    n, steps = (8, 2) if args.quick else (32, 5)
    rows, ref = [], None
    for bs in (max(1, n // 8), n // 2, n):
        g = torch.Generator(device=device).manual_seed(0)
        t0 = time.perf_counter()
        x = sample_chunked("ddim", model, (1, 32, 32), n, bs, generator=g, schedule=schedule, device=device, steps=steps)
        s = time.perf_counter() - t0
        same = ref is None or torch.equal(x, ref)
        ref = x if ref is None else ref
        rows.append({"model": "pixel U-Net", "option": f"chunked DDIM sampling, chunk {bs}",
                     "ms_per_image_step": 1000 * s / (n * steps), "identical": bool(same)})
        print(f"  {'pixel U-Net':<22} {f'chunked sampling, chunk {bs}':<34} {1000 * s / (n * steps):8.2f} ms/image/step  identical={same}", flush=True)
    return rows


@torch.no_grad()
def deploy_rows(args):
    """CPU inference of two conv decoders: fp32 vs dynamic int8 (Linear only) vs 50 % L1-pruned."""
    rows = []
    g = torch.Generator().manual_seed(0)
    batch = 16 if args.quick else 64
    decoders = {
        "ConvAE decoder": (lambda: ConvAE(ConvAEConfig()), lambda m: m.decode, torch.randn(batch, 16, generator=g)),
        "KL-AE decoder": (lambda: Decoder(KLAutoencoderConfig()), lambda m: m, torch.randn(batch, 4, 8, 8, generator=g)),
    }
    for name, (build, fn, z) in decoders.items():
        torch.manual_seed(0)
        base = build().eval()
        variants = {"fp32": base, "dynamic int8 (Linear)": quantize_dynamic_int8(base), "L1-pruned 50%": prune_l1(base, 0.5)}
        ref = fn(base)(z)
        for label, m in variants.items():
            f = fn(m)
            s = time_call(lambda: f(z), warmup=1, iters=args.iters)
            buf = io.BytesIO()
            torch.save(m.state_dict(), buf)
            zipped = len(zlib.compress(buf.getvalue(), 6))
            n_lin = sum(isinstance(x, torch.nn.Linear) for x in m.modules())
            err = float((f(z) - ref).abs().max())
            rows.append({"model": name, "option": label, "ms_per_batch": 1000 * s, "batch": batch, "bytes": param_bytes(m),
                         "zlib_bytes": zipped, "sparsity": sparsity(m), "max_abs_diff": err, "linear_layers": n_lin})
            print(f"  {name:<22} {label:<34} {1000 * s:8.1f} ms/batch{batch}  {param_bytes(m) / 1e6:6.2f} MB "
                  f"(zlib {zipped / 1e6:5.2f} MB)  sparsity {sparsity(m):.2f}  max|Δ| {err:.3g}", flush=True)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--batch", type=int, default=None, help="train batch (default 32 on CPU, 128 on CUDA)")
    p.add_argument("--compile", action="store_true", help="also measure torch.compile (first call timed separately)")
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks that everything runs")
    p.add_argument("--out", default=None, help="JSON file (default benchmarks/results/<device>.json)")
    args = p.parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else ("cpu" if args.device == "auto" else args.device))
    batch = args.batch or (8 if args.quick else (32 if device.type == "cpu" else 128))
    if args.quick:
        args.iters = min(args.iters, 2)
    schedule = make_schedule("cosine", 1000)
    pixel_cfg = UNetConfig(**(dict(PIXEL, base_channels=8, head_dim=8) if args.quick else PIXEL))
    latent_cfg = UNetConfig(**(dict(LATENT, base_channels=8, head_dim=8) if args.quick else LATENT))
    nets = {
        "pixel U-Net": (lambda **kw: UNet(UNetConfig(**{**pixel_cfg.__dict__, **kw})), (1, 32, 32)),
        "diffusers UNet2DModel": (lambda **kw: DiffusersEps(diffusers_unet(pixel_cfg, 32)), (1, 32, 32)),
        "latent U-Net": (lambda **kw: UNet(UNetConfig(**{**latent_cfg.__dict__, **kw})), (4, 8, 8)),
    }
    env = {"device": str(device), "name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
           "threads": torch.get_num_threads(), "torch": torch.__version__, "batch": batch, "iters": args.iters,
           "date": time.strftime("%Y-%m-%d %H:%M"), "quick": args.quick}
    print(f"[speed] {env}")
    print("params: " + ", ".join(f"{k} {n_params(b()):,}" for k, (b, _) in nets.items()))
    rows = []
    for name, (build, shape) in nets.items():
        if name == "diffusers UNet2DModel":  # the comparison only needs the baseline step
            a = argparse.Namespace(**{**vars(args), "compile": False})
            m = build().to(device).train()
            step = make_train_step(m, partial(diffusion_loss, schedule=schedule), torch.randn(batch, *shape).to(device))
            s = time_call(step, warmup=2, iters=a.iters, device=device)
            rows.append({"model": name, "option": "baseline fp32 (EMA every step)", "steps_per_s": 1 / s, "ms": 1000 * s})
            print(f"  {name:<22} {'baseline fp32 (EMA every step)':<34} {1 / s:8.2f} steps/s", flush=True)
            continue
        rows += train_rows(name, build, shape, batch, device, args, schedule)
        rows += sample_rows(name, build, shape, 2 * batch, device, args)
    ours = next(r for r in rows if r["model"] == "pixel U-Net" and r["option"].startswith("baseline"))
    theirs = next(r for r in rows if r["model"] == "diffusers UNet2DModel")
    ratio = theirs["ms"] / ours["ms"]
    print(f"  ours vs diffusers UNet2DModel (same widths): {ratio:.2f}x diffusers' step time "
          f"(ours {ours['ms']:.0f} ms, diffusers {theirs['ms']:.0f} ms; params {n_params(nets['pixel U-Net'][0]()):,} vs "
          f"{n_params(nets['diffusers UNet2DModel'][0]()):,})")
    rows += chunk_rows(device, args, schedule)
    rows += deploy_rows(args)
    result = {"env": env, "rows": rows, "ours_over_diffusers_step_time": 1 / ratio}
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"{device.type}{'-quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"[speed] wrote {out}")
    return result


if __name__ == "__main__":
    main()
