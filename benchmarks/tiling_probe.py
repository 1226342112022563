"""What tiling buys over one whole-image view, measured with the cheap probe (frozen features + LR).

    GC10_WEIGHTS_DIR=../shared/weights python benchmarks/tiling_probe.py ../shared/data/elpv \\
        --backbone mobilenet --configs 300:1 448:2 600:2

Each ``SIZE:GRID`` builds the classifier the pipeline would (``img_size=SIZE, tiles=GRID``): the
image is resized to ``SIZE`` and cut into a ``GRID x GRID`` grid, the backbone runs on each tile
at ``SIZE/GRID`` px, and the tiles' pooled features are pooled per image. One feature pass per
configuration gives all three tile poolings (``meanmax`` holds ``mean`` and ``max``). For each:
the time to compute the features of the whole split (cold caches: decoding and resizing
included) and the probe's validation and test scores (``C`` chosen on validation, as in
training). Seeded 70/15/15 split.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
from sklearn.metrics import balanced_accuracy_score, f1_score, log_loss

from gc10lib import data, probe, training
from gc10lib.backbones import build_classifier, floored_variance


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data_dir")
    ap.add_argument("--backbone", default="mobilenet")
    ap.add_argument("--configs", nargs="+", default=["300:1", "448:2", "600:2"], help="SIZE:GRID pairs")
    ap.add_argument("--policy", default="stretch")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--warm", action="store_true", help="use $GC10_CACHE_DIR instead of cold caches")
    args = ap.parse_args()
    if not args.warm:
        os.environ["GC10_CACHE_DIR"] = tempfile.mkdtemp(prefix="gc10-tiles-")  # cold caches: honest timings
    ds = data.discover(args.data_dir)
    man = data.split_dataset(ds, (0.7, 0.15, 0.15), args.seed)
    parts = {s: man[man.subset == s] for s in ("train", "val", "test")}
    y = {k: v.label.to_numpy() for k, v in parts.items()}
    print(
        f"{args.data_dir}: {len(man)} images, {args.backbone}, {args.policy}, split "
        + ", ".join(f"{k} {len(v)}" for k, v in parts.items())
    )
    print(
        "| size | grid | tile px | pool | features s | img/s | C | val log-loss | val acc | val macro-F1 "
        "| test acc | test bal-acc | test macro-F1 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for item in args.configs:
        size, grid = (int(v) for v in item.split(":"))
        model, source = build_classifier(
            args.backbone,
            ds.classes,
            size,
            "imagenet",
            seed=args.seed,
            policy=args.policy,
            tiles=grid,
            tile_pool="meanmax",
        )
        t0 = time.perf_counter()
        feats = {
            k: training.extract_features(
                model,
                list(v.path),
                size=size,
                policy=args.policy,
                weights_source=source,
                backbone=args.backbone,
                seed=args.seed,
            )[0]
            for k, v in parts.items()
        }
        secs = time.perf_counter() - t0
        half = feats["train"].shape[1] // 2 if grid > 1 else None
        pools = (
            {"mean": slice(0, half), "max": slice(half, None), "meanmax": slice(None)}
            if grid > 1
            else {"-": slice(None)}
        )
        for pool, cols in pools.items():
            f = {k: v[:, cols] for k, v in feats.items()}
            sd = np.sqrt(floored_variance(f["train"]))  # the head's standardization
            z = {k: (v - f["train"].mean(0)) / sd for k, v in f.items()}
            p = probe.fit_probe(z["train"], y["train"], z["val"], y["val"], len(ds.classes), seed=args.seed)
            qv, qt = p.predict_proba(z["val"]), p.predict_proba(z["test"])
            pv, pt = qv.argmax(1), qt.argmax(1)
            print(
                f"| {size} | {grid} | {size // grid} | {pool} | {secs:.0f} | {len(man) / secs:.1f} | {p.C} | "
                f"{log_loss(y['val'], qv, labels=range(len(ds.classes))):.3f} | {np.mean(pv == y['val']):.4f} | "
                f"{f1_score(y['val'], pv, average='macro'):.4f} | {np.mean(pt == y['test']):.4f} | "
                f"{balanced_accuracy_score(y['test'], pt):.4f} | {f1_score(y['test'], pt, average='macro'):.4f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
