"""Caption adherence, FID and speed of the zoo's text-conditioned latent U-Net and DiT (issue 17's targets).

    flock /work/notes/cpu.lock env OMP_NUM_THREADS=2 LDMCOURSE_PROFILE=cpu \
        python benchmarks/text_adherence.py --profile cpu --out benchmarks/results/text_adherence_cpu.json

For each zoo entry (default: ``text-ldm-mnist5k`` and ``text-dit-mnist5k``, trained on first use):

1. **ceiling**: the adherence of the first stage's reconstructions of the real test digits to their own
   captions (``text_ldm.ceiling_adherence``), per attribute, and the same on the digits whose own bin is
   an extreme one (the bins the evaluation prompts ask for);
2. **selection** on seed ``--select-seed``: ``--repeats`` samples of each of the 60 fixed evaluation
   prompts (``text_ldm.EVAL_PROMPTS``) at every ``--guidance`` scale; the chosen scale is the smallest that
   meets every target, else the one closest to them (``text_ldm.choose_guidance``);
3. **fresh samples** on seed ``--seed`` at the chosen scale: the class (course classifier) and each
   attribute (caption measures) with Wilson 95 % intervals, against the targets (class >= 90 %, each
   attribute within 10 points of its ceiling);
4. **FID** of ``--fid-n`` samples of the class-only prompts ("a zero" ... "a nine", balanced) at the chosen
   scale against the test digits, on the course classifier's features, with its bootstrap interval and
   the real-vs-real floor at the same n; **samples/s** of that run (DDIM ``--steps``, guidance, decoding
   included, batches of one prompt).

Prints one JSON line per step and the whole result last; ``--out`` writes it too.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from ldmcourse import zoo
from ldmcourse.captions import CLASS_WORDS
from ldmcourse.data import load_dataset
from ldmcourse.metrics import extract_features, fid_report
from ldmcourse.recipes import get_recipe
from ldmcourse.text_ldm import (CLASS_TARGET, EVAL_PROMPTS, WITHIN, ceiling_adherence, choose_guidance, count_parameters,
                                evaluate_prompts, sample_prompts, target_margin, target_table)


def _short(adh: dict) -> dict:
    return {a: round(r["rate"], 4) for a, r in adh.items()}


def _ldavg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def run_entry(name: str, args, classify, f_test, f_floor, test, device) -> dict:
    model = zoo.get(name, profile=args.profile, device=device, verbose=False).eval()
    rec, meta = model.zoo, model.meta
    cfg = get_recipe("ldm").config(meta["model_config"])
    sched = cfg.make_schedule()
    net = model.unet
    row = {"entry": name, "backbone": cfg.backbone, "backbone_params": count_parameters(net.backbone),
           "text_encoder_params": count_parameters(net.encoder),
           "train": {k: rec.get(k) for k in ("steps", "train_seconds", "wall_seconds", "command", "train_command")},
           "train_loadavg": [s.get("loadavg") for s in rec.get("sessions", [])],
           "fit": {k: rec["config"]["fit"][k] for k in ("steps", "batch_size", "lr", "warmup", "ema_decay")},
           "p_uncond": cfg.p_uncond, "p_attr": cfg.p_attr, "p_class": cfg.p_class}
    ceiling = ceiling_adherence(model, test, classify=classify)
    ceiling_ext = ceiling_adherence(model, test, classify=classify, extremes=True)
    row["ceiling"], row["ceiling_extremes"] = ceiling, ceiling_ext
    print(json.dumps({"entry": name, "ceiling": _short(ceiling), "ceiling_extremes": _short(ceiling_ext)}), flush=True)

    prompts = [p for p in EVAL_PROMPTS for _ in range(args.repeats)]
    kw = dict(steps=args.steps, device=device, prediction=cfg.prediction)
    selection = {}
    for s in args.guidance:
        ev = evaluate_prompts(model, sched, prompts, classify, s, torch.Generator(device=device).manual_seed(args.select_seed), **kw)
        selection[s] = ev["adherence"]
        print(json.dumps({"entry": name, "select_seed": args.select_seed, "guidance": s, "n": ev["n"],
                          "adherence": _short(ev["adherence"]), "margin": round(target_margin(ev["adherence"], ceiling), 4),
                          "seconds": round(ev["seconds"], 1), "loadavg": _ldavg()}), flush=True)
    chosen = choose_guidance(selection, ceiling, CLASS_TARGET, WITHIN)
    row["selection"] = {"seed": args.select_seed, "n": len(prompts), "rows": {str(s): a for s, a in selection.items()},
                        "margins": {str(s): target_margin(a, ceiling) for s, a in selection.items()}, "chosen": chosen}

    ev = evaluate_prompts(model, sched, prompts, classify, chosen, torch.Generator(device=device).manual_seed(args.seed), **kw)
    row["fresh"] = {"seed": args.seed, "guidance": chosen, "n": ev["n"], "adherence": ev["adherence"],
                    "targets": target_table(ev["adherence"], ceiling),
                    "targets_vs_extremes_ceiling": target_table(ev["adherence"], ceiling_ext),
                    "seconds": ev["seconds"], "loadavg": _ldavg()}
    row["fresh"]["all_met"] = all(r["met"] for r in row["fresh"]["targets"].values())
    print(json.dumps({"entry": name, "fresh_seed": args.seed, "guidance": chosen, "n": ev["n"],
                      "adherence": _short(ev["adherence"]), "all_met": row["fresh"]["all_met"]}), flush=True)

    fid_prompts = [f"a {k}" for k in CLASS_WORDS for _ in range(args.fid_n // len(CLASS_WORDS))]
    g = torch.Generator(device=device).manual_seed(args.seed + 1000)
    t0 = time.perf_counter()
    x = sample_prompts(model, fid_prompts, sched, steps=args.steps, guidance=chosen, generator=g, device=device,
                       prediction=cfg.prediction).clamp(-1, 1).cpu()
    secs = time.perf_counter() - t0
    rep = fid_report(extract_features(classify.net, x, device=device), f_test, f_floor, seed=args.seed)
    row["fid"] = {k: rep[k] for k in ("fid", "fid_ci95", "fid_floor", "kid", "kid_floor", "n_gen", "n_real")}
    row["fid"].update(prompts="class only, balanced", guidance=chosen, seed=args.seed + 1000)
    row["samples_per_s"] = len(x) / secs
    row["sampling"] = {"n": len(x), "seconds": secs, "batch": "one prompt at a time", "steps": args.steps, "sampler": "ddim",
                       "loadavg": _ldavg(), "torch_threads": torch.get_num_threads()}
    print(json.dumps({"entry": name, "fid": round(rep["fid"], 3), "fid_ci95": rep["fid_ci95"],
                      "fid_floor": round(rep["fid_floor"], 3), "samples_per_s": round(row["samples_per_s"], 1),
                      "loadavg": _ldavg()}), flush=True)
    return row


class Classify:
    """The course classifier as ``classify(images) -> labels`` (``.net`` for its features)."""

    def __init__(self, net, device):
        self.net, self.device = net.eval(), device

    @torch.no_grad()
    def __call__(self, images):
        return torch.cat([self.net(images[a:a + 500].to(self.device)).argmax(1).cpu() for a in range(0, len(images), 500)])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--entries", nargs="+", default=["text-ldm-mnist5k", "text-dit-mnist5k"])
    p.add_argument("--profile", default=None)
    p.add_argument("--guidance", type=float, nargs="+", default=[1.0, 2.0, 3.0, 4.0, 6.0])
    p.add_argument("--repeats", type=int, default=10, help="samples per evaluation prompt (60 prompts)")
    p.add_argument("--select-seed", type=int, default=1)
    p.add_argument("--seed", type=int, default=2)
    p.add_argument("--fid-n", type=int, default=500)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    device = torch.device(args.device)
    t_all = time.perf_counter()

    clf = zoo.get("classifier-mnist5k", profile=args.profile, device=device, verbose=False)
    classify = Classify(clf, device)
    test = load_dataset("mnist5k", "test", size=32)
    x_test, y_test = test.tensors()
    train = load_dataset("mnist5k", "train", size=32)
    x_floor, _ = train.subset(min(args.fid_n, len(train)), torch.Generator().manual_seed(0)).tensors()
    f_test, f_floor = extract_features(clf, x_test, device=device), extract_features(clf, x_floor, device=device)
    clf_acc = float((classify(x_test) == y_test).float().mean())

    rows = [run_entry(name, args, classify, f_test, f_floor, test, device) for name in args.entries]
    result = {"command": "python benchmarks/text_adherence.py " + " ".join(
                  f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
                  for k, v in vars(args).items() if v is not None and k != "device"),
              "profile": args.profile, "classifier_test_accuracy": clf_acc, "eval_prompts": list(EVAL_PROMPTS),
              "targets": {"class": CLASS_TARGET, "attribute_within_ceiling": WITHIN}, "entries": rows,
              "seconds": time.perf_counter() - t_all, "loadavg": _ldavg(), "torch_threads": torch.get_num_threads(),
              "cpu_count": os.cpu_count()}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2, default=float)
    print(json.dumps(result, default=float))


if __name__ == "__main__":
    main()
