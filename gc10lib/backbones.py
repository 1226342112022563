"""Backbone registry and classifiers that carry their own preprocessing and class names.

A classifier is::

    image (float 0..255, RGB, size x size)
      -> BackbonePreprocess(mode)          # registered, serializable; never a Lambda
      -> backbone (keras.applications, include_top=False, BatchNorm in inference mode)
      -> GlobalAveragePooling2D ("pool")
      -> head: Normalization -> Dropout -> Dense softmax
                                           # a sub-model, so cached features can train it directly;
                                           # the feature standardization is adapted on train features
      -> ClassNames(classes, info)         # identity; classes, policy, size and weights source
                                           # travel inside the .keras file (gc10lib.layers.model_info)

Adding a backbone is one :class:`BackboneSpec` entry in :data:`REGISTRY`.
"""

from __future__ import annotations

import logging
import shutil
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from gc10lib.errors import InputError, NotFoundError, SetupError
from gc10lib.layers import BackbonePreprocess, ClassNames, ModelInfo, TileGrid, TilePool, tile_grid
from gc10lib.settings import weights_dir as env_weights_dir

log = logging.getLogger(__name__)


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


def build_backbone(spec: BackboneSpec, size: int, weights: str | None):
    """The ``include_top=False`` Keras application, with a clear error if weights can't be had."""
    if size < spec.min_size:
        raise InputError(f"{spec.name} needs img_size >= {spec.min_size}, got {size}")
    ctor = getattr(keras.applications, spec.constructor)
    try:
        return ctor(include_top=False, weights=weights, input_shape=(size, size, 3), **spec.kwargs)
    except Exception as exc:
        if weights != "imagenet":
            raise
        raise SetupError(
            f"could not download ImageNet weights for {spec.constructor} ({type(exc).__name__}: {exc}). "
            f"Offline alternative: put {spec.weight_files[-1]} in a folder and set GC10_WEIGHTS_DIR to it "
            f"(or pass weights=<path to the file>), or use weights=None."
        ) from exc


def build_classifier(
    backbone: str,
    classes: Sequence[str],
    img_size: int | None = None,
    weights: str | None = None,
    dropout: float = 0.2,
    weights_dir: str | Path | None = None,
    seed: int | None = None,
    policy: str = "stretch",
    tiles: int = 1,
    tile_pool: str = "max",
):
    """Build a classifier taking raw 0..255 RGB images; returns ``(model, weights_source)``.

    ``policy`` is the resize policy its images are made with; the model records it (with its
    classes, size, tiling and weights source) so that every tool reads it back from the file.

    ``tiles=g > 1`` cuts the ``img_size`` input (default ``g`` x the native size) into a ``g x g``
    grid (:class:`TileGrid`); the backbone, built at ``img_size / g``, sees every tile at full detail, and the tiles' pooled
    features are pooled again per image (:class:`TilePool`, ``tile_pool``: max, mean or meanmax)
    before the head. Cost: ``g**2`` backbone passes at tile size per image.
    """
    spec = get_spec(backbone)
    tiles = int(tiles)
    size = int(img_size or spec.native_size * max(tiles, 1))  # default: every tile at the native size
    if tiles < 1 or size % tiles:
        raise InputError(f"tiles must be a whole number >= 1 that divides img_size {size}, got {tiles}")
    tile = size // tiles
    if seed is not None:
        keras.utils.set_random_seed(seed)
    w, source = resolve_weights(spec, weights, weights_dir)
    try:
        base = build_backbone(spec, tile, w)
    except SetupError as exc:
        if weights != "auto":
            raise
        log.warning("%s: ImageNet weights unavailable (%s); random init instead", spec.name, str(exc).split(". ")[0])
        w, source = None, "random"
        base = build_backbone(spec, tile, None)
    base.name = "backbone"  # stable name for fine-tuning and Grad-CAM
    classes = list(classes)
    inputs = keras.Input((size, size, 3), name="image")
    x = BackbonePreprocess(spec.preprocess, name="preprocess")(inputs)
    if tiles > 1:
        x = TileGrid(tiles, name="tiles")(x)
    # BatchNorm in inference mode. Keras 3 lets a call with training=True override this for
    # trainable BatchNorm layers, so set_finetune_trainable keeps them frozen when fine-tuning
    # (random init: see calibrate_batchnorm for where their statistics come from).
    x = base(x, training=False)
    if tiles > 1:  # "pool" is always the per-image feature vector the head reads
        x = keras.layers.GlobalAveragePooling2D(name="tile_features")(x)
        x = TilePool(tiles * tiles, tile_pool, name="pool")(x)
    else:
        x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    head = keras.Sequential(
        [
            keras.Input((x.shape[-1],)),
            keras.layers.Normalization(axis=-1, name="feature_norm"),
            keras.layers.Dropout(dropout, seed=seed),
            keras.layers.Dense(len(classes), activation="softmax", dtype="float32", name="logits"),
        ],
        name="head",
    )
    info = ModelInfo(
        classes, size, policy, [spec.name], source, tiles=tiles, tile_pool=tile_pool if tiles > 1 else None
    )
    out = ClassNames(classes, info.as_info(), name="class_names", dtype="float32")(head(x))
    model = keras.Model(inputs, out, name=f"gc10_{spec.name}")
    return model, source


def adapt_feature_norm(head, features: np.ndarray, floor: float = 0.05) -> None:
    """Standardize the head's input features, flooring each variance at ``floor`` x the median.

    Without the floor, near-constant features (common with few training images) get divided by
    tiny standard deviations: harmless in float32, but int8 quantization then turns their noise
    into large, wrong logits.
    """
    norm = head.get_layer("feature_norm")
    norm.adapt(features)
    norm.adapt_variance.assign(floored_variance(features, floor))
    norm.finalize_state()


def floored_variance(features: np.ndarray, floor: float = 0.05) -> np.ndarray:
    """Per-feature variance, floored at ``floor`` x its median (the head's standardization)."""
    var = np.var(features, axis=0)
    return np.maximum(var, floor * float(np.median(var)) + 1e-8).astype(np.float32)


def set_finetune_trainable(model, fraction: float) -> int:
    """Unfreeze the top ``fraction`` of the backbone's layers, BatchNorm excluded; returns how many."""
    base = model.get_layer("backbone")
    base.trainable = True
    layers = base.layers
    cut = int(round(len(layers) * (1.0 - fraction)))
    n = 0
    for i, layer in enumerate(layers):
        train = i >= cut and not isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = train
        n += int(train and bool(layer.weights))
    return n


def calibrate_batchnorm(model, images: np.ndarray, batch_size: int | None = None) -> int:
    """Set every BatchNorm's moving statistics to those of ``images`` (training-mode passes).

    For ``weights=None`` only in the pipeline: randomly initialized BatchNorm layers hold mean 0 /
    variance 1, which in inference mode lets activations blow up or vanish through a deep backbone
    and makes frozen random features useless. Each layer's statistics come from its own (already
    normalized) input: one pass at momentum 0, or with ``batch_size`` the mean of the per-batch
    statistics (momentum ``k / (k + 1)`` at batch ``k``), for image sets too large for one pass.
    Returns the number of layers calibrated.
    """
    base = model.get_layer("backbone")
    bns = [la for la in base._flatten_layers() if isinstance(la, keras.layers.BatchNormalization)]
    if not bns:
        return 0
    saved = [(la, la.momentum, la.trainable) for la in bns]
    base_trainable = base.trainable
    base.trainable = True
    preprocess, grid = model.get_layer("preprocess"), tile_grid(model)
    step = batch_size or len(images)
    for k, start in enumerate(range(0, len(images), step)):
        for la in bns:
            la.momentum, la.trainable = k / (k + 1), True
        x = preprocess(keras.ops.convert_to_tensor(images[start : start + step], "float32"))
        base(x if grid is None else grid(x), training=True)
    for la, m, t in saved:
        la.momentum, la.trainable = m, t
    base.trainable = base_trainable
    return len(bns)


def save_model(model, path: str | Path) -> Path:
    """Save ``model`` as a lean ``.keras``: architecture and weights only, never optimizer or compile
    state (a compiled model, or a compiled sub-model such as the phase-1 head, would store them),
    in a deflated archive. Keras writes its archive uncompressed, and the HDF5 bookkeeping of a
    network with hundreds of small tensors adds 5-7% to the weights; deflate (level 1) makes the
    file smaller than the raw float32 weights. It loads with ``keras.saving.load_model`` as usual.
    """
    path = Path(path)
    clean = model.__class__.from_config(_without_compile(model.get_config()))  # the architecture alone
    clean.set_weights(model.get_weights())
    tmp = path.with_name(f".{path.stem}.stored.keras")
    clean.save(tmp)
    try:
        with zipfile.ZipFile(tmp) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as dst:
            for item in src.infolist():
                with src.open(item) as fin, dst.open(item.filename, "w", force_zip64=True) as fout:
                    shutil.copyfileobj(fin, fout, 1 << 20)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _without_compile(config):
    """A model config with every nested ``compile_config`` removed (a compiled sub-model, such as the
    head after phase 1, would otherwise come back compiled and save its optimizer state)."""
    if isinstance(config, dict):
        return {k: _without_compile(v) for k, v in config.items() if k != "compile_config"}
    if isinstance(config, list):
        return [_without_compile(v) for v in config]
    return config


def load_model(path: str | Path):
    """Load a ``.keras`` model in safe mode, with a clear error for a missing or foreign file."""
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{p}: is a folder, not a .keras model file")
    if not p.is_file():
        raise NotFoundError(f"{p}: model file not found.")
    if p.suffix != ".keras":
        raise InputError(f"{p}: expected a .keras model file.")
    if not zipfile.is_zipfile(p):
        raise InputError(f"{p}: not a .keras archive (empty, truncated or another format).")
    try:
        return keras.saving.load_model(p, safe_mode=True)
    except Exception as exc:  # zip errors, unknown layers, ...
        raise InputError(f"{p}: cannot load as a Keras model ({type(exc).__name__}: {exc})") from exc


__all__ = ["REGISTRY", "BackboneSpec", "build_classifier", "get_spec", "resolve_weights", "load_model", "save_model"]
