"""Ensemble inference throughput vs running its members one after another, decoding included.

    GC10_WEIGHTS_DIR=../shared/weights python benchmarks/bench_ensemble_throughput.py [IMAGE_DIR] \
        [--members mobilenet mobilenet_v2 inception_v3] [--size 224] [--n 64]

Both paths start from the JPEG files: the ensemble decodes and resizes each image once and runs
one model; the sequential baseline decodes and resizes once per member and runs each member.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from gc10lib import backbones, ensembles
from gc10lib.data import IMAGE_EXTENSIONS
from gc10lib.inputs import load_rgb, resize_array


def decode(paths, size):
    return np.stack([resize_array(load_rgb(p), size) for p in paths]).astype("float32")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "image_dir", nargs="?", default=str(Path(__file__).resolve().parents[2] / "shared/data/neu-det/images")
    )
    ap.add_argument("--members", nargs="+", default=["mobilenet", "mobilenet_v2", "inception_v3"])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    paths = sorted(p for p in Path(args.image_dir).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)[: args.n]
    classes = [f"c{i}" for i in range(6)]
    models = [
        backbones.build_classifier(
            m,
            classes,
            img_size=args.size,
            weights="imagenet"
            if backbones.resolve_weights(backbones.get_spec(m), "imagenet")[1] != "imagenet-download"
            else None,
            seed=0,
        )[0]
        for m in args.members
    ]
    ens = ensembles.build_ensemble(models, "mean")
    for m in (*models, ens):  # warm-up: graph tracing is not throughput
        m.predict(np.zeros((args.batch, args.size, args.size, 3), "float32"), verbose=0)
    print(f"{len(paths)} images from {args.image_dir}; members {args.members} at {args.size} px; batch {args.batch}")
    t = time.perf_counter()
    p_seq = [m.predict(decode(paths, args.size), batch_size=args.batch, verbose=0) for m in models]
    seq = time.perf_counter() - t
    t = time.perf_counter()
    p_ens = ens.predict(decode(paths, args.size), batch_size=args.batch, verbose=0)
    one = time.perf_counter() - t
    assert np.allclose(p_ens, np.mean(p_seq, axis=0), atol=1e-5)
    print(f"members one after another: {len(paths) / seq:6.2f} img/s ({seq:.1f} s)")
    print(f"single ensemble model:     {len(paths) / one:6.2f} img/s ({one:.1f} s)  -> {seq / one:.2f}x")


if __name__ == "__main__":
    main()
