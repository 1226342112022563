"""Inference on files and datasets for saved models (``.keras``), behind ``gc10 predict``/``evaluate``."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from gc10lib import data
from gc10lib.data import IMAGE_EXTENSIONS
from gc10lib.inputs import ImageCache, ImageReadError


class KerasPredictor:
    """A ``.keras`` classifier or ensemble, loaded in safe mode, with its class names."""

    def __init__(self, path: str | Path):
        from gc10lib.backbones import load_model, model_classes

        self.path = Path(path)
        self.model = load_model(self.path)
        self.classes = model_classes(self.model)
        self.input_size = int(self.model.inputs[0].shape[1])

    def predict_array(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Probabilities for uint8/float RGB images already at ``input_size``."""
        return np.asarray(self.model.predict(np.asarray(images, np.float32), batch_size=batch_size, verbose=0), np.float64)


def load_predictor(path: str | Path):
    """A predictor for a model file, chosen by its suffix."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: model file not found.")
    if p.suffix == ".keras":
        return KerasPredictor(p)
    if p.suffix == ".tflite":
        from gc10lib.export import LiteRTPredictor

        return LiteRTPredictor(p)
    raise ValueError(f"{p}: unsupported model file; expected .keras or .tflite")


def collect_images(paths: Sequence[str | Path]) -> list[Path]:
    """Image files from files and folders (recursive); missing paths are an error."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    return out


def predict_probabilities(predictor, files: Sequence[str | Path], policy: str = "stretch",
                          batch_size: int = 32) -> tuple[np.ndarray, list[Path]]:
    """Probabilities for readable files; unreadable ones are skipped with a warning naming them."""
    from PIL import Image

    cache = ImageCache(predictor.input_size, policy)
    arrays, ok = [], []
    for f in map(Path, files):
        try:
            cached = cache.ensure_one(f)
        except ImageReadError as exc:
            warnings.warn(f"skipped {f}: {exc}", stacklevel=2)
            continue
        arrays.append(np.asarray(Image.open(cached).convert("RGB")))
        ok.append(f)
    if not ok:
        return np.zeros((0, len(predictor.classes))), []
    probs = [predictor.predict_array(np.stack(arrays[i:i + 256]), batch_size) for i in range(0, len(arrays), 256)]
    return np.concatenate(probs), ok


def predict_files(model_path: str | Path, paths: Sequence[str | Path], top_k: int = 3, policy: str = "stretch") -> pd.DataFrame:
    """One row per readable image: the top-k classes and probabilities."""
    pred = load_predictor(model_path)
    files = collect_images(paths)
    proba, ok = predict_probabilities(pred, files, policy)
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


def map_labels(dataset_classes: Sequence[str], model_classes: Sequence[str], present: Sequence[str]) -> dict[int, int]:
    """Dataset label index -> model label index, by class name; unknown present classes are an error."""
    unknown = [c for c in present if c not in model_classes]
    if unknown:
        raise ValueError(
            f"class folder(s) {unknown} are not among the model's classes {list(model_classes)}; "
            "this model cannot be evaluated on them."
        )
    return {i: list(model_classes).index(c) for i, c in enumerate(dataset_classes) if c in model_classes}


def labelled_subset(data_dir: str | Path, split_csv: str | Path | None, model_classes: Sequence[str],
                    subset: str = "test") -> tuple[pd.DataFrame, dict[int, int]]:
    """The rows of one split subset (or the whole dataset) and their label mapping to ``model_classes``."""
    if split_csv:
        man = data.read_split(split_csv, data_root=data_dir)
        if subset not in data.SUBSETS:
            raise ValueError(f"subset must be one of {data.SUBSETS}, got {subset!r}")
        table = man[man.subset == subset]
        ds_classes = data.split_classes(split_csv) or sorted(table["class"].unique())
    else:
        ds = data.discover(data_dir)
        table, ds_classes = ds.table, ds.classes
    if table.empty:
        raise ValueError(f"{split_csv or data_dir}: no images in subset {subset!r}")
    return table, map_labels(ds_classes, model_classes, sorted(set(table["class"])))


def evaluate_model(model_path: str | Path, data_dir: str | Path, split_csv: str | Path | None = None,
                   subset: str = "test", policy: str = "stretch", n_boot: int = 500) -> dict:
    """Metrics of a saved model on a dataset (all of it, or one subset of a split manifest).

    Works when the dataset holds only some of the model's classes; a class the model does not
    know is an error.
    """
    from gc10lib.evaluation import compute_metrics

    pred = load_predictor(model_path)
    table, mapping = labelled_subset(data_dir, split_csv, pred.classes, subset)
    proba, ok = predict_probabilities(pred, list(table.path), policy)
    kept = table.set_index(table.path.map(str)).loc[[str(p) for p in ok]]
    y = np.array([mapping[int(label)] for label in kept.label])
    m = compute_metrics(y, proba, pred.classes, n_boot=n_boot)
    m.update(model=str(model_path), data=str(data_dir), subset=subset if split_csv else "all",
             n_skipped=len(table) - len(ok))
    return m
