"""The model zoo (ldmcourse.zoo): trains on first use, reuses, keys by config, resumes, names corrupt files."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from ldmcourse import zoo
from ldmcourse.cli import main

TINY = zoo.Entry("tiny-clf", "classifier", "mnist5k", "a 6-step classifier for the tests", fit=dict(steps=6, log_every=2))


@pytest.fixture
def zroot(tmp_path, monkeypatch):
    """An empty zoo root with the tiny entry registered and a 4-step smoke first stage."""
    monkeypatch.setenv("LDMCOURSE_ZOO", str(tmp_path / "zoo"))
    monkeypatch.setitem(zoo.ENTRIES, TINY.name, TINY)
    kl = zoo.ENTRIES["kl-f4-mnist5k"]
    monkeypatch.setitem(zoo.ENTRIES, kl.name, dataclasses.replace(kl, fit=dict(steps=4, log_every=2)))
    return tmp_path / "zoo"


def _interrupt_after(monkeypatch, k: int, calls: int = 1):
    """The next ``calls`` fit() calls save a checkpoint after ``k`` steps and then raise KeyboardInterrupt (Ctrl-C)."""
    import ldmcourse.train as train_mod

    real, left = train_mod.fit, [calls]

    def fit(*a, **kw):
        if left[0] <= 0:
            return real(*a, **kw)
        left[0] -= 1
        real(*a, **{**kw, "stop_after": k})
        raise KeyboardInterrupt

    monkeypatch.setattr(train_mod, "fit", fit)


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_get_trains_then_reuses(zroot):
    m1 = zoo.get("tiny-clf", profile="smoke", verbose=False)
    r = zoo.resolve("tiny-clf", "smoke")
    assert r.dir.parent == zroot and r.dir.name == f"tiny-clf-smoke-{r.key}"
    rec = zoo.record(r)
    assert rec["complete"] and rec["steps"] == 6 and len(rec["sessions"]) == 1
    assert rec["command"] == "ldmcourse zoo train tiny-clf --profile smoke"
    assert rec["train_command"].startswith("ldmcourse train classifier --dataset mnist5k --profile smoke")
    assert rec["machine"]["cpu_count"] and rec["train_seconds"] > 0
    # the checkpoint itself says how it was made
    meta = torch.load(r.checkpoint, weights_only=True)["meta"]
    assert meta["zoo"]["command"] == rec["command"] and meta["zoo"]["steps"] == 6
    mtime = r.checkpoint.stat().st_mtime_ns
    m2 = zoo.get("tiny-clf", profile="smoke", verbose=False)  # reused: no training, same weights
    assert r.checkpoint.stat().st_mtime_ns == mtime and len(zoo.record(r)["sessions"]) == 1
    w1, w2 = _weights(m1), _weights(m2)
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    assert m2.zoo["key"] == r.key


def test_changed_definition_gets_a_new_key(zroot, monkeypatch):
    from ldmcourse.recipes import get_recipe

    a = zoo.resolve("tiny-clf", "smoke")
    assert zoo.resolve("tiny-clf", "smoke").key == a.key  # deterministic
    changed = dataclasses.replace(TINY, fit=dict(steps=6, log_every=2, lr=1e-3))
    assert zoo.resolve(changed, "smoke").key != a.key
    assert zoo.resolve(dataclasses.replace(TINY, model=dict(channels=(8, 16, 16))), "smoke").key != a.key
    assert zoo.resolve("tiny-clf", "cpu").key != a.key
    # a changed recipe sizes table (not the entry) also changes the key
    recipe = get_recipe("classifier")
    sizes = {**recipe.sizes, "smoke": {**recipe.sizes["smoke"], "model": dict(channels=(8, 16, 24))}}
    monkeypatch.setattr(recipe, "sizes", sizes)
    assert zoo.resolve("tiny-clf", "smoke").key != a.key
    monkeypatch.undo()
    # an ldm entry's key follows its first stage's definition
    ldm = zoo.resolve("ldm-mnist5k", "smoke")
    monkeypatch.setitem(zoo.ENTRIES, "kl-f4-mnist5k", dataclasses.replace(zoo.ENTRIES["kl-f4-mnist5k"], fit=dict(steps=5)))
    assert zoo.resolve("ldm-mnist5k", "smoke").key != ldm.key


def test_unknown_name_lists_known_ones(zroot, capsys):
    with pytest.raises(KeyError) as e:
        zoo.get("no-such-model", profile="smoke")
    for name in ("kl-f4-mnist5k", "ldm-mnist5k", "pixel-mnist5k", "ddpm-fashion-mnist", "classifier-mnist5k"):
        assert name in str(e.value)
    assert main(["zoo", "train", "no-such-model", "--profile", "smoke"]) == 2
    assert "known entries" in capsys.readouterr().err


def test_half_trained_entry_resumes(zroot, monkeypatch):
    _interrupt_after(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        zoo.train("tiny-clf", "smoke")
    r = zoo.resolve("tiny-clf", "smoke")
    assert zoo.status(r) == "half-trained" and not zoo.record(r)["complete"]
    resumed = zoo.get("tiny-clf", profile="smoke", verbose=False)
    rec = zoo.record(r)
    assert rec["complete"] and rec["steps"] == 6
    assert [s["from_step"] for s in rec["sessions"]] == [0, 3]
    assert rec["wall_seconds"] == pytest.approx(sum(s["seconds"] for s in rec["sessions"]), abs=0.02)
    # resuming is exact: the same weights as one uninterrupted run
    monkeypatch.setenv("LDMCOURSE_ZOO", str(zroot.parent / "straight"))
    straight = zoo.get("tiny-clf", profile="smoke", verbose=False)
    w1, w2 = _weights(resumed), _weights(straight)
    assert all(torch.equal(w1[k], w2[k]) for k in w1)


def test_corrupt_cache_names_the_rebuild_command(zroot):
    from ldmcourse.checkpoint import CheckpointError

    r = zoo.train("tiny-clf", "smoke")
    r.checkpoint.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError) as e:
        zoo.get("tiny-clf", profile="smoke", verbose=False)
    assert str(r.checkpoint) in str(e.value) and "ldmcourse zoo train tiny-clf --profile smoke --rebuild" in str(e.value)
    assert main(["zoo", "train", "tiny-clf", "--profile", "smoke", "--rebuild"]) == 0
    assert zoo.record(r)["complete"] and len(zoo.record(r)["sessions"]) == 1
    zoo.get("tiny-clf", profile="smoke", verbose=False)


def test_cli_zoo_list_train_round_trip(zroot, capsys):
    def listed():
        assert main(["zoo", "list", "--profile", "smoke", "--json"]) == 0
        return {r["name"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}

    before = listed()
    assert set(zoo.ENTRIES) == set(before) and before["tiny-clf"]["status"] == "missing"
    assert main(["zoo", "train", "tiny-clf", "--profile", "smoke"]) == 0
    capsys.readouterr()
    after = listed()
    assert after["tiny-clf"]["status"] == "trained" and after["tiny-clf"]["steps"] == 6
    assert after["classifier-mnist5k"]["status"] == "missing"


def test_train_ldm_first_stage_auto_and_resume(zroot, tmp_path, monkeypatch):
    """`train ldm` (default --first-stage auto) trains the zoo's first stage, then the U-Net; --resume resumes
    whichever stage was interrupted."""
    from ldmcourse.checkpoint import load_checkpoint

    out = tmp_path / "ldm"
    cmd = ["train", "ldm", "--profile", "smoke", "--out", str(out), "--steps", "4", "--num-classes", "10"]
    _interrupt_after(monkeypatch, 2)  # Ctrl-C in the first stage
    assert main(cmd) == 130
    fs = zoo.resolve(zoo.first_stage_entry("mnist5k"), "smoke")
    assert zoo.status(fs) == "half-trained" and not (out / "checkpoint.pt").exists()
    assert main(cmd + ["--resume"]) == 0  # first stage resumed at step 2, the U-Net from 0
    assert [s["from_step"] for s in zoo.record(fs)["sessions"]] == [0, 2]
    ck = load_checkpoint(out / "checkpoint.pt")
    assert ck["meta"]["model_config"]["first_stage"] == str(fs.checkpoint) and ck["step"] == 4
    assert (out / "samples.png").exists()
    # now interrupt the U-Net: --resume continues it, the first stage is reused untouched
    out2 = tmp_path / "ldm2"
    cmd2 = [*cmd[:5], str(out2), *cmd[6:]]
    _interrupt_after(monkeypatch, 2)
    assert main(cmd2) == 130
    assert load_checkpoint(out2 / "checkpoint.pt")["step"] == 2
    assert main(cmd2 + ["--resume"]) == 0
    assert load_checkpoint(out2 / "checkpoint.pt")["step"] == 4
    assert len(zoo.record(fs)["sessions"]) == 2
    # and the zoo's own ldm entry uses the same first stage
    assert zoo.resolve("ldm-mnist5k", "smoke").first_stage.dir == fs.dir


def test_fid_metric_falls_back_to_the_zoo_classifier(zroot, tmp_path, monkeypatch):
    from ldmcourse.data import load_dataset
    from ldmcourse.recipes import get_recipe
    from ldmcourse.recipes.classifier import fid_metric

    monkeypatch.chdir(tmp_path)  # no runs/classifier-mnist5k here
    monkeypatch.setitem(zoo.ENTRIES, "classifier-mnist5k", dataclasses.replace(TINY, name="classifier-mnist5k"))
    vae = get_recipe("vae")
    cfg = vae.model_config()
    meta = {"kind": "vae", "model_config": dataclasses.asdict(cfg), "dataset": "mnist5k", "image_shape": [1, 32, 32],
            "profile": "smoke"}
    test = load_dataset("mnist5k", "test").subset(16)
    with pytest.raises(FileNotFoundError, match="ldmcourse zoo train classifier-mnist5k"):
        fid_metric(vae.build(cfg).eval(), meta, test, "cpu", {"n_boot": 2})
    r = zoo.train("classifier-mnist5k", "smoke")
    rep = fid_metric(vae.build(cfg).eval(), meta, test, "cpu", {"n_boot": 2})
    assert rep["classifier"] == str(r.checkpoint)


def test_latent_flow_entry_matches_ldm_and_trains(zroot):
    """rf-mnist5k: the same first stage, U-Net and budget as ldm-mnist5k at every profile; zoo.train of it
    (smoke) trains the zoo's first stage, then a velocity U-Net on its latents that samples decoded images."""
    from ldmcourse.recipes.flow import sample
    from ldmcourse.unet import UNetConfig

    unet = [f.name for f in dataclasses.fields(UNetConfig) if f.name != "in_channels"]
    for profile in ("smoke", "cpu", "gpu"):
        rf, ldm = zoo.resolve("rf-mnist5k", profile), zoo.resolve("ldm-mnist5k", profile)
        assert rf.first_stage.dir == ldm.first_stage.dir and rf.data == ldm.data
        assert {k: rf.model[k] for k in unet} == {k: ldm.model[k] for k in unet}, profile
        assert rf.fit == ldm.fit, profile
    assert zoo.resolve("fm-vp-mnist5k", "cpu").model["path"] == "vp" and zoo.resolve("fm-vp-mnist5k", "cpu").key != rf.key
    r = zoo.train("rf-mnist5k", profile="smoke", verbose=False)
    assert zoo.status(r) == "trained" and zoo.status(r.first_stage) == "trained"
    ck = torch.load(r.checkpoint, weights_only=True)
    assert ck["meta"]["kind"] == "flow" and ck["step"] == 20
    assert ck["meta"]["model_config"]["first_stage"] == str(r.first_stage.checkpoint)
    model = zoo.get("rf-mnist5k", profile="smoke", verbose=False)
    assert tuple(model.latent_shape) == (4, 8, 8)  # the f=4 first stage's latents, not pixels
    x = sample(model, ck["meta"], 2, torch.Generator().manual_seed(0), "cpu", sampler="heun", steps=2, y=3, guidance=2.0)
    assert x.shape == (2, 1, 32, 32) and bool(torch.isfinite(x).all()) and float(x.abs().max()) <= 1


@pytest.mark.timeout(240)
def test_reflow_entries_train_their_zoo_teachers_first(zroot, monkeypatch):
    """rf2-mnist5k / rf2-1step-mnist5k: ``reflow_from="zoo:NAME"`` is that entry at the same profile, trained first,
    its folder in the student's key (a changed teacher retrains the students), its checkpoint the student's --reflow-from."""
    rf2, one = zoo.resolve("rf2-mnist5k", "smoke"), zoo.resolve("rf2-1step-mnist5k", "smoke")
    assert rf2.teacher.dir == zoo.resolve("rf-mnist5k", "smoke").dir and one.teacher.dir == rf2.dir
    assert zoo.resolve("rf2-mnist5k", "cpu").model["reflow_pairs"] >= 10_000  # issue 16: >= 10,000 pairs
    argv = zoo.train_argv(one)
    assert argv[argv.index("--reflow-from") + 1] == str(rf2.checkpoint) and "--one-step" in argv
    assert zoo.resolve("rf-mnist5k", "smoke").teacher is None
    monkeypatch.setitem(zoo.ENTRIES, "rf-mnist5k", dataclasses.replace(zoo.ENTRIES["rf-mnist5k"], fit=dict(steps=5)))
    assert zoo.resolve("rf2-mnist5k", "smoke").key != rf2.key and zoo.resolve("rf2-1step-mnist5k", "smoke").key != one.key
    monkeypatch.undo()
    monkeypatch.setenv("LDMCOURSE_ZOO", str(zroot))
    kl = zoo.ENTRIES["kl-f4-mnist5k"]
    monkeypatch.setitem(zoo.ENTRIES, kl.name, dataclasses.replace(kl, fit=dict(steps=4, log_every=2)))
    one = zoo.resolve("rf2-1step-mnist5k", "smoke")
    zoo.train("rf2-1step-mnist5k", "smoke", verbose=False)  # trains kl-f4, rf, rf2, then the one-step model
    for r in (one, one.teacher, one.teacher.teacher):
        assert zoo.status(r) == "trained"
    ck = torch.load(one.checkpoint, weights_only=True)
    cfg = ck["meta"]["model_config"]
    assert cfg["one_step"] and cfg["reflow_from"] == str(one.teacher.checkpoint) and cfg["path"] == "linear"
    assert zoo.record(one)["teacher"] == one.teacher.dir.name
    assert cfg["reflow_guidance"] == 1.0
    assert torch.load(one.teacher.checkpoint, weights_only=True)["meta"]["model_config"]["reflow_guidance"] == 3.0


@pytest.mark.timeout(240)
def test_train_flow_reflow_from_a_zoo_entry_on_the_command_line(zroot, tmp_path, capsys):
    """``ldmcourse train flow --reflow-from zoo:rf-mnist5k``: the teacher entry is reused or trained (here trained,
    after its first stage), and the student's checkpoint records the teacher's checkpoint, not the zoo: name."""
    out = tmp_path / "rf2-cli"
    assert main(["train", "flow", "--profile", "smoke", "--reflow-from", "zoo:rf-mnist5k", "--reflow-pairs", "16",
                 "--reflow-ode-steps", "2", "--steps", "3", "--out", str(out)]) == 0
    teacher = zoo.resolve("rf-mnist5k", "smoke")
    assert zoo.status(teacher) == "trained" and "[zoo] rf-mnist5k" in capsys.readouterr().out
    cfg = torch.load(out / "checkpoint.pt", weights_only=True)["meta"]["model_config"]
    assert cfg["reflow_from"] == str(teacher.checkpoint)
    with pytest.raises(ValueError, match="must be a flow entry"):
        zoo.resolve_teacher(type("C", (), {"reflow_from": "zoo:kl-f4-mnist5k"})(), "smoke", "cpu")
    with pytest.raises(zoo.ZooError, match="known entries"):
        zoo.resolve_teacher(type("C", (), {"reflow_from": "zoo:no-such"})(), "smoke", "cpu")
