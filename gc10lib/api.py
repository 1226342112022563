"""gc10lib's public Python API: what a notebook of your own calls (re-exported by ``gc10lib``).

Each function is the one the ``gc10`` command and the numbered notebooks use, with the CLI's
vocabulary: a model is a ``.keras``/``.tflite`` file (or a loaded model), a run is a run folder,
``data`` is a dataset folder and ``out`` a new output folder (never overwritten).

>>> import gc10lib
>>> model = gc10lib.load_model("runs/xsdd/steps/06_distill/student_int8.tflite")
>>> gc10lib.predict(model, "new_images/").head()
>>> report = gc10lib.evaluate(model, "data/xsdd", split="runs/xsdd/split.csv", subset="test")
>>> report["accuracy"], report["macro_f1"]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from gc10lib import data as _data
from gc10lib import plots, steps
from gc10lib.backbones import load_model as load_keras
from gc10lib.config import DistillConfig, TrainConfig
from gc10lib.errors import InputError
from gc10lib.explanation import gradcam as _gradcam
from gc10lib.inference import Predictor, as_predictor, decode_images, evaluate_model, predict_files
from gc10lib.layers import model_info
from gc10lib.runfolder import RunFolder


def load_model(path: str | Path) -> Predictor:
    """A saved gc10lib model, ready to predict: ``.keras`` (Keras) or ``.tflite`` (LiteRT).

    The model describes itself: ``.classes``, ``.input_size`` and ``.policy`` (its resize policy).
    Calling it on a uint8/float array of RGB images at its input size returns class probabilities.

    >>> model = gc10lib.load_model("runs/demo/steps/02_finetune_mobilenet/model.keras")
    >>> model.classes, model.input_size
    """
    return as_predictor(Path(path))


def predict(
    model: Predictor | str | Path, images: str | Path | Sequence[str | Path], *, top_k: int = 3, batch_size: int = 32
) -> pd.DataFrame:
    """The top-``top_k`` classes and probabilities of each image in ``images`` (a file, a folder,
    searched recursively, or a list of them), one row per image: ``path``, ``class_1``,
    ``prob_1``, ... Unreadable files are left out with a warning; nothing is cached.

    >>> gc10lib.predict("model.keras", "new_images/", top_k=1)
    """
    paths = [images] if isinstance(images, (str, Path)) else list(images)
    return predict_files(model, paths, top_k=top_k, batch_size=batch_size)


def evaluate(
    model: Predictor | str | Path, data: str | Path, *, split: str | Path | None = None, subset: str = "test"
) -> dict[str, Any]:
    """The metrics ``gc10 evaluate`` prints: accuracy, balanced accuracy, macro-F1, per-class
    precision/recall/F1, the confusion matrix, bootstrap 95% intervals and how many images were
    left out. On the whole of ``data``, or on one ``subset`` of a ``split`` manifest.

    >>> r = gc10lib.evaluate("model.keras", "data/xsdd", split="runs/xsdd/split.csv", subset="test")
    >>> r["accuracy"], r["per_class"]["red_iron"]["f1"]
    """
    return evaluate_model(model, data, split, subset)


def discover(path: str | Path) -> _data.Dataset:
    """A dataset folder read: its layout (Kaggle GC10 or folder-per-class), classes, one row per
    image (``.table``) and the data-quality table (``.quality``) of what was left out and why.

    >>> ds = gc10lib.discover("data/xsdd")
    >>> ds.classes, len(ds), ds.quality.problem.value_counts()
    """
    return _data.discover(path)


def train(
    data: str | Path,
    config: TrainConfig | Mapping[str, Any] | None = None,
    *,
    split: str | Path | None = None,
    out: str | Path | None = None,
    **settings: Any,
) -> dict:
    """Train one backbone through the phases (probe, head, fine-tune, map head) and save the state
    validation prefers; returns its metrics (also in ``<out>/metrics.json``). ``settings`` are
    :class:`~gc10lib.config.TrainConfig` fields, checked when the config is made.

    >>> m = gc10lib.train("data/xsdd", backbone="mobilenet", img_size=224, map_head=True)
    >>> m["val"]["accuracy"], m["selected"]["phase"], m["model_path"]
    """
    cfg = _config(TrainConfig, config, settings)
    return steps.train.run(cfg, data, out, split_csv=split)


def ensemble(
    run: str | Path | RunFolder,
    *,
    methods: Sequence[str] = ("mean", "weighted", "stack", "select"),
    out: str | Path | None = None,
    data: str | Path | None = None,
    split: str | Path | None = None,
    seed: int = 42,
) -> pd.DataFrame:
    """The ensemble step on a run's trained backbones: every method fitted and scored on
    validation (cross-fitted), the chosen one named in ``table.attrs["best_ensemble"]``.

    >>> table = gc10lib.ensemble("runs/xsdd")
    """
    folder = _run(run)
    data_dir, split_csv = folder.inputs(data, split)
    table, _ = steps.ensemble.run(folder.dir, list(methods), out, data_dir, split_csv, seed=seed)
    return table


def quantize(
    run: str | Path | RunFolder,
    *,
    models: Sequence[str] = ("best_backbone", "best_ensemble"),
    variants: Sequence[str] = ("float32", "float16", "dynamic", "int8"),
    out: str | Path | None = None,
    data: str | Path | None = None,
    split: str | Path | None = None,
    seed: int = 42,
) -> pd.DataFrame:
    """LiteRT files of a run's models, each against its Keras original: size, accuracy, agreement
    and speed (the quantize step).

    >>> gc10lib.quantize("runs/xsdd", models=["best_backbone"], variants=["int8"])
    """
    folder = _run(run)
    data_dir, split_csv = folder.inputs(data, split)
    return steps.quantize.run(folder.dir, data_dir, split_csv, out, list(models), list(variants), seed=seed)


def distill(
    run: str | Path | RunFolder,
    config: DistillConfig | Mapping[str, Any] | None = None,
    *,
    teacher: str = "best_ensemble",
    out: str | Path | None = None,
    data: str | Path | None = None,
    split: str | Path | None = None,
    int8: bool = True,
    **settings: Any,
) -> dict:
    """A small student on the soft targets of a run's chosen ensemble (the distill step); with
    ``int8``, its int8 LiteRT file and the deployment table. Returns the student's metrics.

    >>> m = gc10lib.distill("runs/xsdd", student="mobilenet_v2", epochs_finetune=0)
    """
    folder = _run(run)
    data_dir, split_csv = folder.inputs(data, split)
    metrics, _ = steps.distill.run(
        folder.dir, data_dir, split_csv, out, _config(DistillConfig, config, settings), teacher, quantize=int8
    )
    return metrics


def explain(
    run: str | Path | RunFolder,
    *,
    models: Sequence[str] = ("best_backbone", "best_ensemble"),
    per_class: int | None = 5,
    out: str | Path | None = None,
    data: str | Path | None = None,
    split: str | Path | None = None,
    seed: int = 42,
) -> pd.DataFrame:
    """Grad-CAM of a run's models on test images, scored against the dataset's boxes (pointing
    game, energy in box), with overlays written to ``out`` (the explain step).

    >>> gc10lib.explain("runs/neu", per_class=3)
    """
    folder = _run(run)
    data_dir, split_csv = folder.inputs(data, split)
    table, _ = steps.explain.run(folder.dir, data_dir, split_csv, out, list(models), per_class=per_class, seed=seed)
    return table


def gradcam(
    model: str | Path, images: np.ndarray | Sequence[str | Path], targets: Sequence[int] | None = None
) -> np.ndarray:
    """Grad-CAM maps (``n x size x size``, 0..1) of a ``.keras`` classifier or ensemble for
    ``images`` (RGB arrays at its input size, or image files), for ``targets`` (default: the
    predicted classes).

    >>> cams = gc10lib.gradcam("model.keras", ["a.jpg", "b.jpg"])
    """
    clf = load_keras(model)
    x = _as_images(clf, images)
    if targets is None:
        targets = np.asarray(clf.predict(x, verbose=0)).argmax(1)
    cams, _ = _gradcam(clf, x, list(targets))
    return cams


def plot_gradcam(model: str | Path, images: Sequence[str | Path], targets: Sequence[int] | None = None):
    """A figure: each image at the model's input size with its Grad-CAM overlaid, titled with the
    predicted class and its probability.

    >>> fig = gc10lib.plot_gradcam("model.keras", ["a.jpg", "b.jpg"])
    """
    clf = load_keras(model)
    x = _as_images(clf, images)
    proba = np.asarray(clf.predict(x, verbose=0))
    cams, _ = _gradcam(clf, x, list(proba.argmax(1) if targets is None else targets))
    classes = model_info(clf).classes
    fig, axes = plt.subplots(1, len(x), figsize=(3 * len(x), 3.2), squeeze=False)
    for ax, im, cam, p in zip(axes[0], x, cams, proba, strict=True):
        plots.cam_overlay(ax, im.astype(np.uint8), cam, title=f"{classes[int(p.argmax())]} {p.max():.2f}")
    fig.tight_layout()
    return fig


def _as_images(clf, images) -> np.ndarray:
    """Images at the classifier's input size: an array as it is, or files decoded and resized in memory."""
    if isinstance(images, np.ndarray):
        return images.astype(np.float32)
    info = model_info(clf)
    x, ok = decode_images(list(images), info.input_size, info.policy)
    if not ok:
        raise InputError("none of the images could be read; see the warnings above")
    return x.astype(np.float32)


def _run(run: str | Path | RunFolder) -> RunFolder:
    return run if isinstance(run, RunFolder) else RunFolder(run)


def _config(cls, config, settings: Mapping[str, Any]):
    """A config of ``cls`` from an instance, a flat mapping (a config file's values) or none, with
    ``settings`` applied; every value is checked."""
    if isinstance(config, cls):
        base = {k: getattr(config, k) for k in cls.defaults()}
        return cls(**{**base, **settings})
    return cls.from_params({**(config or {}), **{cls.ALIASES.get(k, k): v for k, v in settings.items()}})
