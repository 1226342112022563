"""Backbone registry and classifiers that carry their own preprocessing and class names.

A classifier is::

    image (float 0..255, RGB, size x size)
      -> BackbonePreprocess(mode)          # registered, serialisable; never a Lambda
      -> backbone (keras.applications, include_top=False, BatchNorm in inference mode)
      -> GlobalAveragePooling2D ("pool")
      -> head: Normalization -> Dropout -> Dense softmax
                                           # a sub-model, so cached features can train it directly;
                                           # the feature standardisation is adapted on train features
      -> ClassNames(classes)               # identity; the class list travels inside the .keras file

Adding a backbone is one :class:`BackboneSpec` entry in :data:`REGISTRY`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from gc10lib.settings import weights_dir as env_weights_dir

PACKAGE = "gc10lib"
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
TORCH_MEAN = (0.485, 0.456, 0.406)
TORCH_STD = (0.229, 0.224, 0.225)


@keras.saving.register_keras_serializable(package=PACKAGE)
class BackbonePreprocess(keras.layers.Layer):
    """The ``preprocess_input`` of a ``keras.applications`` family, as a serialisable layer.

    Modes: ``tf`` (scale to [-1, 1]), ``caffe`` (RGB->BGR and ImageNet mean subtraction, no
    scaling), ``torch`` (scale to [0, 1] and normalise by ImageNet mean/std) and ``none``
    (identity: EfficientNet rescales inside the model itself, so nothing may be applied twice).
    """

    MODES = ("tf", "caffe", "torch", "none")

    def __init__(self, mode: str = "tf", **kwargs):
        super().__init__(**kwargs)
        if mode not in self.MODES:
            raise ValueError(f"unknown preprocessing mode {mode!r}; expected one of {self.MODES}")
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
    """Identity layer whose config carries the model's class names, in label order."""

    def __init__(self, class_names: Sequence[str] = (), **kwargs):
        super().__init__(**kwargs)
        self.class_names = [str(c) for c in class_names]

    def call(self, x):
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "class_names": list(self.class_names)}


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


@dataclass(frozen=True)
class BackboneSpec:
    """One ``keras.applications`` backbone."""

    name: str
    constructor: str  # attribute of keras.applications
    module: str  # keras.applications.<module> (holds its preprocess_input)
    native_size: int
    preprocess: str  # BackbonePreprocess mode
    weight_files: tuple[str, ...]  # accepted no-top file names in a weights folder
    min_size: int = 32
    kwargs: dict = field(default_factory=dict)
    cam_layer: str | None = None  # Grad-CAM feature map inside the backbone; None: the backbone's output

    def keras_preprocess(self, x: np.ndarray) -> np.ndarray:
        """Keras' own ``preprocess_input`` for this family (the reference for tests)."""
        mod = getattr(keras.applications, self.module)
        return np.asarray(mod.preprocess_input(np.array(x, dtype="float32", copy=True)))


REGISTRY: dict[str, BackboneSpec] = {
    s.name: s
    for s in [
        BackboneSpec("efficientnet_b5", "EfficientNetB5", "efficientnet", 456, "none", ("efficientnetb5_notop.h5",)),
        BackboneSpec("resnet50_v2", "ResNet50V2", "resnet_v2", 224, "tf",
                     ("resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5",)),
        BackboneSpec("inception_v3", "InceptionV3", "inception_v3", 299, "tf",
                     ("inception_v3_imagenet_notop.weights.h5", "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"),
                     min_size=75),
        BackboneSpec("mobilenet", "MobileNet", "mobilenet", 224, "tf",
                     ("mobilenet_1_0_224_imagenet_notop.weights.h5", "mobilenet_1_0_224_tf_no_top.h5")),
        BackboneSpec("mobilenet_v2", "MobileNetV2", "mobilenet_v2", 224, "tf",
                     ("mobilenet_v2_1_0_224_imagenet_notop.weights.h5",
                      "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5")),
        BackboneSpec("vgg19", "VGG19", "vgg19", 224, "caffe", ("vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",),
                     cam_layer="block5_conv4"),  # the output is block5_pool, one max-pool past the last conv
    ]
}
ALIASES = {"efficientnetb5": "efficientnet_b5", "resnet50v2": "resnet50_v2", "inceptionv3": "inception_v3",
            "mobilenetv2": "mobilenet_v2"}


def get_spec(name: str) -> BackboneSpec:
    """Look up a backbone by name (case and ``_`` insensitive aliases accepted)."""
    key = name.strip().lower()
    key = ALIASES.get(key.replace("_", "").replace("-", ""), key)
    if key not in REGISTRY:
        raise ValueError(f"unknown backbone {name!r}; known: {', '.join(REGISTRY)}")
    return REGISTRY[key]


def resolve_weights(spec: BackboneSpec, weights: str | None, weights_dir: str | Path | None = None) -> tuple[str | None, str]:
    """Turn ``"imagenet"``/``None``/a path into a Keras ``weights`` argument and a source label.

    ``"imagenet"`` first looks for an offline file in ``weights_dir`` (or ``$GC10_WEIGHTS_DIR``),
    then falls back to the Keras download.
    """
    if weights in (None, "", "none", "None", "random"):
        return None, "random"
    if weights == "imagenet":
        folder = Path(weights_dir) if weights_dir else env_weights_dir()
        if folder is not None:
            for fname in spec.weight_files:
                if (folder / fname).is_file():
                    return str(folder / fname), f"imagenet-file:{folder / fname}"
        return "imagenet", "imagenet-download"
    p = Path(weights).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"{p}: weights file not found for {spec.name}.")
    return str(p), f"file:{p}"


def build_backbone(spec: BackboneSpec, size: int, weights: str | None):
    """The ``include_top=False`` Keras application, with a clear error if weights can't be had."""
    if size < spec.min_size:
        raise ValueError(f"{spec.name} needs img_size >= {spec.min_size}, got {size}")
    ctor = getattr(keras.applications, spec.constructor)
    try:
        return ctor(include_top=False, weights=weights, input_shape=(size, size, 3), **spec.kwargs)
    except Exception as exc:
        if weights != "imagenet":
            raise
        raise RuntimeError(
            f"could not download ImageNet weights for {spec.constructor} ({type(exc).__name__}: {exc}). "
            f"Offline alternative: put {spec.weight_files[-1]} in a folder and set GC10_WEIGHTS_DIR to it "
            f"(or pass weights=<path to the file>), or use weights=None."
        ) from exc


def build_classifier(backbone: str, classes: Sequence[str], img_size: int | None = None, weights: str | None = None,
                     dropout: float = 0.2, weights_dir: str | Path | None = None, seed: int | None = None):
    """Build a classifier taking raw 0..255 RGB images; returns ``(model, weights_source)``."""
    spec = get_spec(backbone)
    size = int(img_size or spec.native_size)
    if seed is not None:
        keras.utils.set_random_seed(seed)
    w, source = resolve_weights(spec, weights, weights_dir)
    base = build_backbone(spec, size, w)
    base.name = "backbone"  # stable name for fine-tuning and Grad-CAM
    classes = list(classes)
    inputs = keras.Input((size, size, 3), name="image")
    x = BackbonePreprocess(spec.preprocess, name="preprocess")(inputs)
    # BatchNorm stays in inference mode, also when fine-tuning (random init: see
    # gc10lib.training.calibrate_batchnorm for where its statistics come from).
    x = base(x, training=False)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    head = keras.Sequential(
        [keras.Input((x.shape[-1],)), keras.layers.Normalization(axis=-1, name="feature_norm"),
         keras.layers.Dropout(dropout, seed=seed),
         keras.layers.Dense(len(classes), activation="softmax", dtype="float32", name="logits")],
        name="head",
    )
    out = ClassNames(classes, name="class_names", dtype="float32")(head(x))
    model = keras.Model(inputs, out, name=f"gc10_{spec.name}")
    return model, source


def model_classes(model) -> list[str]:
    """The class names a model carries (raises if it carries none)."""
    for layer in reversed(model.layers):
        if isinstance(layer, ClassNames):
            return list(layer.class_names)
    raise ValueError(f"model {model.name!r} carries no class names (no ClassNames layer)")


def model_input_size(model) -> int:
    """Side length of a model's square image input."""
    shape = model.inputs[0].shape
    return int(shape[1]) if shape[1] is not None else 224


def load_model(path: str | Path):
    """Load a ``.keras`` model in safe mode, with a clear error for a missing or foreign file."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: model file not found.")
    if p.suffix != ".keras":
        raise ValueError(f"{p}: expected a .keras model file.")
    import gc10lib.ensemble  # noqa: F401  (registers the ensemble layers before deserialising)

    try:
        return keras.saving.load_model(p, safe_mode=True)
    except Exception as exc:  # zip errors, unknown layers, ...
        raise ValueError(f"{p}: cannot load as a Keras model ({type(exc).__name__}: {exc})") from exc


__all__ = ["REGISTRY", "BackboneSpec", "BackbonePreprocess", "ClassNames", "ResizeTo", "build_classifier",
           "get_spec", "resolve_weights", "model_classes", "load_model"]
