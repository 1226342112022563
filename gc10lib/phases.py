"""The phase engine every trainer runs: a head, fine-tuning and a map head, with one best state.

A backbone (:func:`gc10lib.steps.train.run`) and a distilled student
(:func:`gc10lib.distillation.train_student`) are two callers of the same pieces:

* :class:`BestState` – the best validation state over every phase, kept in memory; what is
  saved at the end is that state, and ``metrics["selected"]`` says which phase and epoch won;
* :func:`fit_phase` – compile, fit, restore the best state, and return the phase's history;
* :func:`finetune_phase` – unfreeze the top of the backbone, fit with a warm-up + cosine
  schedule (:func:`finetune_optimizer`), freeze it again;
* :class:`KeepBest` (Keras' own validation loss in the logs) and :class:`ValidationScores` (scores
  computed by a callable, for losses Keras cannot score on hard labels) offer each epoch to the
  best state; :func:`phase_callbacks` adds early stopping, the CSV log and, optionally, an LR
  plateau and TensorBoard;
* the map-head phase (:func:`gc10lib.maphead.train_map_head`) offers its best epoch to the
  same best state.

The settings these read are a :class:`gc10lib.config.PhaseConfig`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import pandas as pd
from sklearn.metrics import f1_score

from gc10lib import probe as probes
from gc10lib.backbones import set_finetune_trainable
from gc10lib.config import FINETUNE_OPTIMIZERS, PhaseConfig
from gc10lib.errors import InputError


def set_seeds(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow (via Keras)."""
    keras.utils.set_random_seed(int(seed))


def resolve_verbose(v: int | str) -> int | str:
    """``"auto"`` becomes ``$GC10_VERBOSE`` (the pipeline sets 2) or Keras' own ``"auto"``."""
    if v == "auto":
        env = os.environ.get("GC10_VERBOSE")
        return int(env) if env else "auto"
    return v


def val_scores(y: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """``val_loss`` (unweighted cross-entropy, as Keras reports it), ``val_accuracy`` and ``val_macro_f1``."""
    pred = proba.argmax(1)
    return {
        "val_loss": probes.log_loss(y, proba),
        "val_accuracy": float(np.mean(pred == y)),
        "val_macro_f1": float(f1_score(y, pred, average="macro", zero_division=0)),
    }


class BestState:
    """The best validation state over every phase (probe, head epochs, fine-tune epochs), in memory.

    ``offer`` takes a monitored value and snapshots the whole model's weights when it is the best
    so far; ``restore`` puts that snapshot back. Lower is better for losses, higher for scores.

    >>> best = BestState(model, "val_loss")
    >>> best.offer(0.41, "head", epoch=3)   # True: the first value is the best so far
    >>> best.restore()                      # the model holds the head's epoch-3 weights again
    """

    def __init__(self, model: keras.Model, monitor: str):
        self.model, self.monitor = model, monitor
        self.sign = 1.0 if monitor in ("val_macro_f1", "val_accuracy") else -1.0
        self.value: float | None = None
        self.phase: str | None = None
        self.epoch: int | None = None
        self.weights: list | None = None
        self.best_by_phase: dict[str, float] = {}

    def offer(self, value: float | None, phase: str, epoch: int, snapshot: bool = True) -> bool:
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
    """Offers each epoch's monitored value (from Keras' validation logs) to a :class:`BestState`.

    With ``macro_f1_on=(x_val, y_val)`` it first adds ``val_macro_f1`` to the logs (Keras does not
    compute it), for a best state or early stopping that monitors it.
    """

    def __init__(self, state: BestState, phase: str, macro_f1_on: tuple | None = None):
        super().__init__()
        self.state, self.phase, self.macro_f1_on = state, phase, macro_f1_on

    def on_epoch_end(self, epoch, logs=None):
        if self.macro_f1_on is not None and logs is not None:
            x_val, y_val = self.macro_f1_on
            pred = np.asarray(self.model.predict(x_val, verbose=0)).argmax(1)
            logs["val_macro_f1"] = float(f1_score(np.asarray(y_val), pred, average="macro", zero_division=0))
        self.state.offer((logs or {}).get(self.state.monitor), self.phase, epoch)


class ValidationScores(keras.callbacks.Callback):
    """Puts ``val_loss``/``val_accuracy``/``val_macro_f1`` of ``predict()`` on the hard validation
    labels into the epoch logs (for a loss on soft targets Keras' own validation loss would be
    wrong), then offers the monitored value to a :class:`BestState`. ``scores[epoch]`` keeps them."""

    def __init__(self, predict: Callable[[], np.ndarray], y_val: np.ndarray, best: BestState, phase: str):
        super().__init__()
        self.predict, self.y_val, self.best, self.phase = predict, np.asarray(y_val), best, phase
        self.scores: dict[int, dict[str, float]] = {}

    def on_epoch_end(self, epoch, logs=None):
        scores = val_scores(self.y_val, np.asarray(self.predict(), np.float64))
        self.scores[int(epoch)] = scores
        if logs is not None:
            logs.update(scores)
        self.best.offer(scores[self.best.monitor], self.phase, epoch)


def phase_callbacks(
    cfg: PhaseConfig,
    scorer: keras.callbacks.Callback,
    csv_path: Path,
    *,
    plateau: bool = False,
    tensorboard: bool = False,
) -> list:
    """``scorer`` (a :class:`KeepBest` or :class:`ValidationScores`), early stopping on
    ``cfg.monitor``, an LR plateau (``plateau``: not with a schedule), the CSV history and
    (``tensorboard``) logs in ``<csv folder>/tensorboard/<phase>``."""
    mode = "max" if cfg.monitor == "val_macro_f1" else "min"
    cbs: list = [scorer, keras.callbacks.EarlyStopping(monitor=cfg.monitor, mode=mode, patience=cfg.patience)]
    if plateau:
        cbs.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor=cfg.monitor, mode=mode, factor=0.3, patience=max(1, cfg.patience // 2), min_lr=1e-7
            )
        )
    cbs.append(keras.callbacks.CSVLogger(str(csv_path)))
    if tensorboard:
        phase = getattr(scorer, "phase", "phase")
        cbs.append(keras.callbacks.TensorBoard(log_dir=str(csv_path.parent / "tensorboard" / phase)))
    return cbs


def finetune_optimizer(cfg: PhaseConfig, steps: int) -> keras.optimizers.Optimizer:
    """The fine-tune optimizer: linear warm-up to ``lr_finetune``, then cosine decay to 0 over ``steps``."""
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
    raise InputError(
        f"finetune_optimizer: expected one of {', '.join(FINETUNE_OPTIMIZERS)}; got {cfg.finetune_optimizer!r}"
    )


def history_frame(history: dict, phase: str) -> pd.DataFrame:
    """A phase's per-epoch history with ``phase`` and ``epoch`` columns."""
    return pd.DataFrame(history).assign(phase=phase, epoch=lambda d: np.arange(len(d)))


def fit_phase(
    model: keras.Model,
    x,
    y=None,
    *,
    phase: str,
    best: BestState,
    optimizer: keras.optimizers.Optimizer,
    loss,
    epochs: int,
    callbacks: list,
    verbose: int | str = 0,
    metrics: list | None = None,
    **fit_kwargs,
) -> pd.DataFrame:
    """One phase: compile ``model``, fit it, then put the best state so far (over every phase) back.

    ``callbacks`` must hold the scorer that offers each epoch to ``best`` (:func:`phase_callbacks`).
    Returns the phase's history (:func:`history_frame`).
    """
    model.compile(optimizer=optimizer, loss=loss, metrics=metrics)
    hist = model.fit(x, y, epochs=epochs, callbacks=callbacks, verbose=verbose, **fit_kwargs)
    best.restore()
    return history_frame(hist.history, phase)


def finetune_phase(
    model: keras.Model,
    x,
    *,
    cfg: PhaseConfig,
    n_train: int,
    best: BestState,
    loss,
    callbacks: list,
    metrics: list | None = None,
    **fit_kwargs,
) -> tuple[pd.DataFrame, int]:
    """Phase ``finetune``: the top ``cfg.finetune_fraction`` of the backbone unfrozen (BatchNorm stays
    frozen), a warm-up + cosine schedule over ``cfg.epochs_finetune`` epochs of ``n_train`` images,
    the best state put back, the backbone frozen again. Returns ``(history, layers unfrozen)``."""
    n_unfrozen = set_finetune_trainable(model, cfg.finetune_fraction)
    steps = int(np.ceil(n_train / cfg.batch_size)) * cfg.epochs_finetune
    history = fit_phase(
        model,
        x,
        phase="finetune",
        best=best,
        optimizer=finetune_optimizer(cfg, steps),
        loss=loss,
        epochs=cfg.epochs_finetune,
        callbacks=callbacks,
        verbose=resolve_verbose(cfg.verbose),
        metrics=metrics,
        **fit_kwargs,
    )
    model.get_layer("backbone").trainable = False
    return history, n_unfrozen


def wants_finetune(cfg: PhaseConfig) -> bool:
    """Whether a config has a fine-tune phase at all."""
    return cfg.epochs_finetune > 0 and cfg.finetune_fraction > 0
