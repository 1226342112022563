"""The train step: one backbone, a probe and a head on cached frozen features, fine-tuning, a map head.

:func:`run` is what notebook ``02_finetune`` and ``gc10 train`` call. Its phases are
those of :mod:`gc10lib.phases` (the distilled student runs the same ones), on the cached
features of :mod:`gc10lib.features`. It writes to ``out_dir``: ``model.keras``, ``metrics.json``
(val and test metrics, split manifest, timings, seed, weights source), ``history.csv``, the
probabilities of the val and test splits, and the probe on its own as ``probe/``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from gc10lib import data, maphead
from gc10lib import probe as probes
from gc10lib.backbones import (
    adapt_feature_norm,
    build_classifier,
    calibrate_batchnorm,
    get_spec,
    save_model,
    set_finetune_trainable,
)
from gc10lib.config import TrainConfig
from gc10lib.errors import InputError, SetupError
from gc10lib.features import FeatureSource, extract_features, phase1_features
from gc10lib.inference import evaluate_parts, predict_proba
from gc10lib.inputs import ImageCache, make_dataset
from gc10lib.layers import model_classes
from gc10lib.phases import (
    BestState,
    KeepBest,
    finetune_optimizer,
    finetune_phase,
    fit_phase,
    history_frame,
    phase_callbacks,
    resolve_verbose,
    set_seeds,
    val_scores,
    wants_finetune,
)
from gc10lib.settings import file_size_mb, new_output_dir, save_json

log = logging.getLogger(__name__)

__all__ = ["BestState", "TrainConfig", "load_manifest", "run"]  # BestState: see gc10lib.phases


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


def load_manifest(
    data_dir: str | Path, split_csv: str | Path | None, seed: int, fractions=(0.7, 0.15, 0.15)
) -> tuple[pd.DataFrame, list[str], Path | None]:
    """Read the split manifest (or make one in memory when none is given) and the class order."""
    if split_csv:
        man = data.read_split(split_csv, data_root=data_dir)
        return man, data.split_classes(split_csv, man), Path(split_csv)
    ds = data.discover(data_dir)
    return data.split_dataset(ds, fractions, seed), ds.classes, None


@dataclass
class _Job:
    """One backbone's training in progress: its settings, split, output folder and model."""

    cfg: TrainConfig
    backbone: str
    size: int
    classes: list[str]
    tr: pd.DataFrame
    va: pd.DataFrame
    te: pd.DataFrame
    split_path: Path | None
    cw: dict[int, float]
    out: Path
    strategy: object = None
    model: keras.Model | None = None
    source: str = ""
    best: BestState | None = None
    timings: dict = field(default_factory=dict)
    histories: list = field(default_factory=list)

    @property
    def y_val(self) -> np.ndarray:
        return self.va.label.to_numpy()

    @property
    def verbose(self) -> int | str:
        return resolve_verbose(self.cfg.verbose)

    def head_phase(self, model, x, y, x_val, **fit_kwargs):
        """Phase ``head`` (Adam at ``lr_head``, class-weighted cross-entropy, an LR plateau) on
        ``model``: the head alone on cached features, or the classifier with its backbone frozen."""
        return fit_phase(
            model,
            x,
            y,
            phase="head",
            best=self.best,
            optimizer=keras.optimizers.Adam(self.cfg.lr_head),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
            epochs=self.cfg.epochs_head,
            callbacks=self.callbacks("head", x_val, plateau=True),
            verbose=self.verbose,
            class_weight=self.cw,
            **fit_kwargs,
        )

    def callbacks(self, phase: str, x_val, plateau: bool) -> list:
        """The phase's callbacks: each epoch offered to the best state (Keras' validation logs, plus
        macro-F1 on ``x_val`` when monitored), early stopping, CSV history, TensorBoard if asked."""
        macro = (x_val, self.va.label) if self.cfg.monitor == "val_macro_f1" else None
        keep = KeepBest(self.best, phase, macro_f1_on=macro)
        return phase_callbacks(
            self.cfg, keep, self.out / f"history_{phase}.csv", plateau=plateau, tensorboard=self.cfg.tensorboard
        )


def run(
    cfg: TrainConfig,
    data_dir: str | Path,
    out_dir: str | Path | None,
    split_csv: str | Path | None = None,
    manifest: pd.DataFrame | None = None,
    classes: list[str] | None = None,
) -> dict:
    """Train one backbone end to end and write its outputs; returns the metrics dict.

    Phases (:mod:`gc10lib.phases`): a logistic-regression probe and a class-weighted head on cached
    frozen features, then fine-tuning, then (``map_head``) a new head on cached middle-layer maps
    (:mod:`gc10lib.maphead`). Every probe/head/fine-tune/maps epoch is a candidate; the one best on
    validation (by ``cfg.monitor``) is what gets saved, and ``metrics["selected"]`` says which
    phase won. The probe is also saved on its own, as ``probe/`` (``probe_<backbone>``).

    >>> m = run(TrainConfig(backbone="mobilenet", img_size=224), "data/xsdd", "runs/mn")
    >>> m["val"]["accuracy"], m["selected"]["phase"]
    """
    t_all = time.perf_counter()
    job = _prepare(cfg, data_dir, out_dir, split_csv, manifest, classes)
    scope = job.strategy.scope() if job.strategy is not None else contextlib.nullcontext()
    with precision_policy(cfg.mixed_precision), scope:
        _build(job)
        t0 = time.perf_counter()
        if cfg.head_mode == "features":
            probe_info, handover = _head_on_features(job)
        else:
            probe_info, handover = _head_on_images(job), None
        job.timings["head_s"] = round(time.perf_counter() - t0, 2)
        n_unfrozen = _finetune(job)
        saved, map_record = job.model, None
        if cfg.map_head:
            t0 = time.perf_counter()
            saved, map_record, hist_maps = map_phase(
                job.model, cfg, job.tr, job.va, job.backbone, job.size, job.cw, job.best
            )
            job.histories.append(hist_maps.assign(phase="maps", epoch=lambda d: np.arange(len(d))))
            job.timings["maps_s"] = round(time.perf_counter() - t0, 2)
    metrics = _write_outputs(job, saved, probe_info, handover, n_unfrozen, map_record)
    job.timings["total_s"] = round(time.perf_counter() - t_all, 2)
    metrics["timings"] = job.timings
    save_json(metrics, job.out / "metrics.json")
    assert model_classes(saved) == job.classes
    return metrics


def _prepare(cfg: TrainConfig, data_dir, out_dir, split_csv, manifest, classes) -> _Job:
    """The split, class weights and a new output folder; everything that can be refused is refused
    before the folder exists."""
    spec = get_spec(cfg.backbone)
    size = int(cfg.img_size or spec.native_size * max(int(cfg.tiles), 1))  # tiles: each at the native size
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
    out = new_output_dir(out_dir, prefix=f"train-{spec.name}")
    set_seeds(cfg.seed)
    job = _Job(cfg, spec.name, size, list(classes), tr, va, te, split_path, cw, out)
    job.strategy = make_strategy(cfg.strategy)
    return job


def _build(job: _Job) -> None:
    """The classifier (BatchNorm calibrated on training images under random init), its backbone
    frozen, and the best state that every phase offers to."""
    cfg = job.cfg
    kw = {k: getattr(cfg, k) for k in ("weights", "dropout", "weights_dir", "seed", "policy", "tiles", "tile_pool")}
    job.model, job.source = build_classifier(job.backbone, job.classes, job.size, **kw)
    if job.source == "random":  # no pretrained BatchNorm statistics: take them from training images
        pick = job.tr.sample(min(len(job.tr), 64), random_state=cfg.seed)
        calibrate_batchnorm(job.model, ImageCache(job.size, cfg.policy).load(list(pick.path)).astype("float32"))
    job.model.get_layer("backbone").trainable = False
    job.best = BestState(job.model, cfg.monitor)


def _head_on_features(job: _Job) -> tuple[dict | None, dict]:
    """Phase 1 on cached features: the probe, then a class-weighted head. Returns the probe's
    record (``None`` without one) and the hand-over check."""
    cfg, model, best, tr = job.cfg, job.model, job.best, job.tr
    t0 = time.perf_counter()
    head = model.get_layer("head")
    src = FeatureSource(model, cfg, job.backbone, job.size, job.source)
    xs, xv, cached, features_from = phase1_features(src, list(tr.path), list(job.va.path))
    x, y = np.concatenate(xs), np.concatenate([tr.label.to_numpy()] * len(xs))
    job.timings.update(
        features_s=round(time.perf_counter() - t0, 2), features_from=features_from, features_cached=all(cached)
    )
    t1 = time.perf_counter()
    adapt_feature_norm(head, x)
    probe_info = None
    if cfg.probe:
        probe_info = _fit_probe_into(model, best, x, y, xv, job.y_val, len(job.classes), job.cw, cfg.seed)
        job.timings["probe_s"] = round(time.perf_counter() - t1, 2)
    t1 = time.perf_counter()
    if cfg.strategy == "multiworker":
        feats = tf.data.Dataset.from_tensor_slices((x, y.astype("int32")))
        feats = feats.shuffle(len(feats), seed=cfg.seed).batch(cfg.batch_size)
        history = _fit_multiworker(job, head, feats, "head", cfg.epochs_head, cfg.lr_head, xv)
    else:
        history = job.head_phase(
            head, x, y, xv, validation_data=(xv, job.y_val), batch_size=cfg.batch_size, shuffle=True
        )
    job.timings["head_fit_s"] = round(time.perf_counter() - t1, 2)
    job.histories.append(history)
    return probe_info, handover_check(model, tr, xs[0], size=job.size, policy=cfg.policy)


def _head_on_images(job: _Job) -> None:
    """Phase 1 with the frozen backbone run every epoch (``head_mode: fit``); no probe."""
    cfg, model = job.cfg, job.model
    sample = list(job.tr.sample(min(len(job.tr), 256), random_state=cfg.seed).path)
    f, _ = extract_features(
        model,
        sample,
        size=job.size,
        policy=cfg.policy,
        weights_source=job.source,
        backbone=job.backbone,
        seed=cfg.seed,
        batch_size=cfg.batch_size,
    )
    adapt_feature_norm(model.get_layer("head"), f)
    train_ds, val_ds, val_x = _image_datasets(job.tr, job.va, job.size, cfg)
    job.histories.append(job.head_phase(model, train_ds, None, val_x, validation_data=val_ds))


def _finetune(job: _Job) -> int:
    """Phase 2: the top of the backbone fine-tuned on images (:func:`gc10lib.phases.finetune_phase`;
    under ``multiworker``, :func:`fit_distributed`). Returns the number of layers unfrozen."""
    cfg, model, best = job.cfg, job.model, job.best
    if not wants_finetune(cfg):
        return 0
    t0 = time.perf_counter()
    train_ds, val_ds, val_x = _image_datasets(job.tr, job.va, job.size, cfg)
    if cfg.strategy == "multiworker":
        n_unfrozen = set_finetune_trainable(model, cfg.finetune_fraction)
        steps = int(np.ceil(len(job.tr) / cfg.batch_size)) * cfg.epochs_finetune
        history = _fit_multiworker(
            job,
            model,
            train_ds,
            "finetune",
            cfg.epochs_finetune,
            cfg.lr_finetune,
            val_x,
            lambda: finetune_optimizer(cfg, steps),
        )
        model.get_layer("backbone").trainable = False
    else:
        history, n_unfrozen = finetune_phase(
            model,
            train_ds,
            cfg=cfg,
            n_train=len(job.tr),
            best=best,
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
            callbacks=job.callbacks("finetune", val_x, plateau=False),
            validation_data=val_ds,
            class_weight=job.cw,
        )
    job.histories.append(history)
    job.timings["finetune_s"] = round(time.perf_counter() - t0, 2)
    return n_unfrozen


def _fit_multiworker(job: _Job, model, train, phase: str, epochs: int, lr: float, x_val, make_optimizer=None):
    """A phase under ``MultiWorkerMirroredStrategy`` (:func:`fit_distributed`): no callbacks, so its
    last epoch is offered to the best state, which is then put back. Returns the phase's history."""
    hist = fit_distributed(
        model,
        train,
        epochs=epochs,
        lr=lr,
        class_weight=job.cw,
        strategy=job.strategy,
        csv_path=job.out / f"history_{phase}.csv",
        verbose=job.verbose,
        make_optimizer=make_optimizer,
    )
    proba = np.asarray(model.predict(x_val, verbose=0))
    job.best.offer(val_scores(job.y_val, proba)[job.cfg.monitor], phase, epochs - 1)
    job.best.restore()
    return history_frame(hist, phase)


def _write_outputs(job: _Job, saved, probe_info: dict | None, handover, n_unfrozen: int, map_record) -> dict:
    """Save the chosen model, its history, its val/test metrics and the probe; returns the metrics."""
    cfg, out = job.cfg, job.out
    t0 = time.perf_counter()
    model_path = out / "model.keras"
    save_model(saved, model_path)
    pd.concat(job.histories, ignore_index=True).to_csv(out / "history.csv", index=False)
    metrics: dict = {
        "name": job.backbone,
        "kind": "backbone",
        "backbone": job.backbone,
        "img_size": job.size,
        "policy": cfg.policy,
        "tiles": int(cfg.tiles),
        "weights": cfg.weights,
        "weights_source": job.source,
        "seed": cfg.seed,
        "classes": job.classes,
        "class_weight_mode": cfg.class_weight,
        "class_weights": {job.classes[k]: v for k, v in job.cw.items()},
        "split_csv": str(job.split_path) if job.split_path else None,
        "config": asdict(cfg),
        "n_params": int(saved.count_params()),
        "n_unfrozen_layers": n_unfrozen,
        "selected": job.best.record(),
        "map_head": map_record,
        "handover": handover,
        "model_path": str(model_path),
        "model_size_mb": file_size_mb(model_path),
    }
    kw = dict(policy=cfg.policy, batch_size=cfg.batch_size, seed=cfg.seed)
    probas = evaluate_parts(saved, out, job.va, job.te, job.classes, metrics, **kw)
    if probe_info is not None and probas:
        # the probe's val probabilities come from the cached features; when the probe is also the
        # saved state, its test probabilities are the model's own
        won = job.best.phase == "probe"
        known = {"val": probe_info["proba_val"], **({"test": probas["test"]} if won and "test" in probas else {})}
        same = model_path if won else None  # the saved model *is* the probe: one file, two names
        metrics["probe"] = _save_probe(
            job.model, probe_info, out / "probe", job.va, job.te, job.classes, cfg, metrics, known, same
        )
    job.timings["eval_s"] = round(time.perf_counter() - t0, 2)
    return metrics


def map_phase(model, cfg: TrainConfig, tr, va, backbone: str, size: int, cw, best: BestState):
    """Phase ``maps``: cache the cut backbone's maps, train a map head, offer its best epoch to ``best``.

    Returns ``(the model to save, the phase's record, its history)``: the assembled map-head
    classifier when it beat every earlier state on validation, else ``model`` unchanged.
    """
    t0 = time.perf_counter()
    src, trunk, cut = maphead.map_source(model, cfg.map_fraction, backbone, size, cfg.policy, cfg.batch_size)
    train_maps = [src.maps(list(tr.path), c) for c in maphead.FLIPS[: int(cfg.map_flips)]]
    val_maps = np.asarray(src.maps(list(va.path)), np.float32)
    t_maps = time.perf_counter() - t0
    y = tr.label.to_numpy()
    weights = np.array([cw.get(int(k), 1.0) for k in y], np.float32)
    maps = maphead.MapData(train_maps, y, weights, val_maps, va.label.to_numpy())
    saved, record, history = maphead.train_map_head(model, trunk, cut, maps, best, cfg)
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
