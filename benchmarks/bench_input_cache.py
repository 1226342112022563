"""Cached vs uncached input pipeline: epoch time on real GC10 images (2048x1000 JPEGs).

    python benchmarks/bench_input_cache.py [DATA_DIR] [--size 224] [--epochs 3]

The uncached pipeline decodes and resizes every JPEG every epoch; the cached one decodes each
image once per size into small PNGs (the first epoch pays that) and reads those afterwards.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from gc10lib import data
from gc10lib.inputs import ImageCache, make_dataset, uncached_dataset


def epoch_seconds(ds) -> float:
    t = time.perf_counter()
    for _ in ds:
        pass
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data_dir", nargs="?", default=str(Path(__file__).resolve().parents[2] / "shared/data/gc10-sample"))
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=1, help="list the images this many times (more work per epoch)")
    args = ap.parse_args()
    t = data.discover(args.data_dir).table
    paths, labels = list(t.path) * args.repeat, list(t.label) * args.repeat
    print(f"{len(paths)} images from {args.data_dir} at {args.size} px, {args.epochs} epochs")

    un = uncached_dataset(paths, labels, args.size, batch_size=16)
    times = [epoch_seconds(un) for _ in range(args.epochs)]
    print("uncached: " + ", ".join(f"{s:.2f}" for s in times) + " s/epoch")

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        ImageCache(args.size, cache_dir=tmp).ensure(paths)
        build = time.perf_counter() - t0
        ds = make_dataset(paths, labels, args.size, batch_size=16, cache_dir=tmp)
        cached = [epoch_seconds(ds) for _ in range(args.epochs)]
    print(f"cache build (first epoch only): {build:.2f} s")
    print("cached:   " + ", ".join(f"{s:.3f}" for s in cached) + " s/epoch")
    best_un, best_c = min(times), min(cached)
    print(
        f"speed-up per later epoch: {best_un / best_c:.1f}x ({best_un / len(paths) * 1e3:.1f} -> "
        f"{best_c / len(paths) * 1e3:.2f} ms/image)"
    )


if __name__ == "__main__":
    main()
