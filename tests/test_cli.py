"""The command line end to end on the bundled data (smoke sizes)."""

import json
import subprocess
import sys

import pytest
import torch

from ldmcourse.cli import main


def test_help_lists_commands_and_generated_flags(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert all(c in out for c in ("train", "sample", "eval"))
    with pytest.raises(SystemExit):
        main(["train", "ae", "--help"])
    out = capsys.readouterr().out
    # flags generated from FitConfig and ConvAEConfig
    assert "--lr" in out and "--batch-size" in out and "--latent-dim" in out and "--resume" in out


def test_train_eval_resume_end_to_end(tmp_path, capsys):
    out = tmp_path / "ae"
    args = ["train", "ae", "--dataset", "mnist5k", "--profile", "smoke", "--out", str(out), "--device", "cpu"]
    assert main(args + ["--steps", "6"]) == 0
    for name in ("checkpoint.pt", "metrics.json", "reconstructions.png"):
        assert (out / name).exists(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 6 and metrics["dataset"] == "mnist5k" and "recon" in metrics["eval"]

    capsys.readouterr()
    assert main(["eval", "--ckpt", str(out / "checkpoint.pt"), "--metric", "recon", "--n", "64", "--device", "cpu"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    result = json.loads(last)
    assert result["metric"] == "recon" and result["n"] == 64 and result["psnr"] > 0

    # resume continues to a larger step budget
    assert main(args + ["--steps", "9", "--resume"]) == 0
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 9


def test_config_file_and_mismatch(tmp_path, capsys):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"model": {"latent_dim": 4}, "fit": {"steps": 3}}))
    out = tmp_path / "run"
    base = ["train", "ae", "--dataset", "mnist5k", "--profile", "smoke", "--out", str(out), "--device", "cpu"]
    assert main(base + ["--config", str(cfg)]) == 0
    assert json.loads((out / "metrics.json").read_text())["model_config"]["latent_dim"] == 4
    # resuming with a different model config is refused with a message that says what the checkpoint is
    assert main(base + ["--latent-dim", "8", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "different model" in err and "'latent_dim': 4" in err


def test_bad_config_section_and_unknown_metric(tmp_path, capsys):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"optimizer": {}}))
    with pytest.raises(SystemExit, match="unknown section"):
        main(["train", "ae", "--profile", "smoke", "--out", str(tmp_path / "x"), "--config", str(cfg)])


def test_sample_refuses_autoencoder(tmp_path):
    out = tmp_path / "ae"
    assert main(["train", "ae", "--profile", "smoke", "--out", str(out), "--steps", "2", "--device", "cpu"]) == 0
    with pytest.raises(SystemExit, match="cannot sample"):
        main(["sample", "--ckpt", str(out / "checkpoint.pt"), "--out", str(tmp_path / "s.png"), "--device", "cpu"])


def test_console_script_runs():
    r = subprocess.run([sys.executable, "-m", "ldmcourse", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and "ldmcourse" in r.stdout


def test_same_seed_same_weights_whatever_the_global_generator(tmp_path):
    """`ldmcourse train` seeds the initial weights from --seed: two runs give identical checkpoints even
    when the process's global generator differs (recent PyTorch seeds it differently in every process)."""
    ckpts = []
    for i, noise_seed in enumerate((123, 456)):
        torch.manual_seed(noise_seed)
        out = tmp_path / f"run{i}"
        assert main(["train", "ae", "--profile", "smoke", "--out", str(out), "--steps", "2", "--device", "cpu",
                     "--progress", "false"]) == 0
        ckpts.append(torch.load(out / "checkpoint.pt", weights_only=True)["model"])
    for k in ckpts[0]:
        torch.testing.assert_close(ckpts[0][k], ckpts[1][k], rtol=0, atol=0, msg=k)
    torch.manual_seed(0)
    assert main(["train", "ae", "--profile", "smoke", "--out", str(tmp_path / "run2"), "--steps", "2", "--device", "cpu",
                 "--progress", "false", "--seed", "1"]) == 0
    other = torch.load(tmp_path / "run2" / "checkpoint.pt", weights_only=True)["model"]
    assert any(not torch.equal(other[k], ckpts[0][k]) for k in other)
