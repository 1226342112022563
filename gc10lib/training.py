"""Per-backbone training: frozen-backbone head (with a cached-feature fast path), then fine-tuning.

:func:`train_backbone` is what notebook ``02_finetune`` calls. It writes to ``out_dir``:
``model.keras``, ``metrics.json`` (val and test metrics, split manifest, timings, seed, weights
source), ``history.csv`` and ``curves.png``/``confusion.png``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf
from sklearn.metrics import f1_score

from gc10lib import data, maphead, progress
from gc10lib import probe as probes
from gc10lib.backbones import (
    adapt_feature_norm,
    build_classifier,
    calibrate_batchnorm,
    get_spec,
    save_model,
    set_finetune_trainable,
)
from gc10lib.errors import InputError, SetupError
from gc10lib.evaluation import compute_metrics
from gc10lib.inputs import AUG_OPS, ImageCache, aug_ops, augmenter, make_dataset
from gc10lib.layers import model_classes, tile_grid
from gc10lib.predict import predict_proba
from gc10lib.settings import cache_dir, file_size_mb, new_output_dir, save_json, writable_dir

log = logging.getLogger(__name__)

FINETUNE_OPTIMIZERS = ("sgd", "adam", "lamb")


@dataclass
class TrainConfig:
    """Everything that shapes one backbone's training run."""

    backbone: str = "mobilenet"
    img_size: int | None = None  # None: the backbone's native size (x tiles)
    weights: str | None = "imagenet"  # "imagenet", "auto" (ImageNet if it can be had, else random), None, or a file
    weights_dir: str | None = None  # offline ImageNet weights (default $GC10_WEIGHTS_DIR)
    policy: str = "stretch"  # resize policy, see gc10lib.inputs
    tiles: int = 1  # > 1: cut the img_size input into a tiles x tiles grid, the backbone at img_size/tiles
    tile_pool: str = "max"  # how a tiled model pools its tiles' features: max, mean or meanmax
    epochs_head: int = 10
    epochs_finetune: int = 5
    finetune_fraction: float = 0.3  # top share of backbone layers unfrozen in phase 2
    batch_size: int = 32
    lr_head: float = 1e-3
    lr_finetune: float = 3e-5  # peak of the warm-up + cosine schedule
    finetune_optimizer: str = "adam"  # "adam", "sgd" (momentum 0.9) or "lamb"; see README "Why fine-tuning hurt"
    warmup_fraction: float = 0.1  # share of fine-tune steps with a linear warm-up from 0
    clipnorm: float | None = 1.0  # global gradient-norm clip in fine-tuning (None: off)
    class_weight: str = "sqrt"  # "balanced", "sqrt" or "none" (gc10lib.data.class_weights)
    probe: bool = True  # fit a logistic-regression probe on the cached features (a floor, and a candidate head)
    dropout: float = 0.2
    augment: bool | list[str] = True  # or a list of ops from gc10lib.inputs.AUG_OPS, e.g. ["flip"]
    aug_views: int = 2  # feature fast path: 1 plain + (aug_views - 1) augmented views per train image
    head_mode: str = "features"  # "features" (cached-feature fast path) or "fit" (frozen backbone every epoch)
    map_head: bool = False  # phase "maps": a new head on cached middle-layer maps (gc10lib.maphead)
    map_fraction: float = 0.3  # share of the backbone's depth above the cut (MobileNet: conv_pw_9)
    map_width: int = 128  # channels of the map head's two convolutions
    map_epochs: int = 25
    map_lr: float = 1e-3  # peak of the map head's warm-up + cosine schedule (Adam)
    map_flips: int = 4  # flips cached per training image: 1 plain, 2 + left-right, 4 + up-down and both
    monitor: str = "val_loss"  # or "val_macro_f1"
    tensorboard: bool = False  # TensorBoard logs in <out_dir>/tensorboard/<phase> (`tensorboard --logdir runs`)
    patience: int = 4
    seed: int = 42
    mixed_precision: bool | str = False  # True -> "mixed_float16"; or a policy name
    strategy: str | None = None  # None, "mirrored", "multiworker"
    verbose: int | str = "auto"
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_params(cls, params: dict) -> TrainConfig:
        """The config from a mapping (a notebook's parameters), taking only the names it knows."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in params.items() if k in names})


# --------------------------------------------------------------------------- helpers


def set_seeds(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow (via Keras)."""
    keras.utils.set_random_seed(int(seed))


def resolve_verbose(v: int | str) -> int | str:
    """``"auto"`` becomes ``$GC10_VERBOSE`` (the pipeline sets 2) or Keras' own ``"auto"``."""
    if v == "auto":
        env = os.environ.get("GC10_VERBOSE")
        return int(env) if env else "auto"
    return v


def make_strategy(name: str | None):
    """``None`` (default strategy), ``"mirrored"`` (all local GPUs/devices) or ``"multiworker"`` (TF_CONFIG)."""
    if not name:
        return None
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        if "TF_CONFIG" not in os.environ:
            raise SetupError("strategy 'multiworker' needs TF_CONFIG describing the cluster and this worker's task.")
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise InputError(f"unknown strategy {name!r}; expected None, 'mirrored' or 'multiworker'")


@contextlib.contextmanager
def precision_policy(mixed: bool | str):
    """Temporarily set a Keras mixed-precision policy."""
    if not mixed:
        yield
        return
    old = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy("mixed_float16" if mixed is True else str(mixed))
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(old)


class MacroF1(keras.callbacks.Callback):
    """Adds ``val_macro_f1`` to the epoch logs (place before EarlyStopping/ReduceLROnPlateau)."""

    def __init__(self, x_val, y_val):
        super().__init__()
        self.x_val, self.y_val = x_val, np.asarray(y_val)

    def on_epoch_end(self, epoch, logs=None):
        pred = np.asarray(self.model.predict(self.x_val, verbose=0)).argmax(1)
        if logs is not None:
            logs["val_macro_f1"] = float(f1_score(self.y_val, pred, average="macro", zero_division=0))


class BestState:
    """The best validation state over every phase (probe, head epochs, fine-tune epochs), in memory.

    ``offer`` takes a monitored value and snapshots the whole model's weights when it is the best
    so far; ``restore`` puts that snapshot back. Lower is better for losses, higher for scores.
    """

    def __init__(self, model, monitor: str):
        self.model, self.monitor = model, monitor
        self.sign = 1.0 if monitor in ("val_macro_f1", "val_accuracy") else -1.0
        self.value: float | None = None
        self.phase: str | None = None
        self.epoch: int | None = None
        self.weights: list | None = None
        self.best_by_phase: dict[str, float] = {}

    def offer(self, value, phase: str, epoch: int, snapshot: bool = True) -> bool:
        """Record ``value``; True (and a snapshot of the model's weights, if ``snapshot``) when it is the
        best so far. ``snapshot=False`` is for a phase that trains another model (the map head)."""
        if value is None or not np.isfinite(float(value)):
            return False
        value = float(value)
        prev = self.best_by_phase.get(phase)
        if prev is None or self.sign * value > self.sign * prev:
            self.best_by_phase[phase] = value
        if self.value is not None and self.sign * value <= self.sign * self.value:
            return False
        self.value, self.phase, self.epoch = value, phase, int(epoch)
        if snapshot:
            self.weights = [np.array(w) for w in self.model.get_weights()]
        return True

    def restore(self) -> None:
        if self.weights is not None:
            self.model.set_weights(self.weights)

    def record(self) -> dict:
        return {
            "monitor": self.monitor,
            "value": self.value,
            "phase": self.phase,
            "epoch": self.epoch,
            "best_by_phase": dict(self.best_by_phase),
        }


class KeepBest(keras.callbacks.Callback):
    """Offers each epoch's monitored value to a :class:`BestState` (place after :class:`MacroF1`)."""

    def __init__(self, state: BestState, phase: str):
        super().__init__()
        self.state, self.phase = state, phase

    def on_epoch_end(self, epoch, logs=None):
        self.state.offer((logs or {}).get(self.state.monitor), self.phase, epoch)


def val_scores(y: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """``val_loss`` (unweighted cross-entropy, as Keras reports it), ``val_accuracy`` and ``val_macro_f1``."""
    pred = proba.argmax(1)
    return {
        "val_loss": probes.log_loss(y, proba),
        "val_accuracy": float(np.mean(pred == y)),
        "val_macro_f1": float(f1_score(y, pred, average="macro", zero_division=0)),
    }


def finetune_optimizer(cfg: TrainConfig, steps: int):
    """The phase-2 optimizer: linear warm-up to ``lr_finetune``, then cosine decay to 0 over ``steps``."""
    warm = int(round(cfg.warmup_fraction * steps)) if cfg.warmup_fraction > 0 else 0
    lr = keras.optimizers.schedules.CosineDecay(
        0.0 if warm else cfg.lr_finetune,
        max(1, steps - warm),
        alpha=0.0,
        warmup_target=cfg.lr_finetune if warm else None,
        warmup_steps=warm,
    )
    clip = {"global_clipnorm": float(cfg.clipnorm)} if cfg.clipnorm else {}
    if cfg.finetune_optimizer == "sgd":
        return keras.optimizers.SGD(lr, momentum=0.9, **clip)
    if cfg.finetune_optimizer == "adam":
        return keras.optimizers.Adam(lr, **clip)
    if cfg.finetune_optimizer == "lamb":  # Adam with a per-layer trust ratio: steps relative to each layer's norm
        return keras.optimizers.Lamb(lr, **clip)
    raise InputError(f"unknown finetune_optimizer {cfg.finetune_optimizer!r}; expected {FINETUNE_OPTIMIZERS}")


def fit_distributed(
    model,
    dataset,
    *,
    epochs: int,
    lr: float,
    class_weight: dict[int, float],
    strategy,
    csv_path: Path | None = None,
    verbose: int | str = 0,
    make_optimizer=None,
) -> dict[str, list[float]]:
    """Synchronous data-parallel training loop for ``MultiWorkerMirroredStrategy``.

    Keras 3's ``fit`` fails under that strategy (keras-team/keras#20585), so each step runs
    ``strategy.run`` with a class-weighted loss and an all-reduced gradient. ``model`` must have
    been built inside ``strategy.scope()``. No callbacks: the loop runs ``epochs`` epochs.
    ``make_optimizer`` (called inside the scope) replaces the default ``Adam(lr)``.
    """
    n_classes = int(model.outputs[0].shape[-1])
    cw = tf.constant([float(class_weight.get(i, 1.0)) for i in range(n_classes)], tf.float32)
    with strategy.scope():
        optimizer = make_optimizer() if make_optimizer else keras.optimizers.Adam(lr)
        optimizer.build(model.trainable_variables)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(reduction=None)
    dist = strategy.experimental_distribute_dataset(dataset)

    def replica_step(x, y):
        with tf.GradientTape() as tape:
            p = model(x, training=True)
            per_example = loss_fn(y, p) * tf.gather(cw, tf.cast(y, tf.int32))
            loss = tf.nn.compute_average_loss(per_example)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    @tf.function
    def train_step(x, y):
        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(replica_step, args=(x, y)), axis=None)

    history: dict[str, list[float]] = {"loss": []}
    for epoch in range(epochs):
        total, n = 0.0, 0
        for x, y in dist:
            total += float(train_step(x, y))
            n += 1
        history["loss"].append(total / max(n, 1))
        if verbose:
            log.info(
                "epoch %d/%d - loss %.4f (replicas %d)",
                epoch + 1,
                epochs,
                history["loss"][-1],
                strategy.num_replicas_in_sync,
            )
    if csv_path is not None:
        pd.DataFrame(history).rename_axis("epoch").to_csv(csv_path)
    return history


def callbacks(
    cfg: TrainConfig,
    x_val,
    y_val,
    csv_path: Path,
    best: BestState | None = None,
    phase: str = "head",
    plateau: bool = True,
) -> list:
    """Macro-F1 (if monitored), best-state tracking, early stopping, LR plateau (head only), CSV history."""
    mode = "max" if cfg.monitor == "val_macro_f1" else "min"
    cbs: list = []
    if cfg.monitor == "val_macro_f1":
        cbs.append(MacroF1(x_val, y_val))
    if best is not None:
        cbs.append(KeepBest(best, phase))
    cbs.append(
        keras.callbacks.EarlyStopping(
            monitor=cfg.monitor, mode=mode, patience=cfg.patience, restore_best_weights=best is None
        )
    )
    if plateau:  # not with a learning-rate schedule
        cbs.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor=cfg.monitor, mode=mode, factor=0.3, patience=max(1, cfg.patience // 2), min_lr=1e-7
            )
        )
    cbs.append(keras.callbacks.CSVLogger(str(csv_path)))
    if cfg.tensorboard:  # one folder per phase: <out>/tensorboard/head, <out>/tensorboard/finetune
        cbs.append(keras.callbacks.TensorBoard(log_dir=str(csv_path.parent / "tensorboard" / phase)))
    return cbs


def _weights_identity(source: str, seed: int) -> str:
    if source.startswith(("imagenet-file:", "file:")):
        p = Path(source.split(":", 1)[1])
        st = p.stat()
        return f"{source}|{st.st_size}|{st.st_mtime_ns}"
    return f"{source}|seed={seed}|bn-calibrated" if source == "random" else source


def feature_cache_path(
    backbone: str,
    weights_id: str,
    size: int,
    policy: str,
    files: list[str],
    view: int,
    seed: int,
    ops: tuple[str, ...] = AUG_OPS,
    tiling: tuple[int, str] | None = None,
    from_maps: str | None = None,
) -> Path:
    """Disk location of cached pooled features, keyed by backbone, weights, size, data, view,
    augmentation, tiling (``(grid, pool)`` of a tiled classifier) and, for features computed from
    the map cache (:func:`features_from_maps`), the cut they were computed from."""
    parts = [backbone, weights_id, size, policy, files, view, seed if view else 0, keras.__version__]
    if view and tuple(ops) != AUG_OPS:
        parts.append(list(ops))
    if tiling is not None:
        parts.append({"tiles": list(tiling)})
    if from_maps is not None:
        parts.append({"from_maps": from_maps})
    key = json.dumps(parts)
    digest = hashlib.sha1(key.encode()).hexdigest()[:24]
    return cache_dir() / "features" / backbone / f"{size}_{policy}_v{view}_{digest}.npy"


def extract_features(
    model,
    paths: list[str],
    *,
    size: int,
    policy: str,
    weights_source: str,
    backbone: str,
    view: int = 0,
    seed: int = 42,
    batch_size: int = 32,
    verbose: int | str = 0,
    ops: tuple[str, ...] = AUG_OPS,
) -> tuple[np.ndarray, bool]:
    """Pooled backbone features for ``paths`` (view 0 plain, view k>0 augmented with its own seed).

    Cached on disk; returns ``(features, was_cached)``.
    """
    cache = ImageCache(size, policy)
    files = cache.ensure(paths)
    names = [Path(f).name for f in files]
    path = feature_cache_path(
        backbone, _weights_identity(weights_source, seed), size, policy, names, view, seed, ops, tiling_of(model)
    )

    def compute() -> np.ndarray:
        extractor = keras.Model(model.inputs, model.get_layer("pool").output)
        ds = make_dataset(paths, None, size, policy=policy, batch_size=batch_size, cache=cache)
        if view:
            aug = augmenter(seed + 1000 * view, ops)
            ds = ds.map(lambda x: aug(x, training=True))
        bar = progress.predict_callback(int(np.ceil(len(paths) / batch_size)), f"{backbone} features, view {view}")
        return np.asarray(extractor.predict(ds, verbose=verbose, callbacks=[bar]), dtype=np.float32)

    return _cached_features(path, len(paths), compute)


def _cached_features(path: Path, n: int, compute) -> tuple[np.ndarray, bool]:
    """``(features, was_cached)``: the ``n`` rows cached at ``path``, else ``compute()``'s, saved there."""
    if path.is_file():
        try:
            feats = np.load(path)
            if feats.shape[0] == n:
                return feats, True
        except (OSError, ValueError, EOFError):
            pass  # a cut-off or corrupt entry is rebuilt below, never trusted
    feats = compute()
    writable_dir(path.parent, "the feature cache (set GC10_CACHE_DIR to a writable folder)")
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(tmp, feats)
    tmp.replace(path)
    return feats, False


def features_from_images(
    model,
    train_paths: list[str],
    val_paths: list[str],
    *,
    cfg: TrainConfig,
    backbone: str,
    size: int,
    weights_source: str,
    views: int,
) -> tuple[list[np.ndarray], np.ndarray, list[bool]]:
    """Phase 1's pooled features, each view a pass of the whole model over the images (view 0 plain,
    view ``k`` augmented with its own seed; :func:`extract_features`). Returns ``(one feature array
    per train view, val features, cached flags)``."""
    out = [_image_view(model, train_paths, cfg, backbone, size, weights_source, v) for v in range(views)]
    xv, c = _image_view(model, val_paths, cfg, backbone, size, weights_source, 0)
    return [f for f, _ in out], xv, [*(c for _, c in out), c]


def _image_view(model, paths: list[str], cfg: TrainConfig, backbone: str, size: int, weights_source: str, view: int):
    """:func:`extract_features` of ``paths`` for ``view`` (0 plain, ``k`` augmented as ``cfg.augment`` says)."""
    return extract_features(
        model,
        paths,
        size=size,
        policy=cfg.policy,
        weights_source=weights_source,
        backbone=backbone,
        view=view,
        seed=cfg.seed,
        batch_size=cfg.batch_size,
        ops=aug_ops(cfg.augment),
    )


def features_from_maps(
    model,
    train_paths: list[str],
    val_paths: list[str],
    *,
    cfg: TrainConfig,
    backbone: str,
    size: int,
    weights_source: str,
    views: int,
) -> tuple[list[np.ndarray], np.ndarray, list[bool]]:
    """Phase 1's pooled features of a map-head run, from the trunk maps the map phase needs anyway.

    The trunk (the backbone below the cut) runs once per flip into the map cache; the pooled
    features are the backbone above the cut on those maps (:func:`gc10lib.maphead.pooled_from_maps`),
    so those images do not go through the whole backbone a second time. View 0 (plain) and the val
    images always come from the maps. An augmented view comes from them too when augmentation is
    flips only and every flip is cached (:func:`augmented_views_from_maps`): each image under a
    seeded random flip (:func:`gc10lib.maphead.flip_codes`). Any other augmented view is a pass of
    the whole model over augmented images, as without maps (:func:`extract_features`). The maps are
    float16, so their features differ from a float32 pass by float16 rounding (the hand-over check
    records the effect). Returns ``(one feature array per train view, val features, cached flags)``.
    """
    src, _, cut = maphead.map_source(model, cfg.map_fraction, backbone, size, cfg.policy, cfg.batch_size)
    flips = augmented_views_from_maps(cfg)
    plan = maphead.flip_codes(cfg.seed, views if flips else 1, len(train_paths))
    used = sorted({int(c) for codes in plan for c in np.unique(codes)})
    cache = ImageCache(size, cfg.policy)
    weights_id = _weights_identity(weights_source, cfg.seed)

    def key(paths, view):
        names = [Path(f).name for f in cache.ensure(paths)]
        return feature_cache_path(
            backbone, weights_id, size, cfg.policy, names, view, cfg.seed, ("flip",), None, from_maps=cut
        )

    def view_features(codes):
        maps = [src.maps(train_paths, c) for c in used]
        return maphead.pooled_from_maps(model, cut, maphead.MixedRows(maps, np.searchsorted(used, codes)))

    xs, cached = [], []
    for v, codes in enumerate(plan):
        f, c = _cached_features(key(train_paths, v), len(train_paths), lambda codes=codes: view_features(codes))
        xs.append(f)
        cached.append(c)
    for v in range(len(plan), views):  # augmentation the maps do not hold: the whole model, as before
        f, c = _image_view(model, train_paths, cfg, backbone, size, weights_source, v)
        xs.append(f)
        cached.append(c)
    xv, c = _cached_features(
        key(val_paths, 0), len(val_paths), lambda: maphead.pooled_from_maps(model, cut, src.maps(val_paths, 0))
    )
    return xs, xv, [*cached, c]


def uses_maps_for_features(cfg: TrainConfig) -> bool:
    """Whether phase 1 takes features from the map cache (:func:`features_from_maps`): a map-head
    run on cached features, in this process, untiled."""
    return bool(cfg.map_head) and cfg.head_mode == "features" and cfg.strategy != "multiworker" and int(cfg.tiles) <= 1


def augmented_views_from_maps(cfg: TrainConfig) -> bool:
    """Whether a map-head run's augmented views come from the maps too: flips only, and all four
    flips cached for the map phase, so no trunk pass is extra."""
    return aug_ops(cfg.augment) == ("flip",) and int(cfg.map_flips) == len(maphead.FLIPS)


def tiling_of(model) -> tuple[int, str] | None:
    """``(grid, pool)`` of a tiled classifier (:class:`gc10lib.layers.TileGrid`), else None."""
    grid = tile_grid(model)
    return None if grid is None else (int(grid.grid), str(model.get_layer("pool").mode))


@dataclass
class _History:
    """The part of ``keras.callbacks.History`` that train_backbone reads."""

    history: dict


# --------------------------------------------------------------------------- main entry


def load_manifest(
    data_dir: str | Path, split_csv: str | Path | None, seed: int, fractions=(0.7, 0.15, 0.15)
) -> tuple[pd.DataFrame, list[str], Path | None]:
    """Read the split manifest (or make one in memory when none is given) and the class order."""
    if split_csv:
        man = data.read_split(split_csv, data_root=data_dir)
        classes = data.split_classes(split_csv)
        if classes is None:
            classes = list(man.sort_values("label")["class"].unique())
        return man, classes, Path(split_csv)
    ds = data.discover(data_dir)
    return data.split_dataset(ds, fractions, seed), ds.classes, None


def train_backbone(
    cfg: TrainConfig,
    data_dir: str | Path,
    out_dir: str | Path | None,
    split_csv: str | Path | None = None,
    manifest: pd.DataFrame | None = None,
    classes: list[str] | None = None,
) -> dict:
    """Train one backbone end to end and write its outputs; returns the metrics dict.

    Phases: a logistic-regression probe and a class-weighted head on cached frozen features, then
    fine-tuning, then (``map_head``) a new head on cached middle-layer maps (:mod:`gc10lib.maphead`).
    Every probe/head/fine-tune/maps epoch is a candidate; the one best on validation (by
    ``cfg.monitor``) is what gets saved, and ``metrics["selected"]`` says which phase won. The probe
    is also saved on its own, as ``probe/`` (``probe_<backbone>``).
    """
    t_all = time.perf_counter()
    spec = get_spec(cfg.backbone)
    size = int(cfg.img_size or spec.native_size * max(int(cfg.tiles), 1))  # tiles: each at the native size
    verbose = resolve_verbose(cfg.verbose)
    if cfg.monitor not in ("val_loss", "val_macro_f1"):
        raise InputError(f"unknown monitor {cfg.monitor!r}; expected 'val_loss' or 'val_macro_f1'")
    if cfg.finetune_optimizer not in FINETUNE_OPTIMIZERS:
        raise InputError(f"unknown finetune_optimizer {cfg.finetune_optimizer!r}; expected {FINETUNE_OPTIMIZERS}")
    if cfg.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise SetupError("tensorboard=True needs the tensorboard package: pip install 'gc10lib[tensorboard]'")
    if manifest is None:
        manifest, classes, split_path = load_manifest(data_dir, split_csv, cfg.seed)
    else:
        split_path = Path(split_csv) if split_csv else None
        classes = classes or list(manifest.sort_values("label")["class"].unique())
    tr, va, te = (manifest[manifest.subset == s] for s in ("train", "val", "test"))
    if len(tr) == 0 or len(va) == 0:
        raise InputError("the split has no train or no val images; use a larger dataset or other fractions")
    cw = data.class_weights(tr.label, len(classes), cfg.class_weight)
    if cfg.strategy == "multiworker" and cfg.head_mode != "features":
        raise InputError("strategy 'multiworker' trains the head on cached features: use head_mode='features'")
    if cfg.map_head and int(cfg.tiles) > 1:
        raise InputError(
            "map_head cuts a whole-image backbone; it does not combine with tiles > 1 (use one or the other)"
        )
    if cfg.strategy == "multiworker" and cfg.map_head:
        raise InputError("map_head trains in this process only; it does not run under strategy 'multiworker'")
    out = new_output_dir(out_dir, prefix=f"train-{spec.name}")
    set_seeds(cfg.seed)
    timings: dict[str, float] = {}
    strategy = make_strategy(cfg.strategy)
    scope = strategy.scope() if strategy is not None else contextlib.nullcontext()
    y_val = va.label.to_numpy()
    probe_info: dict | None = None
    handover: dict | None = None

    with precision_policy(cfg.mixed_precision), scope:
        model, source = build_classifier(
            spec.name,
            classes,
            size,
            cfg.weights,
            cfg.dropout,
            cfg.weights_dir,
            cfg.seed,
            policy=cfg.policy,
            tiles=cfg.tiles,
            tile_pool=cfg.tile_pool,
        )
        if source == "random":  # no pretrained BatchNorm statistics: take them from training images
            pick = tr.sample(min(len(tr), 64), random_state=cfg.seed)
            calibrate_batchnorm(model, ImageCache(size, cfg.policy).load(list(pick.path)).astype("float32"))
        model.get_layer("backbone").trainable = False
        best = BestState(model, cfg.monitor)
        histories = []

        # ---- phase 1: frozen backbone; a probe and a class-weighted head on cached features
        t0 = time.perf_counter()
        head = model.get_layer("head")
        if cfg.head_mode == "features":
            ops = aug_ops(cfg.augment)
            views = max(1, int(cfg.aug_views)) if ops else 1
            if not uses_maps_for_features(cfg):
                fetch, features_from = features_from_images, "images"
            elif views == 1 or augmented_views_from_maps(cfg):
                fetch, features_from = features_from_maps, "maps"
            else:  # the plain view and val from the maps, other augmentation from the whole model
                fetch, features_from = features_from_maps, "maps and images"
            xs, xv, cached = fetch(
                model,
                list(tr.path),
                list(va.path),
                cfg=cfg,
                backbone=spec.name,
                size=size,
                weights_source=source,
                views=views,
            )
            ys = [tr.label.to_numpy()] * views
            timings["features_s"] = round(time.perf_counter() - t0, 2)
            timings["features_from"] = features_from
            timings["features_cached"] = all(cached)
            t1 = time.perf_counter()
            adapt_feature_norm(head, np.concatenate(xs))
            if cfg.probe:
                probe_info = _fit_probe_into(
                    model, best, np.concatenate(xs), np.concatenate(ys), xv, y_val, len(classes), cw, cfg.seed
                )
                timings["probe_s"] = round(time.perf_counter() - t1, 2)
            t1 = time.perf_counter()
            if cfg.strategy == "multiworker":
                feats = tf.data.Dataset.from_tensor_slices((np.concatenate(xs), np.concatenate(ys).astype("int32")))
                hist = _History(
                    fit_distributed(
                        head,
                        feats.shuffle(len(feats), seed=cfg.seed).batch(cfg.batch_size),
                        epochs=cfg.epochs_head,
                        lr=cfg.lr_head,
                        class_weight=cw,
                        strategy=strategy,
                        csv_path=out / "history_head.csv",
                        verbose=verbose,
                    )
                )
                best.offer(
                    val_scores(y_val, np.asarray(head.predict(xv, verbose=0)))[cfg.monitor], "head", cfg.epochs_head - 1
                )
            else:
                head.compile(
                    optimizer=keras.optimizers.Adam(cfg.lr_head),
                    loss="sparse_categorical_crossentropy",
                    metrics=["accuracy"],
                )
                hist = head.fit(
                    np.concatenate(xs),
                    np.concatenate(ys),
                    validation_data=(xv, y_val),
                    epochs=cfg.epochs_head,
                    batch_size=cfg.batch_size,
                    class_weight=cw,
                    shuffle=True,
                    callbacks=callbacks(cfg, xv, va.label, out / "history_head.csv", best, "head"),
                    verbose=verbose,
                )
            timings["head_fit_s"] = round(time.perf_counter() - t1, 2)
            best.restore()
            handover = handover_check(model, tr, xs[0], size=size, policy=cfg.policy)
        elif cfg.head_mode == "fit":
            sample = list(tr.sample(min(len(tr), 256), random_state=cfg.seed).path)
            f, _ = extract_features(
                model,
                sample,
                size=size,
                policy=cfg.policy,
                weights_source=source,
                backbone=spec.name,
                seed=cfg.seed,
                batch_size=cfg.batch_size,
            )
            adapt_feature_norm(head, f)
            train_ds, val_ds, val_x = _image_datasets(tr, va, size, cfg)
            model.compile(
                optimizer=keras.optimizers.Adam(cfg.lr_head),
                loss="sparse_categorical_crossentropy",
                metrics=["accuracy"],
            )
            hist = model.fit(
                train_ds,
                validation_data=val_ds,
                epochs=cfg.epochs_head,
                class_weight=cw,
                callbacks=callbacks(cfg, val_x, va.label, out / "history_head.csv", best, "head"),
                verbose=verbose,
            )
            best.restore()
        else:
            raise InputError(f"unknown head_mode {cfg.head_mode!r}; expected 'features' or 'fit'")
        timings["head_s"] = round(time.perf_counter() - t0, 2)
        histories.append(pd.DataFrame(hist.history).assign(phase="head", epoch=lambda d: np.arange(len(d))))

        # ---- phase 2: fine-tune the top of the backbone, BatchNorm frozen, warm-up + cosine schedule
        n_unfrozen = 0
        if cfg.epochs_finetune > 0 and cfg.finetune_fraction > 0:
            t0 = time.perf_counter()
            n_unfrozen = set_finetune_trainable(model, cfg.finetune_fraction)
            train_ds, val_ds, val_x = _image_datasets(tr, va, size, cfg)
            steps = int(np.ceil(len(tr) / cfg.batch_size)) * cfg.epochs_finetune
            if cfg.strategy == "multiworker":
                hist = _History(
                    fit_distributed(
                        model,
                        train_ds,
                        epochs=cfg.epochs_finetune,
                        lr=cfg.lr_finetune,
                        class_weight=cw,
                        strategy=strategy,
                        csv_path=out / "history_finetune.csv",
                        verbose=verbose,
                        make_optimizer=lambda: finetune_optimizer(cfg, steps),
                    )
                )
                best.offer(
                    val_scores(y_val, np.asarray(model.predict(val_x, verbose=0)))[cfg.monitor],
                    "finetune",
                    cfg.epochs_finetune - 1,
                )
            else:
                model.compile(
                    optimizer=finetune_optimizer(cfg, steps),
                    loss="sparse_categorical_crossentropy",
                    metrics=["accuracy"],
                )
                hist = model.fit(
                    train_ds,
                    validation_data=val_ds,
                    epochs=cfg.epochs_finetune,
                    class_weight=cw,
                    callbacks=callbacks(
                        cfg, val_x, va.label, out / "history_finetune.csv", best, "finetune", plateau=False
                    ),
                    verbose=verbose,
                )
            histories.append(pd.DataFrame(hist.history).assign(phase="finetune", epoch=lambda d: np.arange(len(d))))
            best.restore()
            model.get_layer("backbone").trainable = False
            timings["finetune_s"] = round(time.perf_counter() - t0, 2)

        # ---- phase 3 (optional): a new head on cached middle-layer maps, competing on validation
        saved = model
        map_record: dict | None = None
        if cfg.map_head:
            t0 = time.perf_counter()
            saved, map_record, hist_maps = _map_phase(model, cfg, tr, va, spec.name, size, cw, best)
            histories.append(hist_maps.assign(phase="maps", epoch=lambda d: np.arange(len(d))))
            timings["maps_s"] = round(time.perf_counter() - t0, 2)

    # ---- evaluation and outputs
    t0 = time.perf_counter()
    model_path = out / "model.keras"
    save_model(saved, model_path)
    history = pd.concat(histories, ignore_index=True)
    history.to_csv(out / "history.csv", index=False)
    metrics: dict = {
        "name": spec.name,
        "kind": "backbone",
        "backbone": spec.name,
        "img_size": size,
        "policy": cfg.policy,
        "tiles": int(cfg.tiles),
        "weights": cfg.weights,
        "weights_source": source,
        "seed": cfg.seed,
        "classes": classes,
        "class_weight_mode": cfg.class_weight,
        "class_weights": {classes[k]: v for k, v in cw.items()},
        "split_csv": str(split_path) if split_path else None,
        "config": asdict(cfg),
        "n_params": int(saved.count_params()),
        "n_unfrozen_layers": n_unfrozen,
        "selected": best.record(),
        "map_head": map_record,
        "handover": handover,
        "model_path": str(model_path),
        "model_size_mb": file_size_mb(model_path),
    }
    probas = evaluate_parts(
        saved, out, va, te, classes, metrics, policy=cfg.policy, batch_size=cfg.batch_size, seed=cfg.seed
    )
    if probe_info is not None and probas:
        # the probe's val probabilities come from the cached features; when the probe is also the
        # saved state, its test probabilities are the model's own
        known = {
            "val": probe_info["proba_val"],
            **({"test": probas["test"]} if best.phase == "probe" and "test" in probas else {}),
        }
        same = model_path if best.phase == "probe" else None  # the saved model *is* the probe: one file, two names
        metrics["probe"] = _save_probe(model, probe_info, out / "probe", va, te, classes, cfg, metrics, known, same)
    timings["eval_s"] = round(time.perf_counter() - t0, 2)
    timings["total_s"] = round(time.perf_counter() - t_all, 2)
    metrics["timings"] = timings
    save_json(metrics, out / "metrics.json")
    assert model_classes(saved) == classes
    return metrics


def _map_phase(model, cfg: TrainConfig, tr, va, backbone: str, size: int, cw, best: BestState):
    """Phase ``maps``: cache the cut backbone's maps, train a map head, offer its best epoch to ``best``.

    Returns ``(the model to save, the phase's record, its history)``: the assembled map-head
    classifier when it beat every earlier state on validation, else ``model`` unchanged.
    """
    if not 1 <= int(cfg.map_flips) <= len(maphead.FLIPS):
        raise InputError(f"map_flips must be 1 to {len(maphead.FLIPS)}, got {cfg.map_flips}")
    t0 = time.perf_counter()
    src, trunk, cut = maphead.map_source(model, cfg.map_fraction, backbone, size, cfg.policy, cfg.batch_size)
    train_maps = [src.maps(list(tr.path), c) for c in maphead.FLIPS[: int(cfg.map_flips)]]
    val_maps = np.asarray(src.maps(list(va.path)), np.float32)
    t_maps = time.perf_counter() - t0
    y = tr.label.to_numpy()
    saved, record, history = maphead.compete(
        model,
        trunk,
        cut,
        train_maps,
        y,
        val_maps,
        va.label.to_numpy(),
        best,
        weights=np.array([cw.get(int(k), 1.0) for k in y], np.float32),
        cfg=cfg,
        scores=val_scores,
        verbose=resolve_verbose(cfg.verbose),
    )
    record["maps_s"] = round(t_maps, 2)
    return saved, record, history


def _image_datasets(tr: pd.DataFrame, va: pd.DataFrame, size: int, cfg: TrainConfig):
    """Shuffled, augmented train images with labels; val images with labels; val images alone."""
    train_ds = make_dataset(
        tr.path,
        tr.label,
        size,
        policy=cfg.policy,
        batch_size=cfg.batch_size,
        training=True,
        augment=cfg.augment,
        seed=cfg.seed,
    )
    val_ds = make_dataset(va.path, va.label, size, policy=cfg.policy, batch_size=cfg.batch_size)
    val_x = make_dataset(va.path, None, size, policy=cfg.policy, batch_size=cfg.batch_size)
    return train_ds, val_ds, val_x


def evaluate_parts(
    model,
    out: Path,
    va: pd.DataFrame,
    te: pd.DataFrame,
    classes: list[str],
    metrics: dict,
    *,
    policy: str,
    batch_size: int = 32,
    seed: int = 42,
    known: dict[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Val and test metrics of ``model`` into ``metrics``; probabilities saved as ``proba_<part>.npy``.

    ``known`` holds probabilities already computed for a part (they are not predicted again).
    """
    probas = {}
    for name, part in (("val", va), ("test", te)):
        if len(part):
            proba = (known or {}).get(name)
            if proba is None:
                proba = predict_proba(model, list(part.path), policy=policy, batch_size=batch_size)
            metrics[name] = compute_metrics(part.label.to_numpy(), proba, classes, seed=seed)
            np.save(out / f"proba_{name}.npy", proba.astype(np.float32))
            probas[name] = proba
    return probas


def _fit_probe_into(
    model,
    best: BestState,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    n_classes: int,
    cw: dict[int, float],
    seed: int,
) -> dict:
    """Fit the probe, offer it to ``best`` as phase ``probe``, then reset the head to its initial weights."""
    head = model.get_layer("head")
    initial = [np.array(w) for w in head.get_layer("logits").get_weights()]
    p = probes.fit_probe(
        probes.standardize(head, x_train),
        y_train,
        probes.standardize(head, x_val),
        y_val,
        n_classes,
        class_weight=cw,
        seed=seed,
    )
    probes.set_head(head, p)
    proba_val = np.asarray(head.predict(x_val, verbose=0), np.float64)
    scores = val_scores(y_val, proba_val)
    best.offer(scores[best.monitor], "probe", 0)
    weights = [np.array(w) for w in model.get_weights()]
    head.get_layer("logits").set_weights(initial)
    return {
        "C": p.C,
        "grid_val_log_loss": {str(k): v for k, v in p.grid.items()},
        "val_scores": scores,
        "weights": weights,
        "proba_val": proba_val,
    }


def _hard_link(src: Path, dst: Path) -> bool:
    """Hard-link ``dst`` to ``src``; False where the file system cannot."""
    try:
        os.link(src, dst)
    except OSError:
        return False
    return True


def _save_probe(
    model,
    info: dict,
    out: Path,
    va,
    te,
    classes,
    cfg: TrainConfig,
    parent: dict,
    known: dict[str, np.ndarray],
    same_as: Path | None = None,
) -> dict:
    """Save the probe as an ordinary classifier in ``out`` with its own ``metrics.json``; returns a short
    record. ``same_as``: a file already holding exactly these weights, hard-linked instead of written
    again (the disk holds it once; either name can be deleted without harming the other)."""
    current = [np.array(w) for w in model.get_weights()]
    model.set_weights(info["weights"])
    try:
        out.mkdir(parents=True, exist_ok=False)
        path = out / "model.keras"
        if not (same_as and _hard_link(same_as, path)):
            save_model(model, path)
        m = {
            k: parent[k]
            for k in (
                "backbone",
                "img_size",
                "policy",
                "tiles",
                "weights",
                "weights_source",
                "seed",
                "classes",
                "class_weight_mode",
                "split_csv",
            )
        }
        m.update(
            {
                "name": f"probe_{parent['backbone']}",
                "kind": "probe",
                "C": info["C"],
                "grid_val_log_loss": info["grid_val_log_loss"],
                "model_path": str(path),
                "model_size_mb": file_size_mb(path),
                "n_params": parent["n_params"],
            }
        )
        evaluate_parts(
            model, out, va, te, classes, m, policy=cfg.policy, batch_size=cfg.batch_size, seed=cfg.seed, known=known
        )
        save_json(m, out / "metrics.json")
    finally:
        model.set_weights(current)
    keys = ("accuracy", "balanced_accuracy", "macro_f1")
    return {
        "C": info["C"],
        "path": str(out),
        **{f"{part}_{k}": m[part][k] for part in ("val", "test") if part in m for k in keys},
    }


def handover_check(model, tr: pd.DataFrame, plain_features: np.ndarray, *, size: int, policy: str, n: int = 32) -> dict:
    """Right after phase 1: the full model on plain train images against the head on their cached features.

    Returns the largest probability difference and the two mean losses over the first ``n`` images;
    they agree to float rounding when the hand-over between phases is exact.
    """
    k = min(n, len(tr))
    y = tr.label.to_numpy()[:k]
    full = predict_proba(model, list(tr.path[:k]), policy=policy, batch_size=k)
    head = np.asarray(model.get_layer("head").predict(plain_features[:k], verbose=0), np.float64)
    return {
        "n": k,
        "max_prob_gap": float(np.abs(full - head).max()),
        "loss_full": probes.log_loss(y, full),
        "loss_head": probes.log_loss(y, head),
    }
