"""Class agreement and FID of a class-conditional ldm with classifier-free guidance (issue 14's cpu target).

    OMP_NUM_THREADS=1 python benchmarks/class_agreement.py --ckpt runs/ldm/checkpoint.pt \
        --classifier runs/classifier-mnist5k/checkpoint.pt --guidance 1 2 3 4 --n 200 --seed 1   # choose S
    OMP_NUM_THREADS=1 python benchmarks/class_agreement.py --ckpt runs/ldm/checkpoint.pt \
        --classifier runs/classifier-mnist5k/checkpoint.pt --guidance 3 --n 1000 --seed 2 --fid   # fresh seed

For each guidance scale S, draws ``n`` samples, n/K of each class (DDIM, ``--steps``), and reports the
fraction the course classifier assigns to the requested class with a 95 % Wilson interval. ``--fid``
adds the course FID/KID of those (class-balanced) samples against the test set, with the bootstrap
interval and the real-vs-real floor at the same n (``metrics.fid_report``). Choose S on one seed, then
report it on a fresh one. Prints one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from ldmcourse.classifier import load_classifier
from ldmcourse.cli import load_model
from ldmcourse.data import load_dataset
from ldmcourse.metrics import extract_features, fid_report, wilson_interval as wilson


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True)
    p.add_argument("--classifier", required=True)
    p.add_argument("--guidance", type=float, nargs="+", default=[3.0])
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--sampler", default="ddim")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fid", action="store_true")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args()

    device = torch.device(args.device)
    model, meta, recipe = load_model(args.ckpt, device)
    k = meta["model_config"].get("num_classes")
    if not k:
        raise SystemExit(f"{args.ckpt} is not class-conditional (train ldm --num-classes 10 --p-uncond 0.1)")
    clf, cmeta = load_classifier(args.classifier, device)
    y = torch.arange(args.n) % k
    test = load_dataset(meta["dataset"], "test", size=meta["image_shape"][-1], root=meta.get("data_root"), download=False)
    x_test, y_test = test.tensors()
    with torch.no_grad():
        clf_acc = float((clf(x_test.to(device)).argmax(1).cpu() == y_test).float().mean())
    rows = []
    for s in args.guidance:
        g = torch.Generator(device=device).manual_seed(args.seed)
        t0 = time.perf_counter()
        x = recipe.sample(model, meta, args.n, g, device, sampler=args.sampler, steps=args.steps, guidance=s, y=y,
                          batch_size=250)
        secs = time.perf_counter() - t0
        with torch.no_grad():
            pred = torch.cat([clf(x[i:i + 500].to(device)).argmax(1).cpu() for i in range(0, len(x), 500)])
        hits = int((pred == y).sum())
        row = {"guidance": s, "agreement": round(hits / args.n, 4), "agreement_ci95": wilson(hits, args.n),
               "per_class": [round(float((pred[y == c] == c).float().mean()), 3) for c in range(k)],
               "sample_seconds": round(secs, 1)}
        if args.fid:
            train = load_dataset(meta["dataset"], "train", size=meta["image_shape"][-1], root=meta.get("data_root"), download=False)
            x_tr, _ = train.subset(min(args.n, len(train)), torch.Generator().manual_seed(args.seed)).tensors()
            rep = fid_report(extract_features(clf, x, device=device), extract_features(clf, x_test, device=device),
                             extract_features(clf, x_tr, device=device), n_boot=50, seed=args.seed)
            row.update({k2: rep[k2] for k2 in ("fid", "fid_ci95", "fid_floor", "kid", "kid_floor", "n_gen", "n_real")})
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {"ckpt": args.ckpt, "classifier": args.classifier, "classifier_test_accuracy": clf_acc,
              "n": args.n, "seed": args.seed, "sampler": args.sampler, "steps": args.steps, "rows": rows,
              "train": meta.get("zoo"), "loadavg": [round(v, 2) for v in os.getloadavg()]}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
