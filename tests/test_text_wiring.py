"""Text conditioning wired into the ldm recipe and the CLI (issue 17): `train ldm --text --backbone unet|dit`,
`sample --prompt`, `eval --metric adherence`, the zoo's text entries; with --text off nothing changes."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from ldmcourse import zoo
from ldmcourse.cli import build_parser, load_model, main
from ldmcourse.text import TextConditioned

COMMON = ["--profile", "smoke", "--n-train", "64", "--steps", "3", "--progress", "false", "--device", "cpu"]


@pytest.fixture(scope="module")
def zoo_root(tmp_path_factory):
    """A fresh zoo whose smoke first stage trains in 4 steps (shared by this module's runs)."""
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("zoo")
    mp.setenv("LDMCOURSE_ZOO", str(root))
    kl = zoo.ENTRIES["kl-f4-mnist5k"]
    mp.setitem(zoo.ENTRIES, kl.name, dataclasses.replace(kl, fit=dict(steps=4, log_every=2)))
    yield root
    mp.undo()


@pytest.fixture(scope="module")
def text_runs(zoo_root, tmp_path_factory):
    """`ldmcourse train ldm --text --backbone B` for both backbones, on the zoo's (smoke) first stage."""
    out = {}
    for backbone in ("unet", "dit"):
        d = tmp_path_factory.mktemp(f"text-{backbone}")
        assert main(["train", "ldm", "--text", "--backbone", backbone, "--out", str(d), *COMMON]) == 0
        out[backbone] = d
    return out


@pytest.mark.parametrize("backbone", ["unet", "dit"])
def test_train_text_then_sample_a_prompt(text_runs, backbone, tmp_path):
    d = text_runs[backbone]
    model, meta, _ = load_model(d / "checkpoint.pt", torch.device("cpu"))
    cfg = meta["model_config"]
    assert cfg["text"] is True and cfg["backbone"] == backbone and cfg["num_classes"] is None  # the caption has the class
    assert cfg["first_stage"] == str(zoo.resolve(zoo.first_stage_entry("mnist5k"), "smoke").checkpoint)
    assert isinstance(model.unet, TextConditioned) and type(model.unet.backbone).__name__ == {"unet": "UNet", "dit": "DiT"}[backbone]
    assert (d / "prompts.png").exists()
    metrics = json.loads((d / "metrics.json").read_text())
    assert metrics["steps"] == 3 and 0 < metrics["eval"]["test_loss"]["test_loss"] < 10  # test loss on captioned digits
    png = tmp_path / "three.png"
    args = ["sample", "--ckpt", str(d / "checkpoint.pt"), "--n", "4", "--steps", "2", "--device", "cpu"]
    assert main([*args, "--prompt", "a thin three", "--guidance", "2", "--out", str(png)]) == 0
    assert png.exists() and png.stat().st_size > 0
    # the CLI draws exactly what the recipe's sample draws for that prompt (same seed), and the prompt matters
    from ldmcourse.recipes.ldm import sample

    kw = dict(steps=2, guidance=2.0)
    a = sample(model, meta, 4, torch.Generator().manual_seed(0), "cpu", prompt="a thin three", **kw)
    b = sample(model, meta, 4, torch.Generator().manual_seed(0), "cpu", prompt="a thin three", **kw)
    c = sample(model, meta, 4, torch.Generator().manual_seed(0), "cpu", prompt="a bold seven", **kw)
    assert a.shape == (4, 1, 32, 32) and torch.equal(a, b) and not torch.equal(a, c)


def test_unknown_word_lists_the_vocabulary_and_class_flags_are_refused(text_runs, tmp_path, capsys):
    ckpt = str(text_runs["unet"] / "checkpoint.pt")
    args = ["sample", "--ckpt", ckpt, "--n", "2", "--steps", "2", "--device", "cpu", "--out", str(tmp_path / "x.png")]
    capsys.readouterr()
    assert main([*args, "--prompt", "a purple three"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and "'purple'" in err
    for word in ("thin", "bold", "narrow", "wide", "slanted", "left", "right", "three", "nine"):
        assert word in err.split("Use only:")[1]
    assert not (tmp_path / "x.png").exists()
    assert main([*args, "--class", "3"]) == 2  # a text model takes --prompt, not --class
    assert "not --class" in capsys.readouterr().err
    assert main([*args, "--class", "3", "--prompt", "a three"]) == 2  # both: refused by the options
    assert "not both" in capsys.readouterr().err


def test_prompt_on_a_class_conditional_model_is_refused(tmp_path, capsys):
    d = tmp_path / "cc"
    assert main(["train", "ldm", "--first-stage", "none", "--num-classes", "10", "--p-uncond", "0.1", "--out", str(d),
                 *COMMON]) == 0
    capsys.readouterr()
    assert main(["sample", "--ckpt", str(d / "checkpoint.pt"), "--prompt", "a thin three", "--n", "2", "--steps", "2",
                 "--device", "cpu", "--out", str(tmp_path / "s.png")]) == 2
    err = capsys.readouterr().err
    assert "not text-conditioned" in err and "--text" in err and "--class" in err
    assert not (tmp_path / "s.png").exists()


def test_prompt_on_a_model_without_text_recipe_is_refused(tmp_path):
    d = tmp_path / "ddpm"
    assert main(["train", "ddpm", "--out", str(d), *COMMON]) == 0
    assert main(["sample", "--ckpt", str(d / "checkpoint.pt"), "--prompt", "a three", "--n", "2", "--steps", "2",
                 "--device", "cpu", "--out", str(tmp_path / "s.png")]) == 2


def test_text_refuses_other_datasets_before_any_training(zoo_root, tmp_path, capsys):
    before = sorted(p.name for p in zoo_root.iterdir()) if zoo_root.exists() else []
    assert main(["train", "ldm", "--text", "--dataset", "digits", "--out", str(tmp_path / "d"), *COMMON]) == 2
    err = capsys.readouterr().err
    assert "mnist5k" in err and "digits" in err
    assert (sorted(p.name for p in zoo_root.iterdir()) if zoo_root.exists() else []) == before  # no first stage trained
    assert main(["train", "ldm", "--backbone", "dit", "--first-stage", "none", "--out", str(tmp_path / "e"), *COMMON]) == 2
    assert "add --text" in capsys.readouterr().err


def test_bool_flags_bare_or_with_a_value():
    def parse(*extra):
        argv = ["train", "ldm", "--out", "x", *extra]
        return build_parser(argv).parse_args(argv)

    assert parse("--text").model__text is True
    assert parse("--text", "--backbone", "dit").model__backbone == "dit"
    assert parse("--text", "true").model__text is True and parse("--text", "false").model__text is False
    assert parse("--progress", "false").fit__progress is False and parse("--progress").fit__progress is True
    assert not hasattr(parse(), "model__text")  # not given: the profile / defaults decide
    with pytest.raises(SystemExit):
        parse("--text", "maybe")


def test_text_off_builds_the_same_unet_and_loss():
    """With --text off the ldm recipe builds the same U-Net (same parameters, same order, same values for the
    same seed) and the same loss as before text existed."""
    from ldmcourse.latent import latent_diffusion_loss
    from ldmcourse.recipes import get_recipe
    from ldmcourse.unet import UNet, UNetConfig

    recipe = get_recipe("ldm")
    small = dict(base_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention=(), num_classes=10)
    cfg = recipe.config({"first_stage": "none", "p_uncond": 0.1, **small})
    torch.manual_seed(3)
    model = recipe.build(cfg)
    torch.manual_seed(3)
    ref = UNet(UNetConfig(in_channels=1, **small))
    got, want = list(model.unet.state_dict().items()), list(ref.state_dict().items())
    assert [k for k, _ in got] == [k for k, _ in want]
    for (k, v), (_, w) in zip(got, want):
        assert torch.equal(v, w), k
    x, y = torch.randn(4, 1, 32, 32), torch.tensor([0, 1, 2, 3])
    ref_loss = latent_diffusion_loss(**cfg.loss_kwargs())(model, (x, y), torch.Generator().manual_seed(1))[0]
    new_loss = recipe.loss(cfg)(model, (x, y), torch.Generator().manual_seed(1))[0]
    assert torch.equal(ref_loss, new_loss)
    assert recipe.training_data(cfg, "images") == "images"  # the data set is passed through untouched


def test_zoo_text_entries_are_notebook12s_equal_parameter_configs():
    from ldmcourse.recipes import get_recipe
    from ldmcourse.text_ldm import TextOptions, build_backbone, count_parameters, notebook12_configs

    nb = notebook12_configs()
    recipe = get_recipe("ldm")
    for name, backbone in (("text-ldm-mnist5k", "unet"), ("text-dit-mnist5k", "dit")):
        r = zoo.resolve(name, "cpu")
        assert r.model["text"] is True and r.model["backbone"] == backbone and r.model["num_classes"] is None
        assert r.first_stage.dir == zoo.resolve("ldm-mnist5k", "cpu").first_stage.dir  # the same first stage
        cfg = recipe.config(r.model)
        assert dataclasses.asdict(cfg.text_config()) == nb["text"]
        if backbone == "unet":
            assert {k: r.model[k] for k in nb["unet"]} == {k: v for k, v in nb["unet"].items()}
        else:
            assert {k: r.model["dit_" + k] for k in nb["dit"]} == nb["dit"]
    from ldmcourse.unet import UNetConfig

    opts = recipe.config(zoo.resolve("text-dit-mnist5k", "cpu").model)
    unet = recipe.config(zoo.resolve("text-ldm-mnist5k", "cpu").model)
    n_unet = count_parameters(build_backbone("unet", 4, 64, unet=UNetConfig(**{k: getattr(unet, k) for k in nb["unet"]})))
    n_dit = count_parameters(build_backbone("dit", 4, 64, dit=TextOptions.dit_config(opts)))
    assert abs(n_dit / n_unet - 1) <= 0.10


def test_text_entries_take_their_cpu_steps_only_in_the_cpu_profile():
    """Equal training time: the cpu profile's steps of each backbone come from zoo.TEXT_STEPS (and reach the
    `ldmcourse train` command); other profiles keep the recipe's steps."""
    from ldmcourse.recipes import get_recipe

    for name, backbone in (("text-ldm-mnist5k", "unet"), ("text-dit-mnist5k", "dit")):
        cpu = zoo.resolve(name, "cpu")
        assert cpu.fit["steps"] == zoo.TEXT_STEPS[backbone]
        argv = cpu.train_argv()
        assert argv[argv.index("--steps") + 1] == str(zoo.TEXT_STEPS[backbone])
        smoke = zoo.resolve(name, "smoke")
        assert smoke.fit["steps"] == get_recipe("ldm").sizes["smoke"]["fit"]["steps"] and "--steps" not in smoke.train_argv()


def test_adherence_metric_scores_every_eval_prompt(text_runs, tmp_path, capsys):
    clf = tmp_path / "clf"
    assert main(["train", "classifier", "--out", str(clf), *COMMON]) == 0
    capsys.readouterr()
    ckpt = str(text_runs["dit"] / "checkpoint.pt")
    assert main(["eval", "--ckpt", ckpt, "--metric", "adherence", "--n", "60", "--device", "cpu",
                 "--option", f"classifier={clf / 'checkpoint.pt'}", "--option", "steps=2"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["n"] == 60 and res["repeats"] == 1 and res["guidance"] == 3.0
    # 60 prompts: every one names a class, each attribute pair (thin/bold, narrow/wide, left/right) 20 of them
    assert {a: v["n"] for a, v in res["adherence"].items()} == {"class": 60, "thickness": 20, "width": 20, "slant": 20}
    assert all(0 <= v["rate"] <= 1 and v["ci95"][0] <= v["rate"] <= v["ci95"][1] for v in res["adherence"].values())
    assert res["n_ceiling"] == 60 and set(res["ceiling"]) == {"class", "thickness", "width", "slant"}
    assert res["ceiling"]["class"]["n"] == 60
    assert main(["eval", "--ckpt", ckpt, "--metric", "adherence", "--n", "60", "--device", "cpu", "--option",
                 f"classifier={clf / 'checkpoint.pt'}", "--option", "colour=1"]) == 2  # other options go to the sampler
    assert "colour" in capsys.readouterr().err


def test_zoo_key_ignores_the_text_fields_only_while_text_is_off():
    """Text fields cannot change a text-off model's weights: they stay out of its key (the entries trained
    before text existed keep theirs); on a text entry they are part of it."""
    base = zoo.entry("ldm-mnist5k")
    key = zoo.resolve(base, "cpu").key
    assert zoo.resolve(dataclasses.replace(base, model={**base.model, "text_dim": 128, "p_attr": 0.2}), "cpu").key == key
    assert zoo.resolve(dataclasses.replace(base, model={**base.model, "base_channels": 48}), "cpu").key != key
    text = zoo.entry("text-ldm-mnist5k")
    tkey = zoo.resolve(text, "cpu").key
    assert tkey != key
    assert zoo.resolve(dataclasses.replace(text, model={**text.model, "text_dim": 32}), "cpu").key != tkey
