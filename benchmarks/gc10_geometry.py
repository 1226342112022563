"""How large GC10's defects are at the model input, and what a pass costs, for each resolution,
resize policy and tile grid.

    python benchmarks/gc10_geometry.py ../shared/data/gc10-labels \\
        --sample ../shared/data/gc10-sample --configs 224:stretch:1 224:pad:1 448:stretch:2 896:stretch:4

From every Pascal-VOC box of the real annotations (2,280 XML files, no images needed): a box's
width and height once the 2048x1000 image is resized to the model input (``SIZE``, ``POLICY``),
the share of boxes whose shorter side is under 8 and 32 input pixels (32: one cell of a
stride-32 backbone's last feature map), and the share a tile boundary cuts (``GRID`` > 1). With
``--sample``, the time per image of MobileNet's pooled features (decode, resize and backbone,
cold caches) on those real 2048x1000 images, the backbone seeing ``SIZE/GRID`` px tiles.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from gc10lib import data, training
from gc10lib.backbones import build_classifier
from gc10lib.inputs import resize_geometry


def box_stats(labels, size: int, policy: str, grid: int) -> dict:
    """Per-configuration figures over every box in ``labels`` (:func:`gc10lib.data.label_table`)."""
    ws, hs, cut = [], [], []
    tile = size / grid
    for r in labels.itertuples():
        g = resize_geometry(int(r.img_w), int(r.img_h), size, policy)
        x0, y0, x1, y1 = g.to_input((r.x0, r.y0, r.x0 + r.box_w, r.y0 + r.box_h))
        ws.append(x1 - x0)
        hs.append(y1 - y0)
        # a box is cut when its two ends fall in different tiles on either axis
        cut.append(
            grid > 1
            and (
                int(x0 // tile) != int(min(x1, size - 1e-6) // tile)
                or int(y0 // tile) != int(min(y1, size - 1e-6) // tile)
            )
        )
    short = np.minimum(ws, hs)
    return {
        "median w x h": f"{np.median(ws):.0f} x {np.median(hs):.0f}",
        "median short side": float(np.median(short)),
        "short < 8 px": float(np.mean(short < 8)),
        "short < 32 px": float(np.mean(short < 32)),
        "cut by a tile edge": float(np.mean(cut)),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("labels", help="folder of VOC XML files (or with label/label inside)")
    ap.add_argument("--sample", help="a GC10 folder with images, to time the feature pass")
    ap.add_argument(
        "--configs", nargs="+", default=["224:stretch:1", "224:pad:1", "456:pad:1", "448:stretch:2", "896:stretch:4"]
    )
    ap.add_argument("--backbone", default="mobilenet")
    ap.add_argument("--by-class", action="store_true", help="also the median short side per class")
    args = ap.parse_args()
    labels = data.label_table(args.labels)
    labels = labels[(labels.img_w > 0) & (labels.box_w > 0) & (labels.box_h > 0)]
    print(
        f"{args.labels}: {len(labels)} boxes in {labels.image_id.nunique()} images "
        f"(median original box {labels.box_w.median():.0f} x {labels.box_h.median():.0f} px)"
    )
    ds = None
    if args.sample:
        os.environ["GC10_CACHE_DIR"] = tempfile.mkdtemp(prefix="gc10-geom-")
        ds = data.discover(args.sample)
    print(
        "| size | policy | grid | backbone px | median box w x h (input px) | median short side | short < 8 px "
        "| short < 32 px | cut by a tile edge | backbone passes | s per image (features) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for item in args.configs:
        size, policy, grid = item.split(":")
        size, grid = int(size), int(grid)
        st = box_stats(labels, size, policy, grid)
        per = "-"
        if ds is not None:
            model, source = build_classifier(args.backbone, ds.classes, size, "imagenet", policy=policy, tiles=grid)
            paths = list(ds.table.path)
            t0 = time.perf_counter()
            training.extract_features(
                model, paths, size=size, policy=policy, weights_source=source, backbone=args.backbone, batch_size=8
            )
            per = f"{(time.perf_counter() - t0) / len(paths):.2f}"
        print(
            f"| {size} | {policy} | {grid} | {size // grid} | {st['median w x h']} | {st['median short side']:.1f} | "
            f"{st['short < 8 px']:.0%} | {st['short < 32 px']:.0%} | {st['cut by a tile edge']:.0%} | {grid * grid} | {per} |",
            flush=True,
        )
    if args.by_class:
        configs = [(int(a), b, int(c)) for a, b, c in (item.split(":") for item in args.configs)]
        print(
            "\n| class | boxes | "
            + " | ".join(f"{a}:{b}:{c}" for a, b, c in configs)
            + " |  (median short side, input px)"
        )
        print("|---|---|" + "---|" * len(configs))
        for cls, part in labels.groupby("class"):
            cells = [f"{box_stats(part, a, b, c)['median short side']:.0f}" for a, b, c in configs]
            print(f"| {cls} | {len(part)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
