"""DDP through ``fit``: 2 CPU processes (gloo) follow the same loss curve as 1 process with the same global batch."""

import dataclasses
import json
import os
import socket
import time

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F

from ldmcourse.checkpoint import load_checkpoint
from ldmcourse.data import ImageTensorDataset
from ldmcourse.distributed import ddp_wrap, setup, cleanup
from ldmcourse.train import FitConfig, batch_indices, fit


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _data() -> ImageTensorDataset:
    g = torch.Generator().manual_seed(0)
    return ImageTensorDataset(torch.randint(0, 256, (96, 1, 8, 8), dtype=torch.uint8, generator=g),
                              torch.randint(0, 10, (96,), generator=g), "toy")


def _model() -> nn.Module:
    torch.manual_seed(1)  # GroupNorm, not BatchNorm: batch statistics would differ per process
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.SiLU(), nn.Conv2d(8, 1, 3, padding=1))


def _loss(noisy: bool):
    def loss_fn(model, batch, generator):
        x, _ = batch
        inp = x + 0.3 * torch.randn(x.shape, generator=generator) if noisy else x.flip(-1)
        loss = F.mse_loss(model(inp), x)
        return loss, {}
    return loss_fn


def _cfg(steps: int) -> FitConfig:
    return FitConfig(steps=steps, batch_size=16, lr=3e-3, warmup=2, log_every=1, ema_decay=0.9, progress=False, ckpt_every=0)


class _Stop(Exception):
    pass


def _stop_at(step_to_stop: int):
    def cb(step, rec):
        if step == step_to_stop:
            raise _Stop
    return cb


def _worker(rank: int, world: int, port: int, out: str) -> None:
    """All 2-process runs in one spawn (starting processes is the slow part)."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    info = setup("cpu")
    kw = dict(meta={"kind": "toy"}, rank=info.rank, world=info.world, wrap=ddp_wrap(info.device))
    try:
        fit(_model(), _loss(False), _data(), _cfg(8), out_dir=f"{out}/two", **kw)
        fit(_model(), _loss(True), _data(), _cfg(6), out_dir=f"{out}/straight", **kw)
        # interrupted after step 4 (checkpoint at 3), then resumed: must equal the straight run
        cfg = dataclasses.replace(_cfg(6), ckpt_every=3)
        try:
            fit(_model(), _loss(True), _data(), cfg, out_dir=f"{out}/split", callbacks=[_stop_at(4)], **kw)
        except _Stop:
            pass
        fit(_model(), _loss(True), _data(), cfg, out_dir=f"{out}/split", resume=True, **kw)
    finally:
        cleanup()


def _loopback_works() -> bool:
    """Can two sockets on this machine talk over 127.0.0.1? (Not in a network namespace with lo down.)"""
    try:
        with socket.socket() as srv, socket.socket() as cli:
            srv.bind(("127.0.0.1", 0))
            srv.listen(1)
            cli.settimeout(2)
            cli.connect(srv.getsockname())
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def ddp_out(tmp_path_factory):
    if not _loopback_works():
        pytest.skip("the loopback interface is down: the 2-process gloo tests need 127.0.0.1 (ip link set lo up)")
    out = tmp_path_factory.mktemp("ddp")
    os.environ["LDMCOURSE_DIST_TIMEOUT"] = "60"  # a rank that cannot join fails within a minute, never hangs
    ctx = mp.spawn(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=False)
    deadline = time.monotonic() + 300
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("the 2-process run did not finish in 300 s (killed)")
    return out


def _losses(out) -> list[float]:
    return [json.loads(line)["loss"] for line in open(os.path.join(out, "metrics.jsonl"))]


def test_rank_slices_partition_the_global_batch():
    full = batch_indices(96, 16, step=7, seed=3)
    parts = [batch_indices(96, 16, step=7, seed=3, rank=r, world=2) for r in range(2)]
    assert sorted(torch.cat(parts).tolist()) == sorted(full.tolist())
    assert len(set(parts[0].tolist()) & set(parts[1].tolist())) == 0


def test_two_processes_match_one_process(tmp_path, ddp_out):
    torch.set_num_threads(1)
    one = fit(_model(), _loss(False), _data(), _cfg(8), out_dir=tmp_path / "one", meta={"kind": "toy"})
    l1, l2 = _losses(tmp_path / "one"), _losses(ddp_out / "two")
    assert len(l1) == len(l2) == 8
    assert l1[-1] < l1[0]  # it trains
    torch.testing.assert_close(torch.tensor(l2), torch.tensor(l1), rtol=1e-5, atol=1e-6)
    ck = load_checkpoint(ddp_out / "two" / "checkpoint.pt")
    for k, v in one.model.state_dict().items():
        torch.testing.assert_close(ck["model"][k], v, rtol=1e-4, atol=1e-6)


def test_two_process_resume_is_exact_with_per_rank_noise(ddp_out):
    a = load_checkpoint(ddp_out / "straight" / "checkpoint.pt")
    b = load_checkpoint(ddp_out / "split" / "checkpoint.pt")
    assert b["step"] == a["step"] == 6
    assert len(b["generators"]) == 2 and not torch.equal(b["generators"][0], b["generators"][1])
    for k in a["model"]:
        torch.testing.assert_close(b["model"][k], a["model"][k], rtol=0, atol=0)
    assert [r["loss"] for r in a["history"]] == [r["loss"] for r in b["history"]]


def test_global_batch_must_divide_by_world():
    with pytest.raises(ValueError, match="divisible by the number of processes"):
        fit(_model(), _loss(False), _data(), FitConfig(steps=1, batch_size=15, progress=False), rank=0, world=2)
