"""Issue 12: no run loses work, a resume is a resume, and every value is checked where it is defined.

Each test pins the new behaviour of one of the issue's ten findings (numbered in the test names), on
smoke-sized runs through the command line (``cli.main`` in-process, or a subprocess for signals).
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ldmcourse.checkpoint import save_checkpoint
from ldmcourse.cli import main

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ["--profile", "smoke", "--device", "cpu", "--progress", "false"]


def run(argv):
    """``main``'s exit status, whether it returns it or raises SystemExit (an ``error:`` line either way)."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def train(out, *extra, model="ae"):
    return run(["train", model, "--out", str(out), *SMOKE, *extra])


def ckpt(out):
    return torch.load(Path(out) / "checkpoint.pt", weights_only=True)


def logged_steps(out):
    return [json.loads(line)["step"] for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def last_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert lines, err
    return lines[-1]


# 1. the README's NaN recovery: the run stops at the NaN keeping its last good checkpoint; a plain
#    --resume with a smaller --lr is refused (it used to be overwritten by the optimiser's state);
#    --resume --reset-optimizer --lr smaller continues with a fresh warm-up and finishes.
def test_1_nan_recovery_recipe_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    run = ["--warmup", "20", "--ckpt-every", "2", "--steps", "20", "--log-every", "1"]
    assert train(out, *run, "--lr", "1e4") == 2  # diverges within a few steps
    err = last_error(capsys)
    assert "not finite" in err and "kept the last good checkpoint" in err and "--reset-optimizer" in err
    good = ckpt(out)
    step = good["step"]
    assert 2 <= step < 20 and all(torch.isfinite(v).all() for v in good["model"].values() if v.is_floating_point())

    assert train(out, *run, "--lr", "1e-3", "--resume") == 2
    err = last_error(capsys)
    assert "lr 10000.0 -> 0.001" in err and "--reset-optimizer" in err
    assert ckpt(out)["step"] == step  # untouched

    assert train(out, *run, "--lr", "1e-3", "--resume", "--reset-optimizer") == 0
    done = ckpt(out)
    assert done["step"] == 20 and done["fit_config"]["lr"] == 1e-3  # records the lr really used
    assert done["resets"] == [{"step": step, "changed": {"lr": [1e4, 1e-3]}}]
    after = [h for h in done["history"] if h["step"] > step]
    assert after[0]["lr"] == pytest.approx(1e-3 * 2 / 20)  # warm-up restarts at this step, to the new lr
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in after)
    assert logged_steps(out) == list(range(1, 21))  # in step order, the diverged steps' lines dropped


# 2. a fresh run into a folder that holds another run is refused; --overwrite replaces it; a live
#    run's lock refuses a second run, a dead one's is taken over
def test_2_existing_run_is_not_replaced(tmp_path, capsys):
    out = tmp_path / "run"
    assert train(out, "--steps", "3") == 0
    assert run(["train", "vae", "--out", str(out), *SMOKE, "--steps", "2"]) == 2
    assert "already holds a run (a 'ae' model at step 3)" in last_error(capsys)
    assert ckpt(out)["meta"]["kind"] == "ae"
    assert run(["train", "vae", "--out", str(out), *SMOKE, "--steps", "2", "--overwrite"]) == 0
    assert ckpt(out)["meta"]["kind"] == "vae" and logged_steps(out) == [2]


def test_2_lock_refuses_a_concurrent_run_and_takes_over_a_dead_ones(tmp_path, capsys):
    import socket

    out = tmp_path / "run"
    out.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / ".lock").write_text(f"{other.pid} {socket.gethostname()}\n")
        assert train(out, "--steps", "2") == 2
        assert f"another run (pid {other.pid}" in last_error(capsys)
        assert not (out / "checkpoint.pt").exists()
        (out / ".lock").write_text(f"{other.pid} {socket.gethostname()} 1\n")  # its pid, another start time:
        assert train(out, "--steps", "2") == 0  # the pid was reused by another process, the lock is stale
        assert ckpt(out)["step"] == 2 and not (out / ".lock").exists()
    finally:
        other.kill()
        other.wait()
    (out / ".lock").write_text(f"{other.pid} {socket.gethostname()}\n")
    assert train(out, "--steps", "4", "--resume") == 0  # the owner is dead: its lock is stale
    assert ckpt(out)["step"] == 4 and not (out / ".lock").exists()


# 3. SIGTERM and Ctrl-C save the current step (the default --ckpt-every 0 used to lose everything),
#    say where, exit 128 + signal; --resume continues from there
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_3_signal_saves_the_current_step(tmp_path, capsys, sig):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen([sys.executable, "-m", "ldmcourse", "train", "ae", "--out", str(out), *SMOKE,
                          "--steps", "100000", "--log-every", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=env)
    log, deadline = out / "metrics.jsonl", time.time() + 240
    while time.time() < deadline and p.poll() is None and (not log.exists() or len(log.read_text().splitlines()) < 3):
        time.sleep(0.1)
    assert train(out, "--steps", "5", "--overwrite") == 2  # a second run on the same --out, while this one lives
    assert p.poll() is None and f"another run (pid {p.pid}" in last_error(capsys)
    p.send_signal(sig)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 128 + sig, err
    step = ckpt(out)["step"]
    assert step >= 3 and f"{signal.Signals(sig).name} at step {step}: saved {out / 'checkpoint.pt'}" in err
    assert not (out / ".lock").exists()
    assert train(out, "--steps", str(step + 2), "--log-every", "1", "--resume") == 0
    assert ckpt(out)["step"] == step + 2 and logged_steps(out) == list(range(1, step + 3))


# 4. negative clip norms and other out-of-range values are one-line errors naming the value (exit 2)
@pytest.mark.parametrize("model, flags, named", [
    ("ae", ["--grad-clip", "-1"], "grad_clip=-1.0"),
    ("ae", ["--log-every", "0"], "log_every=0"),
    ("ae", ["--lr", "0"], "lr=0.0"),
    ("ae", ["--ema-decay", "1.5"], "ema_decay=1.5"),
    ("ae", ["--warmup", "-3"], "warmup=-3"),
    ("ae", ["--latent-dim", "0"], "latent_dim=0"),
    ("ae", ["--noise-std", "-0.1"], "noise_std=-0.1"),
    ("vae", ["--beta", "-1"], "beta=-1.0"),
    ("vae", ["--kl-warmup", "-5"], "kl_warmup=-5"),
    ("nvae", ["--kl-min-coeff", "2"], "kl_min_coeff=2.0"),
    ("kl-autoencoder", ["--kl-weight", "-1"], "kl_weight=-1.0"),
    ("classifier", ["--dropout", "1"], "dropout=1.0"),
    ("ldm", ["--dropout", "1"], "dropout=1.0"),  # UNetConfig (LDMConfig's own values: DiffusionConfig, helper onehome)
])
def test_4_out_of_range_values_are_refused(tmp_path, capsys, model, flags, named):
    assert run(["train", model, "--out", str(tmp_path / "run"), *SMOKE, *flags]) == 2
    assert re.search(named, last_error(capsys))  # a regex: "." matches itself too
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_4_out_that_is_a_file(tmp_path, capsys):
    f = tmp_path / "taken"
    f.write_text("x")
    assert train(f, "--steps", "2") == 2
    assert "is a file, not a folder" in last_error(capsys)


# 5. the NaN guard checks buffers and the EMA too; a checkpoint with a NaN EMA is refused, not sampled
def test_5_nonfinite_ema_checkpoint_is_refused(tmp_path, capsys):
    out = tmp_path / "vae"
    assert train(out, "--steps", "2", model="vae") == 0
    ck = ckpt(out)
    name = next(k for k, v in ck["ema"].items() if v.is_floating_point())
    ck["ema"][name] = torch.full_like(ck["ema"][name], float("nan"))
    save_checkpoint(out / "bad.pt", ck)
    for argv in (["sample", "--ckpt", str(out / "bad.pt"), "--out", str(tmp_path / "s.png"), "--n", "4"],
                 ["eval", "--ckpt", str(out / "bad.pt"), "--metric", "elbo"]):
        assert run([*argv, "--device", "cpu"]) == 2
        assert f"EMA weights in {out / 'bad.pt'} are not finite ({name}" in last_error(capsys)
    assert not (tmp_path / "s.png").exists()


# 6. --resume compares the dataset, batch size and seed too (and names the difference)
@pytest.mark.parametrize("flags, named", [(["--dataset", "digits"], "dataset 'mnist5k' -> 'digits'"),
                                          (["--batch-size", "16"], "batch_size 32 -> 16"),
                                          (["--seed", "1"], "seed 0 -> 1")])
def test_6_resume_refuses_another_run(tmp_path, capsys, flags, named):
    out = tmp_path / "run"
    assert train(out, "--steps", "2") == 0
    assert train(out, "--steps", "4", "--resume", *flags) == 2
    assert named in last_error(capsys)
    assert ckpt(out)["step"] == 2
    assert train(out, "--steps", "4", "--resume", "--log-every", "1", "--ckpt-every", "3") == 0  # these may change
    assert ckpt(out)["step"] == 4


# 7. a latent model's first stage comes from its checkpoint, trained on the same dataset
def test_7_first_stage_is_checked(tmp_path, capsys):
    fs = tmp_path / "kl"
    assert train(fs, "--steps", "2", model="kl-autoencoder") == 0
    ldm = ["--first-stage", str(fs / "checkpoint.pt"), "--steps", "2"]
    assert train(tmp_path / "a", *ldm, "--first-stage-config", "{}", model="ldm") == 2
    assert "first_stage_config are filled in from --first-stage's checkpoint" in last_error(capsys)
    assert train(tmp_path / "b", *ldm, "--first-stage-kind", "vae", model="ldm") == 2
    assert "first_stage_kind" in last_error(capsys)
    assert train(tmp_path / "c", *ldm, "--dataset", "digits", model="ldm") == 2
    assert "trained on 'mnist5k' but this run trains on 'digits'" in last_error(capsys)


# 8. VAE and NVAE samples do not depend on the batch size; the VAE refuses --sampler/--steps
def test_8_vae_and_nvae_samples_are_independent_of_batch_size():
    from ldmcourse.autoencoders.nvae import NVAE, NVAEConfig
    from ldmcourse.autoencoders.vae import VAE, VAEConfig
    from ldmcourse.recipes import nvae, vae

    models = [(vae.sample, VAE(VAEConfig(channels=(8, 16), latent_dim=4)).eval()),
              (nvae.sample, NVAE(NVAEConfig(channels=8, expansion=2, groups_per_scale=(1, 1), latent_channels=4)).eval())]
    for sample, model in models:
        a = sample(model, {}, 6, torch.Generator().manual_seed(3), "cpu", batch_size=6)
        b = sample(model, {}, 6, torch.Generator().manual_seed(3), "cpu", batch_size=4)
        c = sample(model, {}, 6, torch.Generator().manual_seed(4), "cpu", batch_size=6)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)  # the same noise; only matmul rounding differs
        assert (a - c).abs().max() > 1e-3
        with pytest.raises(ValueError, match="--sampler ddim, --steps 50 do"):
            sample(model, {}, 2, torch.Generator(), "cpu", sampler="ddim", steps=50)


def test_8_vae_sample_cli_refuses_sampler_and_does_not_echo_it(tmp_path, capsys):
    out = tmp_path / "vae"
    assert train(out, "--steps", "2", model="vae") == 0
    base = ["sample", "--ckpt", str(out / "checkpoint.pt"), "--n", "4", "--device", "cpu", "--out", str(tmp_path / "s.png")]
    capsys.readouterr()
    assert run(base) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["n"] == 4 and result.get("sampler") is None and result.get("steps") is None
    assert run([*base, "--sampler", "ddpm", "--steps", "10"]) == 2
    assert "--sampler ddpm, --steps 10 do(es) not apply" in last_error(capsys)


# 9. negative counts are errors, not Python slices; unknown or bad eval options are refused;
#    a typo in any config-file section is named
def test_9_negative_counts_and_bad_eval_options(tmp_path, capsys):
    assert train(tmp_path / "x", "--n-train", "-5") == 2
    assert "n_train=-5" in last_error(capsys)
    out = tmp_path / "vae"
    assert train(out, "--steps", "2", model="vae") == 0
    ev = ["eval", "--ckpt", str(out / "checkpoint.pt"), "--device", "cpu"]
    for extra, named in ((["--metric", "elbo", "--n", "-5"], "--n -5"),
                         (["--metric", "nll", "--option", "k=abc"], "--option k='abc': metric 'nll' needs an integer"),
                         (["--metric", "nll", "--option", "kk=10"], "takes no option 'kk'"),
                         (["--metric", "nll", "--option", "k=0"], "k must be >= 1")):
        assert run([*ev, *extra]) == 2
        assert named in last_error(capsys)


@pytest.mark.parametrize("section, typo", [("data", "datset"), ("fit", "stepz"), ("model", "latent_dimm")])
def test_9_config_file_typo_in_every_section(tmp_path, capsys, section, typo):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"[{section}]\n{typo} = 3\n")
    assert train(tmp_path / "run", "--config", str(cfg)) == 2
    assert typo in last_error(capsys)
    cfg.write_text("[fit]\nsteps = 'abc'\n")  # a wrong type is named too
    assert train(tmp_path / "run", "--config", str(cfg)) == 2
    assert "fit: steps='abc' must be an integer" in last_error(capsys)


# 10. zero and out-of-range counts and class labels are refused where they are defined
def test_10_zero_and_out_of_range_config_values():
    from ldmcourse.classifier import ClassifierConfig
    from ldmcourse.train import FitConfig
    from ldmcourse.unet import UNetConfig

    for make, named in ((lambda: FitConfig(steps=0), "steps=0"), (lambda: FitConfig(grad_clip=0.0), "grad_clip=0.0"),
                        (lambda: FitConfig(betas=(0.9, 1.0)), "betas entry=1.0"),
                        (lambda: FitConfig(min_lr_ratio=2.0), "min_lr_ratio=2.0"),
                        (lambda: UNetConfig(num_classes=0), "num_classes=0"),
                        (lambda: UNetConfig(dropout=-0.1), "dropout=-0.1"),
                        (lambda: UNetConfig(channel_mult=(1, 0)), "channel_mult entry=0"),
                        (lambda: ClassifierConfig(num_classes=1), "num_classes=1"),
                        (lambda: FitConfig(log_every=True), "log_every=True must be an integer")):
        with pytest.raises(ValueError, match=named.replace("(", r"\(")):
            make()


# no silent wait: evaluation defaults follow the checkpoint's profile (smoke: seconds, not 13 CPU-minutes
# of k=1000 on 1,000 images), flags override them, and the long loop shows progress
def test_eval_defaults_follow_the_profile_with_progress(tmp_path, capsys):
    out = tmp_path / "nvae"
    assert train(out, model="nvae") == 0
    capsys.readouterr()
    ev = ["eval", "--ckpt", str(out / "checkpoint.pt"), "--metric", "nll", "--device", "cpu"]
    t0 = time.perf_counter()
    assert run(ev) == 0
    assert time.perf_counter() - t0 < 60
    captured = capsys.readouterr()
    result = json.loads(captured.out.strip().splitlines()[-1])
    assert (result["n"], result["k"]) == (32, 10)  # recipes.nvae.SIZES["smoke"]["eval"]["nll"]
    assert "[nll k=10] 32/32 (100%)" in captured.err and "\r" not in captured.err
    assert run([*ev, "--n", "3", "--option", "k=2"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (result["n"], result["k"]) == (3, 2)
