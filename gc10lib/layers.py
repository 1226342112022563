"""Every registered Keras layer of gc10lib, and the metadata a saved model carries about itself.

All layers are registered under the package name ``gc10lib``, so ``.keras`` files load with
``keras.saving.load_model(path)`` in safe mode once this module is imported (which
:func:`gc10lib.backbones.load_model` does). None of them is a ``Lambda``.

:class:`ClassNames` is the last layer of every gc10lib model: an identity whose config holds the
class names in label order and a small ``info`` mapping (backbones, resize policy, input size,
weights source, ensemble method). :func:`model_info` reads it back as a :class:`ModelInfo`, so
every tool takes its defaults from the model rather than from a flag or a file beside it. Files
saved before ``info`` existed still load; they report the ``stretch`` policy the tools assumed then.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import keras
import numpy as np

from gc10lib.errors import InputError

PACKAGE = "gc10lib"
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
TORCH_MEAN = (0.485, 0.456, 0.406)
TORCH_STD = (0.229, 0.224, 0.225)
EPS = 1e-7
LEGACY_POLICY = "stretch"  # what every tool assumed before models recorded their policy


@keras.saving.register_keras_serializable(package=PACKAGE)
class BackbonePreprocess(keras.layers.Layer):
    """The ``preprocess_input`` of a ``keras.applications`` family, as a serializable layer.

    Modes: ``tf`` (scale to [-1, 1]), ``caffe`` (RGB->BGR and ImageNet mean subtraction, no
    scaling), ``torch`` (scale to [0, 1] and normalize by ImageNet mean/std) and ``none``
    (identity: EfficientNet rescales inside the model itself, so nothing may be applied twice).
    """

    MODES = ("tf", "caffe", "torch", "none")

    def __init__(self, mode: str = "tf", **kwargs):
        super().__init__(**kwargs)
        if mode not in self.MODES:
            raise InputError(f"unknown preprocessing mode {mode!r}; expected one of {self.MODES}")
        self.mode = mode

    def call(self, x):
        x = keras.ops.cast(x, self.compute_dtype)
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "caffe":
            x = keras.ops.flip(x, axis=-1)
            return x - keras.ops.convert_to_tensor(np.asarray(CAFFE_MEAN_BGR, "float32"), dtype=self.compute_dtype)
        if self.mode == "torch":
            mean = keras.ops.convert_to_tensor(np.asarray(TORCH_MEAN, "float32"), dtype=self.compute_dtype)
            std = keras.ops.convert_to_tensor(np.asarray(TORCH_STD, "float32"), dtype=self.compute_dtype)
            return (x / 255.0 - mean) / std
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package=PACKAGE)
class ClassNames(keras.layers.Layer):
    """Identity layer whose config carries the class names (label order) and the model's ``info``."""

    def __init__(self, class_names: Sequence[str] = (), info: dict | None = None, **kwargs):
        super().__init__(**kwargs)
        self.class_names = [str(c) for c in class_names]
        self.info = dict(info or {})

    def call(self, x):
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "class_names": list(self.class_names), "info": dict(self.info)}


@keras.saving.register_keras_serializable(package=PACKAGE)
class ResizeTo(keras.layers.Layer):
    """Bilinear resize to ``size x size`` inside a model (used by ensembles' branches)."""

    def __init__(self, size: int, **kwargs):
        super().__init__(**kwargs)
        self.size = int(size)

    def call(self, x):
        return keras.ops.image.resize(x, (self.size, self.size), interpolation="bilinear", antialias=True)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.size, self.size, input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "size": self.size}


@keras.saving.register_keras_serializable(package=PACKAGE)
class TileGrid(keras.layers.Layer):
    """Cut each ``s x s`` image into a ``grid x grid`` grid of ``s/grid`` tiles, stacked on the batch axis.

    ``(b, s, s, c) -> (b * grid**2, s/grid, s/grid, c)``, tiles row by row: an exact reshape, no
    resampling, so a backbone sees each tile at ``grid`` times the resolution it would see the
    whole image at the same cost per pass. :meth:`merge` is the inverse, for per-tile maps.
    """

    def __init__(self, grid: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.grid = int(grid)

    def call(self, x):
        g = self.grid
        s, c = x.shape[1], x.shape[-1]
        t = s // g
        x = keras.ops.reshape(x, (-1, g, t, g, t, c))
        x = keras.ops.transpose(x, (0, 1, 3, 2, 4, 5))
        return keras.ops.reshape(x, (-1, t, t, c))

    def merge(self, maps):
        """Per-tile maps ``(b * grid**2, h, w, c)`` back to whole-image maps ``(b, grid*h, grid*w, c)``."""
        g = self.grid
        h, w, c = maps.shape[1], maps.shape[2], maps.shape[3]
        x = keras.ops.reshape(maps, (-1, g, g, h, w, c))
        x = keras.ops.transpose(x, (0, 1, 3, 2, 4, 5))
        return keras.ops.reshape(x, (-1, g * h, g * w, c))

    def compute_output_shape(self, input_shape):
        b = None if input_shape[0] is None else input_shape[0] * self.grid**2
        t = None if input_shape[1] is None else input_shape[1] // self.grid
        return (b, t, t, input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "grid": self.grid}


@keras.saving.register_keras_serializable(package=PACKAGE)
class TilePool(keras.layers.Layer):
    """Pool per-tile feature vectors ``(b * tiles, f)`` into one per image: ``max``, ``mean`` or
    ``meanmax`` (both, concatenated: ``(b, 2f)``)."""

    MODES = ("max", "mean", "meanmax")

    def __init__(self, tiles: int = 4, mode: str = "max", **kwargs):
        super().__init__(**kwargs)
        if mode not in self.MODES:
            raise InputError(f"unknown tile pooling {mode!r}; expected one of {self.MODES}")
        self.tiles, self.mode = int(tiles), mode

    def call(self, x):
        x = keras.ops.reshape(x, (-1, self.tiles, x.shape[-1]))
        if self.mode == "max":
            return keras.ops.max(x, axis=1)
        if self.mode == "mean":
            return keras.ops.mean(x, axis=1)
        return keras.ops.concatenate([keras.ops.mean(x, axis=1), keras.ops.max(x, axis=1)], axis=-1)

    def compute_output_shape(self, input_shape):
        b = None if input_shape[0] is None else input_shape[0] // self.tiles
        return (b, input_shape[-1] * (2 if self.mode == "meanmax" else 1))

    def get_config(self):
        return {**super().get_config(), "tiles": self.tiles, "mode": self.mode}


@keras.saving.register_keras_serializable(package=PACKAGE)
class WeightedAverage(keras.layers.Layer):
    """Fixed convex combination of a list of probability tensors (weights live in the config)."""

    def __init__(self, weights: Sequence[float] = (), **kwargs):
        super().__init__(**kwargs)
        self.member_weights = [float(w) for w in weights]

    def call(self, inputs):
        out = inputs[0] * self.member_weights[0]
        for x, w in zip(inputs[1:], self.member_weights[1:], strict=True):
            out = out + x * w
        return out

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {**super().get_config(), "weights": list(self.member_weights)}


@keras.saving.register_keras_serializable(package=PACKAGE)
class SafeLog(keras.layers.Layer):
    """``log(clip(p, eps, 1))`` — the stacker's input features."""

    def __init__(self, eps: float = EPS, **kwargs):
        super().__init__(**kwargs)
        self.eps = float(eps)

    def call(self, x):
        return keras.ops.log(keras.ops.clip(x, self.eps, 1.0))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "eps": self.eps}


# --------------------------------------------------------------------------- what a model says about itself


@dataclass(frozen=True)
class ModelInfo:
    """What a saved gc10lib model carries about itself."""

    classes: list[str]
    input_size: int
    policy: str = LEGACY_POLICY
    backbones: list[str] = field(default_factory=list)
    weights_source: str | None = None
    method: str | None = None  # the ensemble method; None for a single classifier
    tiles: int = 1  # grid side of a tiled classifier (:class:`TileGrid`); 1 for a whole-image one
    tile_pool: str | None = None  # how a tiled classifier pools its tiles' features

    def as_info(self) -> dict:
        """The ``info`` mapping stored in :class:`ClassNames` (classes and size live elsewhere)."""
        info = {
            "policy": self.policy,
            "backbones": list(self.backbones),
            "weights_source": self.weights_source,
            "method": self.method,
        }
        if self.tiles > 1:
            info.update(tiles=self.tiles, tile_pool=self.tile_pool)
        return info


def _class_names_layer(model) -> ClassNames:
    for layer in reversed(model.layers):
        if isinstance(layer, ClassNames):
            return layer
    raise InputError(f"model {model.name!r} carries no class names (no ClassNames layer); it was not built by gc10lib")


def tile_grid(model) -> TileGrid | None:
    """The :class:`TileGrid` layer of a tiled classifier (named ``tiles``), else None."""
    return model.get_layer("tiles") if "tiles" in {la.name for la in model.layers} else None


def model_input_size(model) -> int:
    """Side length of a model's square image input."""
    shape = model.inputs[0].shape
    return int(shape[1]) if shape[1] is not None else 224


def model_classes(model) -> list[str]:
    """The class names a model carries (an :class:`InputError` if it carries none)."""
    return list(_class_names_layer(model).class_names)


def _legacy_backbones(model) -> list[str]:
    """Backbone names of a file saved before ``info`` existed, from its sub-model names."""
    names = []
    for m in [model, *[la for la in model.layers if isinstance(la, keras.Model)]]:
        if any(la.name == "backbone" for la in m.layers):
            name = m.name.removeprefix("gc10_")
            names.append(name.split("_", 1)[1] if name.startswith("branch") else name)
    return names


def model_info(model) -> ModelInfo:
    """The :class:`ModelInfo` of a gc10lib classifier or ensemble."""
    layer = _class_names_layer(model)
    info = layer.info
    return ModelInfo(
        classes=list(layer.class_names),
        input_size=model_input_size(model),
        policy=info.get("policy") or LEGACY_POLICY,
        backbones=list(info.get("backbones") or _legacy_backbones(model)),
        weights_source=info.get("weights_source"),
        method=info.get("method"),
        tiles=int(info.get("tiles") or 1),
        tile_pool=info.get("tile_pool"),
    )


__all__ = [
    "BackbonePreprocess",
    "ClassNames",
    "ModelInfo",
    "ResizeTo",
    "SafeLog",
    "TileGrid",
    "TilePool",
    "WeightedAverage",
    "model_classes",
    "model_info",
    "model_input_size",
    "tile_grid",
]
