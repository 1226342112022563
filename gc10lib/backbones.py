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
from pathlib import Path

import keras
import numpy as np

from gc10lib.errors import InputError, NotFoundError, SetupError
from gc10lib.layers import BackbonePreprocess, ClassNames, ModelInfo, TileGrid, TilePool, tile_grid
from gc10lib.registry import ORIGINAL, REGISTRY, BackboneSpec, get_spec, resolve_weights, weights_identity

log = logging.getLogger(__name__)


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


# the registry's names are re-exported: gc10lib.backbones is where callers have always found them
__all__ = [
    "ORIGINAL",
    "REGISTRY",
    "BackboneSpec",
    "build_classifier",
    "get_spec",
    "load_model",
    "resolve_weights",
    "save_model",
    "weights_identity",
]
