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
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

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
