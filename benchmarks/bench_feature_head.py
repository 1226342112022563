"""Frozen-backbone head training: cached-feature fast path vs plain ``fit`` through the frozen backbone.

    GC10_WEIGHTS_DIR=../shared/weights python benchmarks/bench_feature_head.py [DATA_DIR] \
        [--backbone mobilenet] [--size 224] [--per-class 20] [--epochs 5]

Same data, same epochs, same augmentation setting (off, so both see identical inputs). The fast
path computes backbone features once and trains the head on them; ``fit`` runs the frozen backbone
on every image in every epoch. A second fast-path run reuses the on-disk feature cache.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from gc10lib import data
from gc10lib.steps import train


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data_dir", nargs="?", default=str(Path(__file__).resolve().parents[2] / "shared/data/neu-det"))
    ap.add_argument("--backbone", default="mobilenet")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--per-class", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["GC10_CACHE_DIR"] = tmp  # cold caches for a fair first run
        ds = data.discover(args.data_dir)
        ds.table = ds.table.groupby("class").sample(args.per_class, random_state=0).reset_index(drop=True)
        man = data.split_dataset(ds, (0.6, 0.2, 0.2), seed=0)
        n_train = int((man.subset == "train").sum())
        print(
            f"{args.backbone} at {args.size} px, {n_train} train images, {args.epochs} head epochs, "
            f"weights {'imagenet' if os.environ.get('GC10_WEIGHTS_DIR') else 'random'}"
        )
        # warm the resized-image cache so both paths start from the same decoded images
        from gc10lib.inputs import ImageCache

        ImageCache(args.size).ensure(list(man.path))
        times = {}
        for label, mode in (
            ("fit (frozen backbone every epoch)", "fit"),
            ("features, cold cache", "features"),
            ("features, warm cache", "features"),
        ):
            cfg = train.TrainConfig(
                backbone=args.backbone,
                img_size=args.size,
                weights="imagenet" if os.environ.get("GC10_WEIGHTS_DIR") else None,
                epochs_head=args.epochs,
                epochs_finetune=0,
                augment=False,
                head_mode=mode,
                patience=args.epochs + 1,
                verbose=0,
                seed=0,
            )
            t = time.perf_counter()
            m = train.run(cfg, args.data_dir, Path(tmp) / f"out{len(times)}", manifest=man, classes=ds.classes)
            times[label] = m["timings"]["head_s"]
            print(
                f"  {label:<36} head phase {times[label]:7.2f} s   (whole call {time.perf_counter() - t:6.1f} s, "
                f"val acc {m['val']['accuracy']:.3f})"
            )
        fit = times["fit (frozen backbone every epoch)"]
        print(
            f"speed-up of the fast path: {fit / times['features, cold cache']:.1f}x cold, "
            f"{fit / times['features, warm cache']:.1f}x with cached features"
        )


if __name__ == "__main__":
    main()
