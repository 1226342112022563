"""The map head: a new head trained from scratch on cached middle-layer feature maps.

Fine-tuning the pretrained top of a backbone could not beat the frozen-feature probe on ELPV
(README, "Why fine-tuning hurt"). The map head keeps the pretrained backbone frozen up to a middle
layer (the *cut*), caches that layer's maps once for every training image and each of its flips,
and trains a small, well-conditioned head on them::

    maps (h x w x c) -> Conv1x1(width) -> BN -> ReLU -> Conv3x3(width) -> BN -> ReLU
      -> [GlobalAveragePooling, GlobalMaxPooling] -> Dropout -> Dense softmax ("logits")

Adam with warm-up and cosine decay, class weights as training uses them. Each epoch shows every
training image once, in a random one of its flips; validation (plain images) chooses the epoch.
:func:`assemble` then makes an ordinary gc10lib classifier of it: the same preprocessing, the
backbone cut at that layer (named ``backbone``), the head (named ``head``) and the class names.
:func:`train_map_head` is the phase ``maps`` of :mod:`gc10lib.phases`, which both
:func:`gc10lib.steps.train.run` and :func:`gc10lib.distillation.train_student` run when
``map_head`` is on.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from gc10lib import progress
from gc10lib.config import PhaseConfig
from gc10lib.errors import InputError
from gc10lib.inputs import ImageCache
from gc10lib.layers import ClassNames, model_info
from gc10lib.phases import BestState, ValidationScores, resolve_verbose
from gc10lib.settings import cache_dir, writable_dir

#: flip codes: bit 1 mirrors left-right, bit 2 up-down (0 plain, 3 both: a 180-degree rotation)
FLIPS = (0, 1, 2, 3)


def split_backbone(base, fraction: float) -> tuple[keras.Model, str]:
    """``(trunk, cut layer name)``: ``base`` up to the last layer at or below ``1 - fraction`` of its
    depth whose output alone feeds the rest (so that the cut loses nothing the top would have used)."""
    if not 0.0 < fraction < 1.0:
        raise InputError(
            f"map_fraction must be between 0 and 1 (the share of the backbone above the cut), got {fraction}"
        )
    layers = base.layers
    for i in range(int(round(len(layers) * (1.0 - fraction))) - 1, 0, -1):
        try:
            keras.Model(layers[i].output, base.output)
        except ValueError:  # a skip connection crosses this layer: its output alone does not feed the rest
            continue
        trunk = keras.Model(base.input, layers[i].output, name="backbone")
        return trunk, layers[i].name
    raise InputError(f"{base.name}: no layer below {1 - fraction:.0%} of its depth feeds the rest on its own")


def flip(x: np.ndarray, code: int) -> np.ndarray:
    """``x`` (n, h, w, c) mirrored by flip ``code`` (see :data:`FLIPS`)."""
    if code & 1:
        x = x[:, :, ::-1]
    if code & 2:
        x = x[:, ::-1]
    return x


def flip_codes(seed: int, views: int, n: int) -> list[np.ndarray]:
    """Each view's flip code per image: view 0 plain, view ``k`` a seeded random flip per image,
    uniform over the four (as a random horizontal-and-vertical flip draws them)."""
    return [np.zeros(n, int)] + [
        np.random.default_rng(seed + 1000 * v).integers(0, len(FLIPS), n) for v in range(1, max(1, int(views)))
    ]


class MixedRows:
    """Row ``j`` of ``arrays[codes[j]]``: one view's maps gathered from the per-flip caches, lazily."""

    def __init__(self, arrays: list, codes: np.ndarray):
        self.arrays, self.codes = arrays, np.asarray(codes)
        self.shape = (len(self.codes), *arrays[0].shape[1:])

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, j):
        if isinstance(j, (int, np.integer)):
            return self.arrays[self.codes[j]][j]
        rows = np.arange(len(self.codes))[j]
        return np.stack([self.arrays[self.codes[r]][r] for r in rows])


@dataclass
class MapSource:
    """Where maps come from: the classifier's preprocessing and the trunk, and what keys their cache.

    The key holds a digest of the trunk's weights (:func:`weights_digest`), so maps are found again
    by any model with the same trunk (a saved map-head classifier, or a new student built from the
    same ImageNet weights) and never by one whose trunk differs (fine-tuned below the cut).
    """

    extractor: keras.Model  # raw image -> trunk maps
    key: list  # backbone, trunk weights digest, size, policy, cut, Keras version
    size: int
    policy: str
    batch_size: int = 32

    def path(self, files: list[str], code: int) -> Path:
        digest = hashlib.sha1(json.dumps([*self.key, files, code]).encode()).hexdigest()[:24]
        return cache_dir() / "maps" / str(self.key[0]) / f"{self.size}_{self.policy}_f{code}_{digest}.npy"

    def maps(self, paths: list[str], code: int = 0) -> np.ndarray:
        """Trunk maps (float16, memory-mapped from the cache) of ``paths`` under flip ``code``."""
        cache = ImageCache(self.size, self.policy)
        files = cache.ensure(paths)
        path = self.path([Path(f).name for f in files], code)
        if path.is_file():
            try:
                out = np.load(path, mmap_mode="r")
                if out.shape[0] == len(paths):
                    return out
            except (OSError, ValueError, EOFError):
                pass  # a cut-off entry is rebuilt, never trusted
        images = _FlippedImages(cache, files, code)
        out = maps_of(self.extractor, images, self.batch_size, desc=f"{self.key[0]} maps, flip {code}")
        writable_dir(path.parent, "the map cache (set GC10_CACHE_DIR to a writable folder)")
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, out)
        tmp.replace(path)
        return np.load(path, mmap_mode="r")


class _FlippedImages:
    """Cached images under one flip, read a slice at a time."""

    def __init__(self, cache: ImageCache, files: list[str], code: int):
        self.cache, self.files, self.code = cache, files, code

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, s: slice) -> np.ndarray:
        return flip(self.cache.load(self.files[s]), self.code)


def predict_fixed(model, items, batch_size: int, dtype, desc: str | None = None) -> np.ndarray:
    """``model`` on ``items`` (an array, memory-mapped or not, or anything sliceable into batches), a
    batch at a time, the last batch padded to full size: one traced shape, no retracing per call."""
    chunks = []
    steps = range(0, len(items), batch_size)
    for i in progress.bar(steps, total=len(steps), desc=desc, unit="batch") if desc else steps:
        x = np.asarray(items[i : i + batch_size], np.float32)
        n = len(x)
        x = np.concatenate([x, np.zeros((batch_size - n, *x.shape[1:]), x.dtype)]) if n < batch_size else x
        chunks.append(np.asarray(model.predict_on_batch(x), dtype)[:n])
    return np.concatenate(chunks) if chunks else np.zeros((0, *model.outputs[0].shape[1:]), dtype)


def maps_of(extractor, images, batch_size: int = 32, desc: str = "maps") -> np.ndarray:
    """Trunk maps (float16) of ``images`` (an array, memory-mapped or not, or anything sliceable into
    ``(n, s, s, 3)`` batches in 0..255), a batch at a time."""
    return predict_fixed(extractor, images, batch_size, np.float16, desc)


def cut_extractor(model, fraction: float):
    """``(extractor, trunk, cut)``: raw images -> the maps at the cut of a ``build_classifier`` model
    (its own preprocessing, then the backbone's trunk below the cut)."""
    trunk, cut = split_backbone(model.get_layer("backbone"), fraction)
    inp = keras.Input(model.inputs[0].shape[1:])
    return keras.Model(inp, trunk(model.get_layer("preprocess")(inp), training=False)), trunk, cut


def weights_digest(model) -> str:
    """A digest of every weight of ``model`` (trainable or not, in layer order): what its maps depend on."""
    h = hashlib.sha1()
    for w in model.weights:
        a = np.ascontiguousarray(keras.ops.convert_to_numpy(w))
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:24]


def _source(model, trunk, backbone: str, size: int, policy: str, batch_size: int) -> MapSource:
    inp = keras.Input(model.inputs[0].shape[1:])
    extractor = keras.Model(inp, trunk(model.get_layer("preprocess")(inp), training=False))
    key = [backbone, weights_digest(trunk), size, policy, trunk.layers[-1].name, keras.__version__]
    return MapSource(extractor, key, size, policy, batch_size)


def map_source(model, fraction: float, backbone: str, size: int, policy: str, batch_size: int = 32):
    """``(MapSource, trunk, cut)`` for a gc10lib classifier built by ``build_classifier``: maps of
    image files, cached on disk."""
    trunk, cut = split_backbone(model.get_layer("backbone"), fraction)
    return _source(model, trunk, backbone, size, policy, batch_size), trunk, cut


def classifier_source(classifier, batch_size: int = 32) -> MapSource:
    """The maps a saved map-head classifier's head reads (its own preprocessing and trunk), from the
    cache its training filled."""
    info = model_info(classifier)
    trunk = classifier.get_layer("backbone")
    return _source(classifier, trunk, info.backbones[0], info.input_size, info.policy, batch_size)


def head_proba(head, maps, batch_size: int = 64) -> np.ndarray:
    """``head``'s output on ``maps`` (float16, memory-mapped or not), a fixed-size batch at a time."""
    return predict_fixed(head, maps, batch_size, np.float64)


def pooled_from_maps(model, cut: str, maps, batch_size: int = 64) -> np.ndarray:
    """The pooled features (``pool`` output) of a ``build_classifier`` model, from its maps at ``cut``:
    the backbone above the cut, then the pooling, so the trunk does not run again."""
    base = model.get_layer("backbone")
    top = keras.Model(base.get_layer(cut).output, base.output)
    pool = model.get_layer("pool")
    inp = keras.Input(top.inputs[0].shape[1:])
    return head_proba(keras.Model(inp, pool(top(inp, training=False))), maps, batch_size).astype(np.float32)


def build_head(shape, n_classes: int, width: int = 128, dropout: float = 0.3, seed: int | None = None):
    """The map head (see the module docstring), as a functional model named ``head``."""
    reg = keras.regularizers.L2(1e-4)
    inp = keras.Input(tuple(shape))
    x = inp
    for k in (1, 3):
        x = keras.layers.Conv2D(width, k, padding="same", use_bias=False, kernel_regularizer=reg)(x)
        x = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
    x = keras.layers.Concatenate(name="pooled")(
        [keras.layers.GlobalAveragePooling2D()(x), keras.layers.GlobalMaxPooling2D()(x)]
    )
    x = keras.layers.Dropout(dropout, seed=seed)(x)
    out = keras.layers.Dense(n_classes, activation="softmax", dtype="float32", kernel_regularizer=reg, name="logits")(x)
    return keras.Model(inp, out, name="head")


class FlipBatches(keras.utils.PyDataset):
    """Training batches of cached maps: each epoch, every image once, in a random one of its views.

    ``maps`` holds one array per view (flip, or augmented copy) of the same images in the same
    order. ``targets`` and ``weights`` are one array for all views, or one per view (distillation:
    the teacher's soft targets differ from view to view).
    """

    def __init__(self, maps: list[np.ndarray], targets, weights, batch_size: int, seed: int):
        super().__init__()
        k = len(maps)
        self.all_maps, self.batch_size = maps, int(batch_size)
        self.targets = list(targets) if isinstance(targets, (list, tuple)) else [np.asarray(targets)] * k
        self.weights = list(weights) if isinstance(weights, (list, tuple)) else [np.asarray(weights, np.float32)] * k
        if not len(self.targets) == len(self.weights) == k:
            raise InputError(f"{k} map arrays, but {len(self.targets)} target and {len(self.weights)} weight arrays")
        self.n = len(maps[0])
        self.rng = np.random.default_rng(seed)
        self.on_epoch_end()

    def __len__(self) -> int:
        return int(np.ceil(self.n / self.batch_size))

    def __getitem__(self, i: int):
        idx = self.order[i * self.batch_size : (i + 1) * self.batch_size]
        pick = [(self.codes[j], j) for j in idx]
        x = np.stack([self.all_maps[c][j] for c, j in pick]).astype("float32")
        y = np.stack([self.targets[c][j] for c, j in pick])
        w = np.array([self.weights[c][j] for c, j in pick], np.float32)
        return x, y, w

    def on_epoch_end(self) -> None:
        self.order = self.rng.permutation(self.n)
        self.codes = self.rng.integers(0, len(self.all_maps), self.n)


@dataclass
class MapData:
    """What a map head trains on and is chosen by: one map array per view of the training images
    (same images, same order), their targets and per-image weights (one array for all views, or
    one per view, as :class:`FlipBatches` takes them), the plain validation maps and hard labels."""

    maps: list[np.ndarray]
    targets: np.ndarray | list[np.ndarray]
    weights: np.ndarray | list[np.ndarray]
    val_maps: np.ndarray
    y_val: np.ndarray


def fit_head(
    head: keras.Model,
    data: MapData,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    monitor: str,
    seed: int,
    loss="sparse_categorical_crossentropy",
    verbose: int | str = 0,
    keep_start: bool = False,
) -> tuple[pd.DataFrame, dict]:
    """Train ``head`` on ``data`` and keep its best epoch on validation.

    ``loss`` is what the targets are scored with (sparse cross-entropy on labels; distillation
    passes its own). Each epoch is scored on the hard validation labels
    (:func:`gc10lib.phases.val_scores`); ``monitor`` names the score that chooses. With
    ``keep_start`` (a head that starts trained), its state before the first epoch competes too,
    as epoch ``-1``. Returns the per-epoch history and ``{"epoch", "scores"}`` of the epoch kept
    (its weights are in ``head`` on return).

    >>> history, kept = fit_head(head, MapData(maps, y, w, val_maps, y_val), epochs=25, lr=1e-3,
    ...                          batch_size=32, monitor="val_loss", seed=42)
    """
    if epochs < 1:
        raise InputError(f"map_epochs: must be >= 1, got {epochs}")
    batches = FlipBatches(data.maps, data.targets, data.weights, batch_size, seed)
    steps = len(batches) * epochs
    sched = keras.optimizers.schedules.CosineDecay(0.0, steps, warmup_target=lr, warmup_steps=max(1, steps // 10))
    head.compile(optimizer=keras.optimizers.Adam(sched), loss=loss)
    kept = BestState(head, monitor)
    scorer = ValidationScores(
        lambda: head.predict(data.val_maps, batch_size=64, verbose=0), np.asarray(data.y_val), kept, "maps"
    )
    if keep_start:
        scorer.set_model(head)
        scorer.on_epoch_end(-1)
    hist = head.fit(batches, epochs=epochs, callbacks=[scorer], verbose=verbose)
    kept.restore()
    return pd.DataFrame(hist.history), {"epoch": int(kept.epoch), "scores": scorer.scores[int(kept.epoch)]}


def train_map_head(
    model: keras.Model,
    trunk: keras.Model,
    cut: str,
    data: MapData,
    best: BestState,
    cfg: PhaseConfig,
    *,
    loss="sparse_categorical_crossentropy",
    start: keras.Model | None = None,
    lr: float | None = None,
) -> tuple[keras.Model, dict, pd.DataFrame]:
    """Phase ``maps``: train a map head on ``data`` (:func:`fit_head`) and offer its best epoch to
    ``best``, which holds the other phases' best state.

    ``cfg`` supplies ``map_width``, ``map_epochs``, ``map_lr``, ``batch_size``, ``monitor``, ``seed``
    and ``verbose``. ``start``: a trained map head of the same shape (:func:`start_head` checks it)
    whose weights the new head starts from; its own state competes as epoch ``-1``, and ``lr``
    (default ``map_lr``) is the peak learning rate. Returns ``(the model to save, the phase's
    record, its history)``: the classifier assembled from ``model``, ``trunk`` and the head when it
    beat every earlier state on validation, else ``model`` unchanged.
    """
    t0 = time.perf_counter()
    keras.utils.set_random_seed(int(cfg.seed))
    n_classes = int(model.outputs[0].shape[-1])
    head = build_head(data.maps[0].shape[1:], n_classes, cfg.map_width, seed=cfg.seed)
    if start is not None:
        head.set_weights(start.get_weights())
    history, kept = fit_head(
        head,
        data,
        epochs=int(cfg.map_epochs),
        lr=cfg.map_lr if lr is None else lr,
        batch_size=cfg.batch_size,
        monitor=cfg.monitor,
        seed=cfg.seed,
        loss=loss,
        verbose=resolve_verbose(cfg.verbose),
        keep_start=start is not None,
    )
    won = best.offer(kept["scores"][cfg.monitor], "maps", kept["epoch"], snapshot=False)
    record = {
        "cut": cut,
        "map_shape": [int(d) for d in data.maps[0].shape[1:]],
        "views": len(data.maps),
        "epoch": kept["epoch"],
        "val_scores": kept["scores"],
        "won": won,
        "fit_s": round(time.perf_counter() - t0, 2),
    }
    return (assemble(model, trunk, head) if won else model), record, history


def start_head(classifier, trunk, map_shape, classes: list[str], width: int) -> tuple[keras.Model | None, str]:
    """``(its head, "")`` when the map head of ``classifier`` (a saved map-head classifier) can start
    a new head of ``width`` on maps of ``map_shape`` from ``trunk``: the same classes in the same
    order, the same trunk weights (so it reads the same maps) and the same head shape. Otherwise
    ``(None, why not)``."""
    if not is_map_head(classifier):
        return None, "its head reads pooled features, not maps"
    if list(model_info(classifier).classes) != list(classes):
        return None, f"its classes {model_info(classifier).classes} differ from {list(classes)}"
    head = classifier.get_layer("head")
    if weights_digest(classifier.get_layer("backbone")) != weights_digest(trunk):
        return None, "its trunk below the cut differs from the student's (other weights or another cut)"
    want = build_head(tuple(map_shape), len(classes), width)
    if [tuple(w.shape) for w in head.weights] != [tuple(w.shape) for w in want.weights]:
        return None, f"its head's shape differs from a width-{width} head on maps {tuple(map_shape)}"
    return head, ""


def assemble(model, trunk, head, name: str | None = None):
    """A classifier from ``model``'s preprocessing and class names, ``trunk`` and a map ``head``."""
    names = model.layers[-1]
    if not isinstance(names, ClassNames):
        raise InputError(f"model {model.name!r} does not end in its class names; not a gc10lib classifier")
    inp = keras.Input(model.inputs[0].shape[1:], name="image")
    x = model.get_layer("preprocess")(inp)
    x = trunk(x, training=False)
    out = ClassNames(names.class_names, names.info, name="class_names", dtype="float32")(head(x))
    return keras.Model(inp, out, name=name or model.name)


def is_map_head(classifier) -> bool:
    """Whether a gc10lib classifier's head reads maps (this module) rather than pooled features."""
    try:
        head = classifier.get_layer("head")
    except ValueError:
        return False
    return len(head.inputs[0].shape) == 4


__all__ = [
    "FLIPS",
    "MapData",
    "MapSource",
    "assemble",
    "build_head",
    "fit_head",
    "flip",
    "is_map_head",
    "map_source",
    "split_backbone",
    "start_head",
    "train_map_head",
]
