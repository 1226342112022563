"""gc10lib: metal-surface defect classification on GC10-DET and datasets like it.

Transfer learning from ImageNet backbones whose preprocessing lives inside the model, ensembles
that take raw images, int8 LiteRT files and a distilled student, Grad-CAM against the boxes, and
the papermill pipeline behind ``gc10 run``. The public API, for notebooks of your own::

    import gc10lib

    model = gc10lib.load_model("runs/demo/steps/02_finetune_mobilenet/model.keras")  # or a .tflite
    table = gc10lib.predict(model, "new_images/")              # one row per image, top-3 classes
    report = gc10lib.evaluate(model, "data/gc10", split="runs/demo/split.csv", subset="test")
    ds = gc10lib.discover("data/gc10")                          # classes, images, data-quality table
    run = gc10lib.RunFolder("runs/demo")                       # config, split, models of a run

    gc10lib.train("data/gc10", backbone="mobilenet", img_size=224)   # one backbone, the phases
    gc10lib.ensemble(run); gc10lib.quantize(run); gc10lib.distill(run); gc10lib.explain(run)

``import gc10lib`` is light: TensorFlow loads on first use of a function that needs it.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("gc10lib")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

#: public name -> the module that defines it
_EXPORTS = {
    "load_model": "gc10lib.api",
    "predict": "gc10lib.api",
    "evaluate": "gc10lib.api",
    "discover": "gc10lib.api",
    "train": "gc10lib.api",
    "ensemble": "gc10lib.api",
    "quantize": "gc10lib.api",
    "distill": "gc10lib.api",
    "explain": "gc10lib.api",
    "gradcam": "gc10lib.api",
    "plot_gradcam": "gc10lib.api",
    "RunFolder": "gc10lib.runfolder",
    "TrainConfig": "gc10lib.config",
    "DistillConfig": "gc10lib.config",
    "Gc10Error": "gc10lib.errors",
}

__all__ = [
    "DistillConfig",
    "Gc10Error",
    "RunFolder",
    "TrainConfig",
    "__version__",
    "discover",
    "distill",
    "ensemble",
    "evaluate",
    "explain",
    "gradcam",
    "load_model",
    "plot_gradcam",
    "predict",
    "quantize",
    "train",
]

if TYPE_CHECKING:
    from gc10lib.api import (
        discover,
        distill,
        ensemble,
        evaluate,
        explain,
        gradcam,
        load_model,
        plot_gradcam,
        predict,
        quantize,
        train,
    )
    from gc10lib.config import DistillConfig, TrainConfig
    from gc10lib.errors import Gc10Error
    from gc10lib.runfolder import RunFolder


def __getattr__(name: str) -> Any:
    """The public names, imported on first use (so ``import gc10lib`` does not load TensorFlow)."""
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'gc10lib' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
