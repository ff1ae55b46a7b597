"""Multi-process (multi-GPU) training with DistributedDataParallel, in three small helpers.

Launch::

    torchrun --nproc_per_node 4 -m ldmcourse train ddpm --dataset fashion-mnist --out runs/ddpm

``torchrun`` starts one process per GPU and sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
``MASTER_ADDR`` and ``MASTER_PORT``. Each process calls :func:`setup` (joins the process group:
NCCL on CUDA, gloo on CPU), builds the same model, and :func:`ldmcourse.train.fit` then

- wraps the model in ``DistributedDataParallel`` (:func:`ddp_wrap`): the backward pass averages
  the gradients over processes, so every process takes the same optimiser step;
- gives rank ``r`` the slice ``[r::world]`` of the *global* batch (``train.batch_indices``): this is
  what ``DistributedSampler`` does, but as a pure function of (seed, step), so resuming is exact;
- averages the logged loss over processes, and lets only rank 0 write logs, pictures and checkpoints.

``--batch-size`` stays the *global* batch, so one process with batch B and N processes with B/N
each follow the same loss curve (a test checks it with 2 CPU processes) when the loss has no
per-process randomness; with random noise/timesteps each rank draws its own (seeded by rank), so the
curve is identical for the same seed *and world size*. BatchNorm statistics are per process unless
the model is converted with ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` (GroupNorm models,
like the U-Net, need nothing).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn as nn


@dataclass
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """True when the environment says this process is one of several (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: str | torch.device = "auto", backend: str | None = None) -> DistInfo:
    """Join the process group described by torchrun's environment variables.

    ``device``: "auto" picks ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU; the backend is
    NCCL on CUDA and gloo on CPU unless given. Without torchrun variables this is a no-op that
    returns rank 0 of 1.
    """
    rank, local_rank, world = (int(os.environ.get(k, d)) for k, d in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1")))
    if str(device) == "auto":
        device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
        if missing:
            raise RuntimeError(f"WORLD_SIZE={world} but {missing} are not set; launch with "
                               "`torchrun --nproc_per_node N -m ldmcourse train ...`, which sets them")
        # A bounded wait: a rank that cannot reach the others (a firewall, the loopback down) fails with
        # an error after LDMCOURSE_DIST_TIMEOUT seconds instead of hanging for torch's default 30 min.
        timeout = timedelta(seconds=float(os.environ.get("LDMCOURSE_DIST_TIMEOUT", 300)))
        dist.init_process_group(backend or ("nccl" if device.type == "cuda" else "gloo"), rank=rank, world_size=world,
                                timeout=timeout)
    return DistInfo(rank=rank, local_rank=local_rank, world=world, device=device)


def ddp_wrap(device: torch.device, sync_batchnorm: bool = False):
    """A ``wrap`` function for :func:`ldmcourse.train.fit`: model -> DistributedDataParallel(model)."""

    def wrap(model: nn.Module) -> nn.Module:
        if sync_batchnorm:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    return wrap


def mean_over_ranks(x: float, world: int) -> float:
    """Average a Python number over all processes (identity when ``world == 1``)."""
    if world <= 1 or not dist.is_initialized():
        return x
    t = torch.tensor([x], dtype=torch.float64)
    if dist.get_backend() == "nccl":  # NCCL reduces CUDA tensors only: this rank's current device
        t = t.to(torch.device("cuda", torch.cuda.current_device()))
    dist.all_reduce(t)
    return float(t.item()) / world


def gather_objects(obj, world: int) -> list:
    """Every rank's ``obj`` as a list (``[obj]`` when ``world == 1``)."""
    if world <= 1 or not dist.is_initialized():
        return [obj]
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


def cleanup() -> None:
    """Leave the process group together: a barrier first, so rank 0 (which hosts the rendezvous store)
    does not tear it down while another rank is still talking to it (that rank would then abort with
    "terminate called without an active exception")."""
    if dist.is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()


__all__ = ["DistInfo", "setup", "ddp_wrap", "mean_over_ranks", "gather_objects", "cleanup", "launched_by_torchrun"]
