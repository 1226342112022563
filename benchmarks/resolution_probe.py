"""What input resolution and resize policy buy, measured with the cheap probe (frozen features + LR).

    GC10_WEIGHTS_DIR=../shared/weights python benchmarks/resolution_probe.py ../shared/data/elpv \\
        --backbone mobilenet --sizes 224 320 --policies stretch pad

For each (size, policy): the time to compute pooled features for the whole split (cold image
and feature cache, so decoding and resizing are included), and the probe's validation and test
accuracy / macro-F1 (``C`` chosen on validation, as in training). Seeded 70/15/15 split.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
from sklearn.metrics import balanced_accuracy_score, f1_score

from gc10lib import data, probe, training
from gc10lib.backbones import build_classifier


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data_dir")
    ap.add_argument("--backbone", default="mobilenet")
    ap.add_argument("--sizes", type=int, nargs="+", default=[224, 320])
    ap.add_argument("--policies", nargs="+", default=["stretch"])
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args()
    os.environ["GC10_CACHE_DIR"] = tempfile.mkdtemp(prefix="gc10-res-")  # cold caches: honest timings
    ds = data.discover(args.data_dir)
    man = data.split_dataset(ds, (0.7, 0.15, 0.15), args.seed)
    parts = {s: man[man.subset == s] for s in ("train", "val", "test")}
    print(
        f"{args.data_dir}: {len(man)} images, {args.backbone}, split {', '.join(f'{k} {len(v)}' for k, v in parts.items())}"
    )
    print(
        "| size | policy | features s | img/s | C | val acc | val macro-F1 | test acc | test bal-acc | test macro-F1 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        for policy in args.policies:
            model, source = build_classifier(args.backbone, ds.classes, size, "imagenet", seed=args.seed)
            t0 = time.perf_counter()
            feats = {
                k: training.extract_features(
                    model,
                    list(v.path),
                    size=size,
                    policy=policy,
                    weights_source=source,
                    backbone=args.backbone,
                    seed=args.seed,
                )[0]
                for k, v in parts.items()
            }
            secs = time.perf_counter() - t0
            head = model.get_layer("head")
            training.adapt_feature_norm(head, feats["train"])
            z = {k: probe.standardize(head, f) for k, f in feats.items()}
            y = {k: v.label.to_numpy() for k, v in parts.items()}
            p = probe.fit_probe(z["train"], y["train"], z["val"], y["val"], len(ds.classes), seed=args.seed)
            pv, pt = p.predict_proba(z["val"]).argmax(1), p.predict_proba(z["test"]).argmax(1)
            print(
                f"| {size} | {policy} | {secs:.0f} | {len(man) / secs:.1f} | {p.C} | {np.mean(pv == y['val']):.4f} | "
                f"{f1_score(y['val'], pv, average='macro'):.4f} | {np.mean(pt == y['test']):.4f} | "
                f"{balanced_accuracy_score(y['test'], pt):.4f} | {f1_score(y['test'], pt, average='macro'):.4f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
