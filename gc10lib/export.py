"""LiteRT (``.tflite``) export in four variants, and a LiteRT predictor.

Post-training quantisation is the path: ``tensorflow-model-optimization`` (quantisation-aware
training) does not support Keras 3. The converter path is Keras 3 ``model.export`` to a SavedModel,
then ``tf.lite.TFLiteConverter.from_saved_model``; inference uses the ``ai-edge-litert``
interpreter, not the deprecated ``tf.lite.Interpreter``.

Variants: ``float32``; ``float16`` (weights stored as float16); ``dynamic`` (int8 weights, float
activations); ``int8`` (full-integer, calibrated on ~200 training images). Preprocessing stays
inside every exported model. The ``int8`` model takes **uint8 RGB pixels 0..255** (its input
scale is 1 and zero point 0, so raw pixels go in unchanged — :class:`LiteRTPredictor` quantises
with the file's own scale and zero point either way) and returns float32 probabilities.

Each ``.tflite`` gets a sidecar ``<name>.tflite.json`` with the class names, input size and variant.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

VARIANTS = ("float32", "float16", "dynamic", "int8")


def export_litert(model, out: str | Path, variant: str = "float32",
                  representative: Iterable[np.ndarray] | None = None, overwrite: bool = False) -> Path:
    """Convert a Keras classifier/ensemble (or a ``.keras`` path) to ``out`` (``.tflite``).

    ``representative`` (for ``int8``): an iterable of single images (H, W, 3), 0..255.
    """
    import tensorflow as tf

    from gc10lib.backbones import load_model, model_classes

    if variant not in VARIANTS:
        raise ValueError(f"unknown export format {variant!r}; expected one of {VARIANTS}")
    out = Path(out)
    if out.suffix != ".tflite":
        raise ValueError(f"{out}: the output file must end in .tflite")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: already exists; choose another --out.")
    if isinstance(model, (str, Path)):
        model = load_model(model)
    classes = model_classes(model)
    size = int(model.inputs[0].shape[1])
    with tempfile.TemporaryDirectory() as tmp:
        model.export(tmp, format="tf_saved_model", verbose=False)
        conv = tf.lite.TFLiteConverter.from_saved_model(tmp)
        if variant == "float16":
            conv.optimizations = [tf.lite.Optimize.DEFAULT]
            conv.target_spec.supported_types = [tf.float16]
        elif variant == "dynamic":
            conv.optimizations = [tf.lite.Optimize.DEFAULT]
        elif variant == "int8":
            if representative is None:
                raise ValueError("int8 export needs representative images (about 200 from the train split)")
            images = [np.asarray(im, np.float32)[None] for im in representative]
            if not images:
                raise ValueError("int8 export: the representative set is empty")
            conv.optimizations = [tf.lite.Optimize.DEFAULT]
            conv.representative_dataset = lambda: ([im] for im in images)
            conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            conv.inference_input_type = tf.uint8
            conv.inference_output_type = tf.float32
        blob = conv.convert()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(blob)
    sidecar(out).write_text(json.dumps({"classes": classes, "img_size": size, "variant": variant,
                                        "input": "uint8 RGB 0..255" if variant == "int8" else "float32 RGB 0..255"}))
    return out


def sidecar(path: str | Path) -> Path:
    """The JSON file next to a ``.tflite`` that carries its class names."""
    return Path(str(path) + ".json")


class LiteRTPredictor:
    """Runs a ``.tflite`` classifier with the LiteRT interpreter (``ai-edge-litert``)."""

    def __init__(self, path: str | Path, num_threads: int | None = None):
        self.path = Path(path)
        meta_path = sidecar(self.path)
        if not meta_path.is_file():
            raise ValueError(f"{self.path}: no {meta_path.name} beside it; not a gc10lib export (class names unknown).")
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as exc:  # pragma: no cover - in the [litert] and [dev] extras
            raise RuntimeError("reading .tflite files needs ai-edge-litert: pip install 'gc10lib[litert]'") from exc
        try:
            self.interpreter = Interpreter(model_path=str(self.path), num_threads=num_threads)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ValueError(f"{self.path}: not a valid LiteRT model ({exc})") from exc
        meta = json.loads(meta_path.read_text())
        self.classes = list(meta["classes"])
        self.variant = meta.get("variant")
        self.inp = self.interpreter.get_input_details()[0]
        self.out = self.interpreter.get_output_details()[0]
        shape = list(self.inp["shape"])
        if len(shape) != 4 or shape[3] != 3 or int(self.out["shape"][-1]) != len(self.classes):
            raise ValueError(f"{self.path}: input {shape} / output {list(self.out['shape'])} do not match a "
                             f"{len(self.classes)}-class image classifier")
        self.input_size = int(shape[1])

    def _quantise(self, x: np.ndarray) -> np.ndarray:
        dtype = self.inp["dtype"]
        if dtype == np.float32:
            return x.astype(np.float32)
        scale, zero = self.inp["quantization"]
        info = np.iinfo(dtype)
        return np.clip(np.round(x / (scale or 1.0) + zero), info.min, info.max).astype(dtype)

    def predict_array(self, images: np.ndarray, batch_size: int = 1) -> np.ndarray:
        """Probabilities for RGB images (0..255) at ``input_size``, one invoke per batch."""
        images = np.asarray(images, np.float32)
        out = []
        for i in range(0, len(images), batch_size):
            batch = images[i:i + batch_size]
            if list(self.inp["shape"])[0] != len(batch):
                self.interpreter.resize_tensor_input(self.inp["index"], [len(batch), *batch.shape[1:]])
                self.interpreter.allocate_tensors()
                self.inp = self.interpreter.get_input_details()[0]
                self.out = self.interpreter.get_output_details()[0]
            self.interpreter.set_tensor(self.inp["index"], self._quantise(batch))
            self.interpreter.invoke()
            res = self.interpreter.get_tensor(self.out["index"]).astype(np.float64)
            if self.out["dtype"] != np.float32:
                scale, zero = self.out["quantization"]
                res = (res - zero) * scale
            out.append(res)
        return np.concatenate(out)


def representative_images(data_dir: str | Path, split_csv: str | Path | None, size: int, n: int = 200,
                          seed: int = 0, policy: str = "stretch") -> np.ndarray:
    """Up to ``n`` training-split images (the whole dataset without a split), resized, uint8."""
    from gc10lib import data
    from gc10lib.inputs import ImageCache

    if split_csv:
        man = data.read_split(split_csv, data_root=data_dir)
        table = man[man.subset == "train"]
    else:
        table = data.discover(data_dir).table
    pick = table.sample(min(n, len(table)), random_state=seed)
    return ImageCache(size, policy).load(list(pick.path))


# --------------------------------------------------------------------------- size / speed / accuracy table


def seconds_per_image(predict: Callable[[np.ndarray], object], images: np.ndarray, batch: int,
                      repeats: int = 5) -> float:
    """Median wall time per image of ``predict`` on batches of ``batch`` images (after one warm-up)."""
    batch = max(1, min(batch, len(images)))
    chunks = [images[i:i + batch] for i in range(0, len(images) - batch + 1, batch)][:max(1, repeats)]
    predict(chunks[0])
    times = []
    for chunk in chunks * max(1, repeats // len(chunks)):
        t = time.perf_counter()
        predict(chunk)
        times.append((time.perf_counter() - t) / len(chunk))
    return float(np.median(times))


def speed(predict: Callable[[np.ndarray], object], images: np.ndarray, batch_sizes: Sequence[int] = (1, 8, 32),
          repeats: int = 5) -> dict:
    """Latency (ms per image at batch 1) and the best throughput over ``batch_sizes``."""
    per_image = {b: seconds_per_image(predict, images, b, repeats) for b in sorted(set(batch_sizes) | {1})
                 if b <= len(images)}
    best = min(per_image, key=per_image.get)
    return {"latency_ms_b1": 1e3 * per_image[1], "throughput_img_s": 1.0 / per_image[best], "best_batch": best}


def find_models(run_dir: str | Path, policy: str = "stretch") -> pd.DataFrame:
    """Every trained backbone and ensemble under a run folder, with its validation macro-F1.

    ``policy``: the resize policy for models whose metrics do not record one (ensembles).
    """
    rows = []
    for mf in sorted(Path(run_dir).glob("**/metrics.json")):
        m = json.loads(mf.read_text())
        if m.get("kind") in ("backbone", "ensemble") and Path(m.get("model_path", "")).is_file():
            rows.append({"name": m["name"], "kind": m["kind"], "path": m["model_path"],
                         "policy": m.get("policy") or policy, "val_macro_f1": (m.get("val") or {}).get("macro_f1")})
    if not rows:
        raise FileNotFoundError(f"{run_dir}: no trained models (metrics.json with a model file) found")
    return pd.DataFrame(rows)


def pick_models(run_dir: str | Path, which: Sequence[str] = ("best_backbone", "best_ensemble"),
                policy: str = "stretch") -> pd.DataFrame:
    """Models to quantise: names, or ``best_backbone`` / ``best_ensemble`` by *validation* macro-F1."""
    found = find_models(run_dir, policy)
    picked = []
    for w in which:
        if w in ("best_backbone", "best_ensemble"):
            kind = w.removeprefix("best_")
            cand = found[found.kind == kind].sort_values("val_macro_f1", ascending=False, na_position="last")
            if cand.empty:
                continue  # a run without ensembles still quantises its best backbone
            picked.append(cand.iloc[0])
        else:
            hit = found[found.name == w]
            if hit.empty:
                raise ValueError(f"no model named {w!r} in {run_dir}; found: {', '.join(found.name)}")
            picked.append(hit.iloc[0])
    return pd.DataFrame(picked).drop_duplicates("name").reset_index(drop=True)


def quantization_table(model_path: str | Path, data_dir: str | Path, split_csv: str | Path, out_dir: str | Path,
                       variants: Sequence[str] = VARIANTS, *, name: str | None = None, policy: str = "stretch",
                       subset: str = "test", n_representative: int = 200, max_images: int | None = None,
                       batch_sizes: Sequence[int] = (1, 8, 32), timing_images: int = 32, repeats: int = 5,
                       num_threads: int | None = None, seed: int = 0) -> pd.DataFrame:
    """Export ``model_path`` in each variant into ``out_dir`` and compare with the Keras original.

    One row per file: size, accuracy and macro-F1 on ``subset``, top-1 agreement with Keras,
    latency at batch 1 and the best throughput over ``batch_sizes`` (LiteRT with ``num_threads``,
    default all cores; Keras through ``predict_on_batch``).
    """
    from gc10lib.evaluation import compute_metrics
    from gc10lib.inputs import ImageCache
    from gc10lib.predict import KerasPredictor, labelled_subset

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    keras_pred = KerasPredictor(model_path)
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
        return {"model": name, "variant": variant, "file": str(path), "size_mib": Path(path).stat().st_size / 2**20,
                "accuracy": m["accuracy"], "macro_f1": m["macro_f1"],
                "agreement": float(np.mean(proba.argmax(1) == ref.argmax(1))),
                **speed(predict, timing, batch_sizes, repeats), "n_images": len(y)}

    ref = keras_pred.predict_array(images)
    rows = [row("keras", model_path, ref, keras_pred.model.predict_on_batch)]
    rep = None
    if "int8" in variants:
        rep = representative_images(data_dir, split_csv, keras_pred.input_size, n=n_representative, seed=seed,
                                    policy=policy)
    for variant in variants:
        path = export_litert(keras_pred.model, out_dir / f"{name}_{variant}.tflite", variant,
                             representative=rep if variant == "int8" else None)
        lite = LiteRTPredictor(path, num_threads=threads)
        proba = lite.predict_array(images, batch_size=32)
        rows.append(row(variant, path, proba, lambda b, lite=lite: lite.predict_array(b, batch_size=len(b))))
    df = pd.DataFrame(rows)
    keras_row = df.iloc[0]
    df["size_ratio"] = keras_row.size_mib / df.size_mib
    df["accuracy_drop"] = keras_row.accuracy - df.accuracy
    df["speedup_b1"] = keras_row.latency_ms_b1 / df.latency_ms_b1
    df.attrs.update(threads=threads, subset=subset)
    return df


def write_table(df: pd.DataFrame, out_dir: str | Path, stem: str = "quantization") -> tuple[Path, Path]:
    """``<stem>.csv`` and ``<stem>.md`` in ``out_dir`` (refusing to overwrite either)."""
    out_dir = Path(out_dir)
    csv, md = out_dir / f"{stem}.csv", out_dir / f"{stem}.md"
    for f in (csv, md):
        if f.exists():
            raise FileExistsError(f"{f}: already exists; choose another output folder.")
    df.to_csv(csv, index=False)
    md.write_text(markdown_table(df) + "\n")
    return csv, md


def markdown_table(df: pd.DataFrame) -> str:
    """The table's readable columns, as markdown."""
    cols = ["model", "variant", "size_mib", "size_ratio", "accuracy", "macro_f1", "agreement",
            "latency_ms_b1", "throughput_img_s", "best_batch"]
    return df[cols].to_markdown(index=False, floatfmt=".4g")
