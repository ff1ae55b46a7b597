import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from ldmcourse.checkpoint import CheckpointError, CheckpointMismatch, load_checkpoint, save_checkpoint
from ldmcourse.data import ImageTensorDataset
from ldmcourse.train import EMA, FitConfig, NonFiniteLossError, batch_indices, fit, lr_lambda


def toy_data(n=96):
    g = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 256, (n, 1, 8, 8), generator=g, dtype=torch.uint8)
    return ImageTensorDataset(imgs, torch.arange(n) % 10, "toy")


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.Dropout(0.1), nn.SiLU(), nn.Conv2d(8, 1, 3, padding=1))

    def forward(self, x):
        return self.net(x)


def noisy_loss(model, batch, gen):
    """Uses the generator (noise) and dropout (global RNG): resuming must restore both."""
    x, _ = batch
    noise = torch.randn(x.shape, generator=gen, device=x.device)
    loss = F.mse_loss(model(x + 0.1 * noise), x)
    return loss, {}


def cfg(**kw):
    base = dict(steps=10, batch_size=16, lr=1e-2, warmup=3, log_every=2, progress=False, ema_decay=0.9)
    base.update(kw)
    return FitConfig(**base)


META = {"kind": "toy", "model_config": {"width": 8}}


def test_resume_is_exact(tmp_path):
    torch.manual_seed(0)
    straight = fit(Toy(), noisy_loss, toy_data(), cfg(steps=10), out_dir=tmp_path / "a", meta=META)

    torch.manual_seed(0)
    model = Toy()
    fit(model, noisy_loss, toy_data(), cfg(steps=10), out_dir=tmp_path / "b", meta=META, stop_after=5)
    assert load_checkpoint(tmp_path / "b" / "checkpoint.pt")["step"] == 5
    # a fresh process would rebuild the model from scratch; resume loads everything else
    torch.manual_seed(123)
    resumed = fit(Toy(), noisy_loss, toy_data(), cfg(steps=10), out_dir=tmp_path / "b", meta=META, resume=True)

    for (k, a), (_, b) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), k
    for a, b in zip(straight.ema.parameters(), resumed.ema.parameters()):
        assert torch.equal(a, b)
    assert [h["loss"] for h in straight.history] == [h["loss"] for h in resumed.history]


def test_loss_decreases_and_files_written(tmp_path):
    res = fit(Toy(), noisy_loss, toy_data(), cfg(steps=40, lr=3e-3), out_dir=tmp_path, meta=META)
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    assert (tmp_path / "checkpoint.pt").exists() and (tmp_path / "metrics.jsonl").exists()
    ck = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ck["step"] == 40 and ck["meta"] == META


def test_nan_guard_keeps_last_good_checkpoint(tmp_path):
    calls = {"n": 0}

    def bad_after_6(model, batch, gen):
        calls["n"] += 1
        loss, logs = noisy_loss(model, batch, gen)
        return (loss * float("nan") if calls["n"] > 5 else loss), logs

    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 5.*last good checkpoint \(step 4\).*--resume"):
        fit(Toy(), bad_after_6, toy_data(), cfg(steps=10, ckpt_every=2), out_dir=tmp_path, meta=META)
    ck = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ck["step"] == 4
    assert all(torch.isfinite(v).all() for v in ck["model"].values())


def test_resume_refuses_other_model(tmp_path):
    fit(Toy(), noisy_loss, toy_data(), cfg(steps=2), out_dir=tmp_path, meta=META)
    other = {"kind": "toy", "model_config": {"width": 16}}
    with pytest.raises(CheckpointMismatch, match=r"width': 8.*width': 16.*new --out"):
        fit(Toy(), noisy_loss, toy_data(), cfg(steps=4), out_dir=tmp_path, meta=other, resume=True)
    with pytest.raises(FileNotFoundError, match="drop --resume"):
        fit(Toy(), noisy_loss, toy_data(), cfg(steps=4), out_dir=tmp_path / "empty", meta=META, resume=True)


def test_atomic_save_keeps_old_file_on_crash(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"meta": {"kind": "x"}, "model": {"w": torch.ones(2)}})

    def crash(obj, f, *a, **k):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"meta": {"kind": "x"}, "model": {"w": torch.zeros(2)}})
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temp file left behind


def test_corrupt_checkpoint_is_named(tmp_path):
    p = tmp_path / "checkpoint.pt"
    p.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="checkpoint.pt could not be read"):
        load_checkpoint(p)


def test_lr_warmup_then_cosine():
    c = FitConfig(steps=110, warmup=10, min_lr_ratio=0.1)
    f = lr_lambda(c)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(60) == pytest.approx(0.55) and f(110) == pytest.approx(0.1)


def test_batch_indices_cover_epoch_and_shard():
    idx = torch.cat([batch_indices(100, 10, s, seed=0) for s in range(10)])
    assert sorted(idx.tolist()) == list(range(100))
    assert not torch.equal(batch_indices(100, 10, 0, 0), batch_indices(100, 10, 10, 0))  # new epoch, new order
    full = batch_indices(100, 10, 3, 0)
    parts = [batch_indices(100, 10, 3, 0, rank=r, world=2) for r in range(2)]
    assert sorted(torch.cat(parts).tolist()) == sorted(full.tolist())


def test_ema_tracks_weights():
    m = nn.Linear(2, 2)
    ema = EMA(m, decay=0.5)
    with torch.no_grad():
        m.weight.fill_(1.0)
    w0 = ema.module.weight.clone()
    ema.update(m, step=100)
    assert torch.allclose(ema.module.weight, 0.5 * w0 + 0.5)
    assert ema.decay_at(0) == pytest.approx(0.1)


def test_bf16_autocast_on_cpu_and_fp16_refused(tmp_path):
    res = fit(Toy(), noisy_loss, toy_data(), cfg(steps=3, amp="bf16"), meta=META)
    assert math.isfinite(res.history[-1]["loss"])
    with pytest.raises(ValueError, match="fp16.*CUDA"):
        fit(Toy(), noisy_loss, toy_data(), cfg(steps=3, amp="fp16"), meta=META)


# ----------------------------------------------------------------------------------------------
# issue 12: resume means resume, no lost work (fit-level, so notebooks get it too)
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("change, named", [(dict(lr=5e-3), "lr 0.01 -> 0.005"), (dict(warmup=5), "warmup 3 -> 5"),
                                           (dict(batch_size=8), "batch_size 16 -> 8"), (dict(seed=1), "seed 0 -> 1"),
                                           (dict(grad_clip=0.5), "grad_clip 1.0 -> 0.5")])
def test_resume_refuses_changed_settings_unless_reset_optimizer(tmp_path, change, named):
    first = fit(Toy(), noisy_loss, toy_data(), cfg(steps=4), out_dir=tmp_path, meta=META)
    with pytest.raises(CheckpointMismatch, match=named + ".*--reset-optimizer"):
        fit(Toy(), noisy_loss, toy_data(), cfg(steps=8, **change), out_dir=tmp_path, meta=META, resume=True)
    # --reset-optimizer: the weights and the EMA go on from the checkpoint, with a fresh warm-up at the new values
    seen = {}
    res = fit(Toy(), noisy_loss, toy_data(), cfg(steps=6, **change), out_dir=tmp_path, meta=META, resume=True,
              reset_optimizer=True, callbacks=[lambda step, rec: seen.setdefault(step, rec["lr"])])
    ck = load_checkpoint(tmp_path / "checkpoint.pt")
    assert res.step == 6 and ck["lr_phase_start"] == 4 and list(ck["resets"][0]["changed"]) == [named.split()[0]]
    c = cfg(steps=6, **change)
    assert seen[6] == pytest.approx(c.lr * lr_lambda(c, start=4)(2))  # two steps into the new schedule
    assert not torch.equal(res.model.net[0].weight, first.model.net[0].weight)


def test_resume_refuses_other_data_and_allows_free_fields(tmp_path):
    fit(Toy(), noisy_loss, toy_data(), cfg(steps=2), out_dir=tmp_path, meta={**META, "dataset": "a"})
    with pytest.raises(CheckpointMismatch, match="dataset 'a' -> 'b'"):
        fit(Toy(), noisy_loss, toy_data(), cfg(steps=4), out_dir=tmp_path, meta={**META, "dataset": "b"}, resume=True)
    res = fit(Toy(), noisy_loss, toy_data(), cfg(steps=4, log_every=1, ckpt_every=3, sample_every=2), out_dir=tmp_path,
              meta={**META, "dataset": "a"}, resume=True)
    assert res.step == 4


def test_fresh_run_into_a_used_folder_is_refused(tmp_path):
    fit(Toy(), noisy_loss, toy_data(), cfg(steps=3), out_dir=tmp_path, meta=META)
    with pytest.raises(ValueError, match="already holds a run .*step 3.*--overwrite"):
        fit(Toy(), noisy_loss, toy_data(), cfg(steps=2), out_dir=tmp_path, meta=META)
    fit(Toy(), noisy_loss, toy_data(), cfg(steps=2), out_dir=tmp_path, meta=META, overwrite=True)
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 2


def test_signal_saves_the_current_step_and_resume_is_exact(tmp_path):
    import os
    import signal

    from ldmcourse.train import TrainingInterrupted

    torch.manual_seed(0)
    straight = fit(Toy(), noisy_loss, toy_data(), cfg(steps=10), out_dir=tmp_path / "a", meta=META)
    calls = {"n": 0}

    def interrupted_at_3(model, batch, gen):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C during step 3: it finishes, is saved, then stops
        return noisy_loss(model, batch, gen)

    torch.manual_seed(0)
    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN in a background job
    with pytest.raises(TrainingInterrupted, match=r"SIGINT at step 3: saved .*checkpoint.pt") as e:
        fit(Toy(), interrupted_at_3, toy_data(), cfg(steps=10), out_dir=tmp_path / "b", meta=META)
    assert isinstance(e.value, KeyboardInterrupt) and e.value.step == 3
    assert load_checkpoint(tmp_path / "b" / "checkpoint.pt")["step"] == 3 and not (tmp_path / "b" / ".lock").exists()
    assert signal.getsignal(signal.SIGINT) is before  # restored, whatever it was
    resumed = fit(Toy(), noisy_loss, toy_data(), cfg(steps=10), out_dir=tmp_path / "b", meta=META, resume=True)
    for a, b in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)


class BN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(1, 1, 3, padding=1), nn.BatchNorm2d(1)

    def forward(self, x):
        return self.bn(self.conv(x))


def test_nan_guard_checks_buffers_and_the_ema(tmp_path):
    calls = {"n": 0}

    def buffer_blows_up(model, batch, gen):
        calls["n"] += 1
        if calls["n"] == 5:  # the loss stays finite; only BatchNorm's running variance breaks
            model.bn.running_var.fill_(float("inf"))
        return noisy_loss(model, batch, gen)

    with pytest.raises(NonFiniteLossError, match=r"model's bn.running_var is not finite at step 6; kept the last good"):
        fit(BN(), buffer_blows_up, toy_data(), cfg(steps=10, ckpt_every=2), out_dir=tmp_path, meta=META)
    ck = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ck["step"] == 4 and torch.isfinite(ck["model"]["bn.running_var"]).all()
    assert all(torch.isfinite(v).all() for v in ck["ema"].values() if v.is_floating_point())


def test_metrics_log_in_step_order_and_temp_files_removed(tmp_path):
    fit(Toy(), noisy_loss, toy_data(), cfg(steps=10, log_every=1), out_dir=tmp_path, meta=META, stop_after=4)
    with (tmp_path / "metrics.jsonl").open("a") as f:  # a process killed after its checkpoint logged steps 5, 6
        f.write('{"step": 5, "loss": 1.0}\n{"step": 6, "loss": 1.0}\n{"step": 7, "lo')
    (tmp_path / "checkpoint.pt.1a2b3c4d.tmp").write_bytes(b"half a checkpoint")  # killed mid-write
    fit(Toy(), noisy_loss, toy_data(), cfg(steps=10, log_every=1), out_dir=tmp_path, meta=META, resume=True)
    import json

    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == list(range(1, 11))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "metrics.jsonl"]


def test_checkpoint_mode_follows_the_umask(tmp_path):
    import os
    import stat

    for umask, mode in ((0o022, 0o644), (0o077, 0o600)):
        old = os.umask(umask)
        try:
            save_checkpoint(tmp_path / f"c{umask}.pt", {"meta": {}, "model": {}})
        finally:
            os.umask(old)
        assert stat.S_IMODE((tmp_path / f"c{umask}.pt").stat().st_mode) == mode


def test_malicious_checkpoint_is_refused_without_suggesting_weights_only_false(tmp_path):
    import os

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"meta": {}, "model": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="arbitrary code") as e:
        load_checkpoint(tmp_path / "evil.pt")
    assert "weights_only" not in str(e.value) and "system" in str(e.value) and not marker.exists()


def test_progress_prints_plain_lines_when_not_a_terminal():
    import io

    from ldmcourse.utils import Progress

    buf = io.StringIO()  # isatty() is False, like CI logs, nohup and a notebook's captured stderr
    with Progress(200, "fit", stream=buf) as p:
        for _ in range(200):
            p.update(1, loss=0.5)
    lines = buf.getvalue().splitlines()
    assert "\r" not in buf.getvalue() and len(lines) == 20  # one line per 5 %
    assert lines[0].startswith("[fit] 10/200 (5%)") and lines[-1].startswith("[fit] 200/200 (100%)") and "loss=0.5" in lines[-1]
