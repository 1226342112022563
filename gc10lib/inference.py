"""Inference: one :class:`Predictor` interface for ``.keras`` and ``.tflite`` models, one
:func:`predict_proba`, and the ``gc10 predict`` / ``gc10 evaluate`` functions built on them.

A predictor knows its class names, input size and resize policy (read from the model itself, or
from the ``.tflite`` file's sidecar) and maps RGB images at its input size to probabilities.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import keras
import numpy as np
import pandas as pd

from gc10lib import data
from gc10lib.backbones import load_model
from gc10lib.data import IMAGE_EXTENSIONS
from gc10lib.errors import InputError, NotFoundError, SetupError, SkippedImageWarning
from gc10lib.evaluation import compute_metrics
from gc10lib.inputs import ImageCache, ImageReadError, load_rgb, make_dataset, resize_array
from gc10lib.layers import LEGACY_POLICY, model_info

CHUNK = 256  # images decoded into memory at a time for array predictors
OUTPUTS = ("probabilities", "logits")  # what a .tflite file returns (its sidecar's "output")


@runtime_checkable
class Predictor(Protocol):
    """Anything that maps RGB images (0..255, ``input_size`` square) to class probabilities."""

    path: Path | None
    classes: list[str]
    input_size: int
    policy: str

    def __call__(self, images: np.ndarray) -> np.ndarray: ...


class KerasPredictor:
    """A ``.keras`` classifier or ensemble (a path, loaded in safe mode, or a model in memory)."""

    def __init__(self, model, batch_size: int = 32):
        self.path = Path(model) if isinstance(model, (str, Path)) else None
        self.model = load_model(model) if self.path is not None else model
        try:
            info = model_info(self.model)
        except InputError as exc:
            raise InputError(f"{self.path or self.model.name}: {exc}") from None
        self.classes, self.input_size, self.policy = info.classes, info.input_size, info.policy
        self.info, self.batch_size = info, batch_size

    def __call__(self, images: np.ndarray) -> np.ndarray:
        x = np.asarray(images, np.float32)
        return np.asarray(self.model.predict(x, batch_size=self.batch_size, verbose=0), np.float64)


def sidecar(path: str | Path) -> Path:
    """The JSON file next to a ``.tflite`` that carries its class names, size and policy."""
    return Path(str(path) + ".json")


def read_tflite_sidecar(path: Path) -> dict:
    """A ``.tflite`` sidecar, checked: a JSON object with a non-empty ``classes`` list of names."""
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(
            f"{path}: the model's sidecar is not valid JSON ({type(exc).__name__}); export it again"
        ) from None
    classes = meta.get("classes") if isinstance(meta, dict) else None
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise InputError(f"{path}: the model's sidecar has no 'classes' list of names; export it again")
    return meta


class LiteRTPredictor:
    """Runs a ``.tflite`` classifier with the LiteRT interpreter (``ai-edge-litert``)."""

    def __init__(self, path: str | Path, num_threads: int | None = None, batch_size: int = 1):
        self.path = Path(path)
        meta_path = sidecar(self.path)
        if not meta_path.is_file():
            raise InputError(f"{self.path}: no {meta_path.name} beside it; not a gc10lib export (class names unknown).")
        meta = read_tflite_sidecar(meta_path)
        try:
            # lazy: optional dependency ([litert] extra)
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as exc:  # pragma: no cover - in the [litert] and [dev] extras
            raise SetupError("reading .tflite files needs ai-edge-litert: pip install 'gc10lib[litert]'") from exc
        try:
            self.interpreter = Interpreter(model_path=str(self.path), num_threads=num_threads)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise InputError(f"{self.path}: not a valid LiteRT model ({exc})") from exc
        self.classes = list(meta["classes"])
        self.variant = meta.get("variant")
        self.policy = meta.get("policy") or LEGACY_POLICY
        self.output = meta.get("output", "probabilities")  # files from before the field: probabilities
        if self.output not in OUTPUTS:
            raise InputError(f"{meta_path}: unknown output {self.output!r}; expected one of {OUTPUTS}")
        self.batch_size = batch_size
        self.inp = self.interpreter.get_input_details()[0]
        self.out = self.interpreter.get_output_details()[0]
        shape = list(self.inp["shape"])
        if len(shape) != 4 or shape[3] != 3 or int(self.out["shape"][-1]) != len(self.classes):
            raise InputError(
                f"{self.path}: input {shape} / output {list(self.out['shape'])} do not match a "
                f"{len(self.classes)}-class image classifier"
            )
        self.input_size = int(shape[1])

    def _quantize(self, x: np.ndarray) -> np.ndarray:
        dtype = self.inp["dtype"]
        if dtype == np.float32:
            return x.astype(np.float32)
        scale, zero = self.inp["quantization"]
        info = np.iinfo(dtype)
        return np.clip(np.round(x / (scale or 1.0) + zero), info.min, info.max).astype(dtype)

    def __call__(self, images: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """Probabilities for RGB images (0..255) at ``input_size``, one invoke per batch."""
        images = np.asarray(images, np.float32)
        batch_size = batch_size or self.batch_size
        out = []
        for i in range(0, len(images), batch_size):
            batch = images[i : i + batch_size]
            if list(self.inp["shape"])[0] != len(batch):
                self.interpreter.resize_tensor_input(self.inp["index"], [len(batch), *batch.shape[1:]])
                self.interpreter.allocate_tensors()
                self.inp = self.interpreter.get_input_details()[0]
                self.out = self.interpreter.get_output_details()[0]
            self.interpreter.set_tensor(self.inp["index"], self._quantize(batch))
            self.interpreter.invoke()
            res = self.interpreter.get_tensor(self.out["index"]).astype(np.float64)
            if self.out["dtype"] != np.float32:
                scale, zero = self.out["quantization"]
                res = (res - zero) * scale
            if self.output == "logits":  # an int8 classifier stops before its softmax (gc10lib.export)
                res = np.exp(res - res.max(axis=1, keepdims=True))
                res /= res.sum(axis=1, keepdims=True)
            out.append(res)
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)))


def load_predictor(path: str | Path) -> Predictor:
    """A predictor for a model file, chosen by its suffix."""
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{p}: is a folder, not a model file (a .keras or .tflite file written by gc10lib)")
    if not p.is_file():
        raise NotFoundError(f"{p}: model file not found.")
    if p.suffix == ".keras":
        return KerasPredictor(p)
    if p.suffix == ".tflite":
        return LiteRTPredictor(p)
    raise InputError(f"{p}: unsupported model file; expected .keras or .tflite")


def as_predictor(model) -> Predictor:
    """A predictor for a Keras model, a model file or an existing predictor."""
    if isinstance(model, keras.Model):
        return KerasPredictor(model)
    if isinstance(model, (str, Path)):
        return load_predictor(model)
    return model


def predict_proba(model, images, *, policy: str | None = None, batch_size: int = 32) -> np.ndarray:
    """Class probabilities of a model (Keras model, model file or :class:`Predictor`).

    ``images``: an array of RGB images at the model's input size, or image file paths (resized
    through the image cache with ``policy``, by default the one the model records).
    """
    pred = as_predictor(model)
    if isinstance(images, np.ndarray):
        return pred(images)
    paths = list(images)
    policy = policy or pred.policy
    if not paths:
        return np.zeros((0, len(pred.classes)))
    if isinstance(pred, KerasPredictor):  # streamed: a whole split never sits in memory
        ds = make_dataset(paths, None, pred.input_size, policy=policy, batch_size=batch_size)
        return np.asarray(pred.model.predict(ds, verbose=0), np.float64).reshape(len(paths), len(pred.classes))
    cache = ImageCache(pred.input_size, policy)
    parts = [pred(cache.load(paths[i : i + CHUNK])) for i in range(0, len(paths), CHUNK)]
    return np.concatenate(parts) if parts else np.zeros((0, len(pred.classes)))


def readable(files: Sequence[str | Path], size: int, policy: str) -> list[Path]:
    """The files that decode (cached at ``size``/``policy``); the others are left out with a
    :class:`~gc10lib.errors.SkippedImageWarning` naming each one."""
    cache = ImageCache(size, policy)
    ok = []
    for f in map(Path, files):
        try:
            cache.ensure_one(f)
        except ImageReadError as exc:
            warnings.warn(f"skipped {f}: {exc}", SkippedImageWarning, stacklevel=2)
            continue
        ok.append(f)
    return ok


def collect_images(paths: Sequence[str | Path]) -> list[Path]:
    """Image files from files and folders (recursive); a missing path is an error, and a broken
    link inside a folder is left out with a :class:`~gc10lib.errors.SkippedImageWarning`."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                if f.suffix.lower() not in IMAGE_EXTENSIONS:
                    continue
                if f.is_file():
                    out.append(f)
                elif f.is_symlink():
                    warnings.warn(f"skipped {f}: a broken or looping link", SkippedImageWarning, stacklevel=2)
        elif p.is_file():
            out.append(p)
        elif p.is_symlink():
            raise NotFoundError(f"{p}: a broken or looping link, not an image")
        else:
            raise NotFoundError(f"{p}: no such file or folder")
    return out


def decode_images(files: Sequence[str | Path], size: int, policy: str) -> tuple[np.ndarray, list[Path]]:
    """``files`` decoded and resized in memory (nothing is cached), as one uint8 array, with the
    files that decoded; the others are left out with a :class:`~gc10lib.errors.SkippedImageWarning`."""
    arrays, ok = [], []
    for f in map(Path, files):
        try:
            arrays.append(resize_array(load_rgb(f), size, policy))
        except ImageReadError as exc:
            warnings.warn(f"skipped {f}: {exc}", SkippedImageWarning, stacklevel=2)
            continue
        ok.append(f)
    return (np.stack(arrays) if arrays else np.zeros((0, size, size, 3), np.uint8)), ok


def predict_files(
    model, paths: Sequence[str | Path], top_k: int = 3, policy: str | None = None, batch_size: int = 32
) -> pd.DataFrame:
    """One row per readable image: the top-k classes and probabilities (``policy``: the model's).

    ``model`` is a ``.keras``/``.tflite`` path, a Keras model or a :class:`Predictor`. Images are
    decoded in memory, ``batch_size`` at a time, so predicting never fills the image cache; no
    image found, or none readable, is an error.
    """
    pred = as_predictor(model)
    policy = policy or pred.policy
    files = collect_images(paths)
    if not files:
        raise InputError(
            f"{', '.join(map(str, paths))}: no image files found (looked for {', '.join(IMAGE_EXTENSIONS)})"
        )
    ok: list[Path] = []
    parts = []
    for i in range(0, len(files), max(1, int(batch_size))):
        x, good = decode_images(files[i : i + batch_size], pred.input_size, policy)
        if good:
            parts.append(pred(x))
            ok += good
    if not ok:
        raise InputError(f"none of the {len(files)} image file(s) could be read; see the warnings above")
    proba = np.concatenate(parts)
    k = max(1, min(top_k, len(pred.classes)))
    rows = []
    for f, p in zip(ok, proba, strict=True):
        order = np.argsort(-p)[:k]
        row = {"path": str(f)}
        for r, j in enumerate(order, start=1):
            row[f"class_{r}"] = pred.classes[j]
            row[f"prob_{r}"] = float(p[j])
        rows.append(row)
    return pd.DataFrame(rows)


def map_labels(
    dataset_classes: Sequence[str],
    model_classes: Sequence[str],
    present: Sequence[str],
    source: str = "class folder(s)",
) -> dict[int, int]:
    """Dataset label index -> model label index, by class name; unknown present classes are an error
    naming where they come from (``source``: the dataset's class folders, or a split manifest)."""
    unknown = [c for c in present if c not in model_classes]
    if unknown:
        raise InputError(
            f"{source} {unknown} are not among the model's classes {list(model_classes)}; "
            "this model cannot be evaluated on them."
        )
    return {i: list(model_classes).index(c) for i, c in enumerate(dataset_classes) if c in model_classes}


def labelled_subset(
    data_dir: str | Path, split_csv: str | Path | None, model_classes: Sequence[str], subset: str = "test"
) -> tuple[pd.DataFrame, dict[int, int]]:
    """The rows of one split subset (or the whole dataset) and their label mapping to ``model_classes``."""
    source = "class folder(s)"
    if split_csv:
        source = f"class(es) of the split {split_csv}"
        man = data.read_split(split_csv, data_root=data_dir)
        if subset not in data.SUBSETS:
            raise InputError(f"subset must be one of {data.SUBSETS}, got {subset!r}")
        table = man[man.subset == subset]
        ds_classes = data.split_classes(split_csv, man)
    else:
        ds = data.discover(data_dir)
        table, ds_classes = ds.table, ds.classes
        table.attrs["n_excluded"] = int(ds.quality.problem.isin(data.EXCLUDED_PROBLEMS).sum())
    if table.empty:
        raise InputError(f"{split_csv or data_dir}: no images in subset {subset!r}")
    return table, map_labels(ds_classes, model_classes, sorted(set(table["class"])), source)


def evaluate_model(
    model_path: str | Path | Predictor | keras.Model,
    data_dir: str | Path,
    split_csv: str | Path | None = None,
    subset: str = "test",
    policy: str | None = None,
    n_boot: int = 500,
) -> dict:
    """Metrics of a saved model on a dataset (all of it, or one subset of a split manifest).

    Works when the dataset holds only some of the model's classes; a class the model does not
    know is an error. ``policy`` overrides the resize policy the model records.
    """
    pred = as_predictor(model_path)
    policy = policy or pred.policy
    table, mapping = labelled_subset(data_dir, split_csv, pred.classes, subset)
    excluded = table.attrs.get("n_excluded", 0)  # left out by discovery (corrupt, broken links)
    ok = readable(list(table.path), pred.input_size, policy)
    proba = predict_proba(pred, ok, policy=policy)
    kept = table.set_index(table.path.map(str)).loc[[str(p) for p in ok]]
    y = np.array([mapping[int(label)] for label in kept.label])
    m = compute_metrics(y, proba, pred.classes, n_boot=n_boot)
    m.update(
        model=str(model_path),
        data=str(data_dir),
        subset=subset if split_csv else "all",
        policy=policy,
        n_skipped=len(table) - len(ok) + excluded,
    )
    return m


def evaluate_parts(
    model,
    out: Path,
    va: pd.DataFrame,
    te: pd.DataFrame,
    classes: list[str],
    metrics: dict,
    *,
    policy: str,
    batch_size: int = 32,
    seed: int = 42,
    known: dict[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Val and test metrics of ``model`` into ``metrics``; probabilities saved as ``proba_<part>.npy``.

    ``known`` holds probabilities already computed for a part (they are not predicted again).
    """
    probas = {}
    for name, part in (("val", va), ("test", te)):
        if len(part):
            proba = (known or {}).get(name)
            if proba is None:
                proba = predict_proba(model, list(part.path), policy=policy, batch_size=batch_size)
            metrics[name] = compute_metrics(part.label.to_numpy(), proba, classes, seed=seed)
            np.save(out / f"proba_{name}.npy", proba.astype(np.float32))
            probas[name] = proba
    return probas
