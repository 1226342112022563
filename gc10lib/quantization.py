"""The quantize step: every LiteRT variant of a model against its Keras original, in one table.

One row per file: size, accuracy and macro-F1 on a split subset, top-1 agreement with Keras,
latency at batch 1 and the best throughput over a few batch sizes. :func:`quantize_run` is the
step that notebook ``04_quantize``, ``gc10 quantize`` and ``benchmarks/bench_litert.py`` call.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from gc10lib import progress
from gc10lib.evaluation import compute_metrics
from gc10lib.export import VARIANTS, export_litert, representative_images
from gc10lib.inference import KerasPredictor, LiteRTPredictor, labelled_subset
from gc10lib.inputs import ImageCache

COLUMNS = [
    "model",
    "variant",
    "size_mib",
    "size_ratio",
    "accuracy",
    "macro_f1",
    "agreement",
    "latency_ms_b1",
    "throughput_img_s",
    "best_batch",
]


def seconds_per_image(
    predict: Callable[[np.ndarray], object], images: np.ndarray, batch: int, repeats: int = 5
) -> float:
    """Median wall time per image of ``predict`` on batches of ``batch`` images (after one warm-up)."""
    batch = max(1, min(batch, len(images)))
    chunks = [images[i : i + batch] for i in range(0, len(images) - batch + 1, batch)][: max(1, repeats)]
    predict(chunks[0])
    times = []
    for chunk in chunks * max(1, repeats // len(chunks)):
        t = time.perf_counter()
        predict(chunk)
        times.append((time.perf_counter() - t) / len(chunk))
    return float(np.median(times))


def speed(
    predict: Callable[[np.ndarray], object],
    images: np.ndarray,
    batch_sizes: Sequence[int] = (1, 8, 32),
    repeats: int = 5,
) -> dict:
    """Latency (ms per image at batch 1) and the best throughput over ``batch_sizes``."""
    per_image = {
        b: seconds_per_image(predict, images, b, repeats) for b in sorted(set(batch_sizes) | {1}) if b <= len(images)
    }
    best = min(per_image, key=per_image.get)
    return {"latency_ms_b1": 1e3 * per_image[1], "throughput_img_s": 1.0 / per_image[best], "best_batch": best}


def quantize_table(
    model_path: str | Path,
    data_dir: str | Path,
    split_csv: str | Path,
    out_dir: str | Path,
    variants: Sequence[str] = VARIANTS,
    *,
    name: str | None = None,
    policy: str | None = None,
    subset: str = "test",
    n_representative: int = 200,
    max_images: int | None = None,
    batch_sizes: Sequence[int] = (1, 8, 32),
    timing_images: int = 32,
    repeats: int = 5,
    num_threads: int | None = None,
    seed: int = 0,
    full_integer: bool = False,
) -> pd.DataFrame:
    """Export ``model_path`` in each variant into ``out_dir`` and compare with the Keras original.

    Images are made with the model's own resize policy unless ``policy`` overrides it. LiteRT runs
    with ``num_threads`` (default all cores); Keras through ``predict_on_batch``. ``full_integer``:
    int8 without the float stem (:func:`gc10lib.export.export_litert`).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    keras_pred = KerasPredictor(model_path)
    policy = policy or keras_pred.policy
    name = name or Path(model_path).stem
    table, mapping = labelled_subset(data_dir, split_csv, keras_pred.classes, subset)
    if max_images and len(table) > max_images:
        table = table.sample(max_images, random_state=seed)
    images = ImageCache(keras_pred.input_size, policy).load(list(table.path))
    y = np.array([mapping[int(label)] for label in table.label])
    timing = images[:timing_images].astype(np.float32)
    threads = num_threads or os.cpu_count()

    def row(variant, path, proba, predict):
        m = compute_metrics(y, proba, keras_pred.classes, n_boot=0)
        return {
            "model": name,
            "variant": variant,
            "file": str(path),
            "size_mib": Path(path).stat().st_size / 2**20,
            "accuracy": m["accuracy"],
            "macro_f1": m["macro_f1"],
            "agreement": float(np.mean(proba.argmax(1) == ref.argmax(1))),
            **speed(predict, timing, batch_sizes, repeats),
            "n_images": len(y),
            "policy": policy,
        }

    ref = keras_pred(images)
    rows = [row("keras", model_path, ref, keras_pred.model.predict_on_batch)]
    rep = None
    if "int8" in variants:
        rep = representative_images(
            data_dir, split_csv, keras_pred.input_size, n=n_representative, seed=seed, policy=policy
        )
    for variant in progress.bar(variants, desc=f"{name}: convert and time", unit="variant"):
        path = export_litert(
            keras_pred.model,
            out_dir / f"{name}_{variant}.tflite",
            variant,
            representative=rep if variant == "int8" else None,
            float_stem=not full_integer,
        )
        lite = LiteRTPredictor(path, num_threads=threads, batch_size=32)
        proba = lite(images)
        rows.append(row(variant, path, proba, lambda b, lite=lite: lite(b, batch_size=len(b))))
    df = pd.DataFrame(rows)
    keras_row = df.iloc[0]
    df["size_ratio"] = keras_row.size_mib / df.size_mib
    df["accuracy_drop"] = keras_row.accuracy - df.accuracy
    df["speedup_b1"] = keras_row.latency_ms_b1 / df.latency_ms_b1
    df.attrs.update(threads=threads, subset=subset)
    return df
