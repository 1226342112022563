"""The backbone registry: which ``keras.applications`` backbones gc10lib knows, their native sizes,
preprocessing modes and offline weight files, and where a backbone's weights come from.

Adding a backbone is one :class:`BackboneSpec` entry in :data:`REGISTRY`. This module imports no
TensorFlow, so the config checks and ``gc10 run`` can read it without loading TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gc10lib.errors import InputError, NotFoundError
from gc10lib.settings import weights_dir as env_weights_dir


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
    # Layers an int8 export keeps in float (gc10lib.export): the stem, where full-integer rounding
    # of the first depthwise convolution's input is amplified by its BatchNorm-folded weights.
    int8_float: tuple[str, ...] = ()

    def keras_preprocess(self, x: np.ndarray) -> np.ndarray:
        """Keras' own ``preprocess_input`` for this family (the reference for tests)."""
        import keras  # lazy: the registry itself must not load TensorFlow

        mod = getattr(keras.applications, self.module)
        return np.asarray(mod.preprocess_input(np.array(x, dtype="float32", copy=True)))


REGISTRY: dict[str, BackboneSpec] = {
    s.name: s
    for s in [
        BackboneSpec("efficientnet_b5", "EfficientNetB5", "efficientnet", 456, "none", ("efficientnetb5_notop.h5",)),
        BackboneSpec(
            "resnet50_v2",
            "ResNet50V2",
            "resnet_v2",
            224,
            "tf",
            ("resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5",),
        ),
        BackboneSpec(
            "inception_v3",
            "InceptionV3",
            "inception_v3",
            299,
            "tf",
            ("inception_v3_imagenet_notop.weights.h5", "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"),
            min_size=75,
        ),
        BackboneSpec(
            "mobilenet",
            "MobileNet",
            "mobilenet",
            224,
            "tf",
            ("mobilenet_1_0_224_imagenet_notop.weights.h5", "mobilenet_1_0_224_tf_no_top.h5"),
            int8_float=("conv1", "conv_dw_1", "conv_pw_1"),
        ),
        BackboneSpec(
            "mobilenet_v2",
            "MobileNetV2",
            "mobilenet_v2",
            224,
            "tf",
            (
                "mobilenet_v2_1_0_224_imagenet_notop.weights.h5",
                "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
            ),
            int8_float=("Conv1", "expanded_conv_depthwise", "expanded_conv_project"),
        ),
        BackboneSpec(
            "vgg19",
            "VGG19",
            "vgg19",
            224,
            "caffe",
            ("vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",),
            cam_layer="block5_conv4",
        ),  # the output is block5_pool, one max-pool past the last conv
        # Newer families; keras.applications puts their input scaling inside the model, hence "none".
        BackboneSpec(
            "efficientnet_v2_s", "EfficientNetV2S", "efficientnet_v2", 384, "none", ("efficientnetv2-s_notop.h5",)
        ),
        BackboneSpec("convnext_tiny", "ConvNeXtTiny", "convnext", 224, "none", ("convnext_tiny_notop.h5",)),
        BackboneSpec(
            "mobilenet_v3_large",
            "MobileNetV3Large",
            "mobilenet_v3",
            224,
            "none",
            ("weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5",),
        ),
    ]
}
#: The six backbones of the original project (the others are newer additions).
ORIGINAL = ("efficientnet_b5", "resnet50_v2", "inception_v3", "mobilenet", "mobilenet_v2", "vgg19")
ALIASES = {
    "efficientnetb5": "efficientnet_b5",
    "resnet50v2": "resnet50_v2",
    "inceptionv3": "inception_v3",
    "mobilenetv2": "mobilenet_v2",
    "efficientnetv2s": "efficientnet_v2_s",
    "convnexttiny": "convnext_tiny",
    "mobilenetv3large": "mobilenet_v3_large",
}


def get_spec(name: str) -> BackboneSpec:
    """Look up a backbone by name (case and ``_`` insensitive aliases accepted)."""
    key = name.strip().lower()
    key = ALIASES.get(key.replace("_", "").replace("-", ""), key)
    if key not in REGISTRY:
        raise InputError(f"unknown backbone {name!r}; known: {', '.join(REGISTRY)}")
    return REGISTRY[key]


def resolve_weights(
    spec: BackboneSpec, weights: str | None, weights_dir: str | Path | None = None
) -> tuple[str | None, str]:
    """Turn ``"imagenet"``/``"auto"``/``None``/a path into a Keras ``weights`` argument and a source label.

    ``"imagenet"`` first looks for an offline file in ``weights_dir`` (or ``$GC10_WEIGHTS_DIR``),
    then falls back to the Keras download. ``"auto"`` does the same, and :func:`build_classifier`
    falls back to random init (and says so) where neither works.
    """
    if weights in (None, "", "none", "None", "random"):
        return None, "random"
    if weights in ("imagenet", "auto"):
        folder = Path(weights_dir) if weights_dir else env_weights_dir()
        if folder is not None:
            for fname in spec.weight_files:
                if (folder / fname).is_file():
                    return str(folder / fname), f"imagenet-file:{folder / fname}"
        return "imagenet", "imagenet-download"
    p = Path(weights).expanduser()
    if not p.is_file():
        raise NotFoundError(f"{p}: weights file not found for {spec.name}.")
    return str(p), f"file:{p}"


def weights_identity(source: str, seed: int) -> str:
    """A key for a weights source (:func:`resolve_weights`'s label) that changes when the weights do:
    a file's size and modification time, or the seed of a random init (BatchNorm calibrated)."""
    if source.startswith(("imagenet-file:", "file:")):
        p = Path(source.split(":", 1)[1])
        st = p.stat()
        return f"{source}|{st.st_size}|{st.st_mtime_ns}"
    return f"{source}|seed={seed}|bn-calibrated" if source == "random" else source
