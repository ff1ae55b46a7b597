"""Speed and deployment options, each a small function so that it can be *measured* rather than believed.

- :func:`time_call`: median wall time of a callable after warm-up (CUDA-synchronised).
- :func:`make_train_step`: one AdamW step with the training-time options (autocast, channels_last,
  EMA every k steps, fused AdamW) switched on or off, for the benchmark table.
- :class:`Checkpointed` / :func:`checkpoint_children`: gradient checkpointing (recompute activations
  in the backward pass: less memory, ~30 % more compute).
- :func:`map_in_chunks` / :func:`auto_chunk_size`: memory-aware batched inference.
- :func:`quantize_dynamic_int8`: dynamic int8 quantisation of ``nn.Linear`` layers (CPU inference).
  A conv network has few Linear layers, so this barely changes it; the benchmark shows by how much.
- :func:`prune_l1`: L1 unstructured pruning. The zeros are still stored and multiplied by dense
  kernels: smaller *compressed* files, no speed-up.
- :func:`distillation_loss`: Hinton et al.'s knowledge distillation for a classifier; for diffusion
  see progressive distillation (Salimans & Ho, 2022).
- :func:`peak_memory_mb`: the peak memory one statement adds, measured in a fresh process (CPU: peak RSS;
  CUDA: ``torch.cuda.max_memory_allocated``), to put numbers on checkpointing and chunked sampling.
"""

from __future__ import annotations

import copy
import json
import os
import statistics
import subprocess
import sys
import textwrap
import time
import warnings
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


def _sync(device: torch.device | None = None) -> None:
    if torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda"):
        torch.cuda.synchronize()


def time_call(fn: Callable[[], object], warmup: int = 2, iters: int = 5, device: torch.device | None = None) -> float:
    """Median seconds per call of ``fn()`` over ``iters`` calls, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def make_train_step(model: nn.Module, loss_fn: Callable, batch, *, amp: str = "none", channels_last: bool = False,
                    ema_every: int | None = 1, fused: bool = False, lr: float = 1e-4,
                    generator: torch.Generator | None = None) -> Callable[[], float]:
    """A closure doing one full optimisation step (forward, backward, AdamW, EMA) on a fixed ``batch``.

    ``ema_every``: update an EMA copy every k steps (``None``: no EMA). ``channels_last`` converts the
    model and the images to NHWC memory layout (faster convolutions on GPUs with tensor cores).
    """
    from .train import EMA, autocast_context

    device = next(model.parameters()).device
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        batch = (batch.contiguous(memory_format=torch.channels_last) if isinstance(batch, torch.Tensor)
                 else (batch[0].contiguous(memory_format=torch.channels_last), *batch[1:]))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, **({"fused": True} if fused and device.type == "cuda" else {}))
    ema = EMA(model, 0.999) if ema_every else None
    gen = generator if generator is not None else torch.Generator(device=device).manual_seed(0)
    count = [0]

    def step() -> float:
        with autocast_context(amp, device):
            loss, _ = loss_fn(model, batch, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        count[0] += 1
        if ema is not None and count[0] % ema_every == 0:
            ema.update(model, step=count[0])
        return float(loss.detach())

    return step


class Checkpointed(nn.Module):
    """Run ``inner`` under activation checkpointing while training (its activations are recomputed in backward)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, *args):
        if self.training and torch.is_grad_enabled():
            return checkpoint(self.inner, *args, use_reentrant=False)
        return self.inner(*args)


def checkpoint_children(seq: nn.Sequential) -> nn.Sequential:
    """A copy of ``seq`` whose children are each wrapped in :class:`Checkpointed` (same weights, same outputs)."""
    return nn.Sequential(*[Checkpointed(m) for m in copy.deepcopy(seq)])


def auto_chunk_size(bytes_per_item: int, device: str | torch.device, fraction: float = 0.5, cpu_budget: int = 2 << 30,
                    cap: int = 4096) -> int:
    """How many items fit in ``fraction`` of the free memory (CUDA: measured free; CPU: ``cpu_budget`` bytes)."""
    device = torch.device(device)
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else cpu_budget
    return int(max(1, min(cap, fraction * free // max(1, bytes_per_item))))


@torch.no_grad()
def map_in_chunks(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, chunk: int) -> torch.Tensor:
    """``fn`` applied to ``x`` in chunks of ``chunk`` rows, concatenated: the same result, bounded memory."""
    if chunk < 1:
        raise ValueError(f"chunk={chunk} must be >= 1")
    return torch.cat([fn(x[i:i + chunk]) for i in range(0, len(x), chunk)])


def quantize_dynamic_int8(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (on CPU) with every ``nn.Linear`` replaced by a dynamically quantised int8 Linear.

    Weights are stored in int8; activations are quantised on the fly per batch. Convolutions are
    untouched (dynamic quantisation supports Linear/LSTM/GRU only), so a conv decoder gains little.
    """
    from torch.ao.quantization import quantize_dynamic

    # torch >= 2.10 warns that its quantised-tensor constructors are deprecated (torchao is the successor); the
    # measurement is of today's kernels, so the warning is silenced here, where it is said
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor.*deprecated", category=UserWarning)
        return quantize_dynamic(copy.deepcopy(model).cpu().eval(), {nn.Linear}, dtype=torch.qint8)


def prune_l1(model: nn.Module, amount: float) -> nn.Module:
    """A copy of ``model`` with the smallest-|w| fraction ``amount`` of each conv/linear weight set to 0 (made permanent)."""
    import torch.nn.utils.prune as prune

    if not 0 <= amount < 1:
        raise ValueError(f"amount={amount} must be in [0, 1)")
    model = copy.deepcopy(model)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            prune.l1_unstructured(m, "weight", amount=amount)
            prune.remove(m, "weight")  # bake the mask in: an ordinary dense tensor with zeros
    return model


def sparsity(model: nn.Module) -> float:
    """Fraction of exactly-zero entries over all conv/linear weights."""
    ws = [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
    return float(sum((w == 0).sum() for w in ws) / max(1, sum(w.numel() for w in ws)))


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None,
                      temperature: float = 4.0, alpha: float = 0.9) -> torch.Tensor:
    """Hinton et al. (2015): α·T²·KL(softmax(t/T) ‖ softmax(s/T)) + (1−α)·CE(s, y).

    The T² keeps the soft term's gradients on the same scale as the hard term's as T changes.
    """
    soft = F.kl_div(F.log_softmax(student_logits / temperature, -1), F.log_softmax(teacher_logits / temperature, -1),
                    reduction="batchmean", log_target=True) * temperature ** 2
    if labels is None or alpha >= 1:
        return soft
    return alpha * soft + (1 - alpha) * F.cross_entropy(student_logits, labels)


def param_bytes(model: nn.Module) -> int:
    """Bytes of the model's state dict as saved (quantised weights count as int8)."""
    import io

    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes


_PEAK_SCRIPT = """
import json, resource, sys, torch

def _maxrss():  # the process's peak RSS so far, in bytes (kilobytes on Linux, bytes on macOS)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)

def _hwm():  # Linux: the peak RSS since the last reset, in bytes; elsewhere the peak so far
    try:
        return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    except OSError:
        return _maxrss()

def _rss_mark():
    # Linux: reset the peak to the current RSS (clear_refs 5), so that the statement's own peak is measured even
    # below the high-water mark of the imports; elsewhere: the peak so far (the growth then misses a lower peak)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return _maxrss()
    return _hwm()

torch.set_num_threads({threads})
device = torch.device({device!r})
{setup}
if device.type == "cuda":
    torch.cuda.synchronize(device); torch.cuda.reset_peak_memory_stats(device); before = torch.cuda.memory_allocated(device)
else:
    before = _rss_mark()
{stmt}
if device.type == "cuda":
    torch.cuda.synchronize(device); peak = torch.cuda.max_memory_allocated(device) - before
else:
    peak = _hwm() - before
print(json.dumps({{"peak_mb": peak / 2 ** 20}}))
"""


def peak_memory_mb(setup: str, stmt: str, device: str = "cpu", threads: int = 1, timeout: float = 600.0) -> float:
    """Peak memory (MiB) that running ``stmt`` adds on top of ``setup``, measured in a fresh Python process.

    ``setup`` builds what ``stmt`` uses (``device`` is defined in both). In a long-lived process (a notebook) the
    high-water mark already holds everything done before, and ``tracemalloc`` does not see tensor storage, so the
    measurement needs a process of its own. CPU: the peak resident set size during the statement less the resident
    size before it (Linux resets the peak with ``/proc/self/clear_refs``; elsewhere the growth of ``ru_maxrss``,
    which misses a peak below the imports' high-water mark): what the allocator really took from the system,
    including the intermediate activations freed again; CUDA: ``torch.cuda.max_memory_allocated`` above what was allocated before (the caching allocator's
    reserve is not counted). Raises ``RuntimeError`` with the child's error if it fails.
    """
    code = _PEAK_SCRIPT.format(threads=int(threads), device=str(device), setup=textwrap.dedent(setup), stmt=textwrap.dedent(stmt))
    env = {**os.environ, "OMP_NUM_THREADS": str(int(threads))}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"peak_memory_mb: the measured statement failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])["peak_mb"]


__all__ = ["time_call", "make_train_step", "Checkpointed", "checkpoint_children", "auto_chunk_size", "map_in_chunks",
           "quantize_dynamic_int8", "prune_l1", "sparsity", "distillation_loss", "param_bytes", "peak_memory_mb"]
