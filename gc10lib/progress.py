"""Progress bars for the long, silent stretches: image caching, feature extraction, Grad-CAM over a
split, the quantization table.

``tqdm.auto`` draws a widget in Jupyter where ipywidgets is installed and text elsewhere (papermill's
executed notebooks and ``gc10 run``'s step logs). A bar appears only once its work has taken
``GC10_PROGRESS_DELAY`` seconds (default 5), so quick calls and tests print nothing, and it redraws
at most every ``GC10_PROGRESS_INTERVAL`` seconds (default 15), so the logs stay readable.
``GC10_PROGRESS=0`` turns every bar off.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable

with warnings.catch_warnings():  # tqdm.auto warns in Jupyter when ipywidgets is missing, then falls back to text
    warnings.simplefilter("ignore")
    from tqdm.auto import tqdm


def _seconds(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


def enabled() -> bool:
    """Whether bars are shown (``GC10_PROGRESS=0`` turns them off)."""
    return os.environ.get("GC10_PROGRESS", "1").strip().lower() not in ("0", "false", "no", "off")


def bar(iterable: Iterable | None = None, *, total: int | None = None, desc: str, unit: str = "img") -> tqdm:
    """A progress bar over ``iterable`` (or a manual one of ``total`` steps, advanced with ``update``)."""
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        delay=_seconds("GC10_PROGRESS_DELAY", 5.0),
        mininterval=_seconds("GC10_PROGRESS_INTERVAL", 15.0),
        disable=not enabled(),
        ascii=True,
        ncols=100,
    )


def predict_callback(total_batches: int, desc: str):
    """A Keras callback advancing one bar per ``Model.predict`` batch."""
    # lazy: keras/TensorFlow take seconds to import; the data tools that use bar() do not need them
    import keras

    class PredictBar(keras.callbacks.Callback):
        def on_predict_begin(self, logs=None):
            self.bar = bar(total=total_batches, desc=desc, unit="batch")

        def on_predict_batch_end(self, batch, logs=None):
            self.bar.update(1)

        def on_predict_end(self, logs=None):
            self.bar.close()

    return PredictBar()


__all__ = ["bar", "enabled", "predict_callback"]
