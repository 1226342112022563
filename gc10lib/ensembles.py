"""One Keras model from several fine-tuned backbone models.

The ensemble has a single raw-image input (float 0..255, RGB, ``input_size`` square). Branches
that need another size share one in-model resize per size; every branch applies its own
preprocessing inside itself (it is the member model, nested). Members' probabilities are combined
by one of:

* ``mean`` — plain average (the original project's method);
* ``weighted`` — weights on the simplex minimising validation log-loss;
* ``select`` — greedy ensemble selection with replacement by validation macro-F1
  (Caruana et al., ICML 2004); the selection counts become weights;
* ``stack`` — multinomial logistic regression on the members' validation log-probabilities,
  embedded as a trained Dense layer (never shipped untrained).

The three fitted methods are fitted on the validation split, so their validation scores are
*cross-fitted*: each validation image is scored by the method refitted without its fold. Scored on
the images it was fitted on, ``weighted`` could never lose to ``mean`` (the uniform weights are one
of the points its fit searches), and validation would always prefer it, however little the fit
generalises.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score, log_loss
from sklearn.model_selection import StratifiedKFold, cross_val_predict

from gc10lib.errors import InputError
from gc10lib.layers import EPS, ClassNames, ModelInfo, ResizeTo, SafeLog, WeightedAverage, model_info

METHODS = ("mean", "weighted", "stack", "select")


# --------------------------------------------------------------------------- fitting on validation


def _stack_features(probas: Sequence[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.log(np.clip(p, EPS, 1.0)) for p in probas], axis=1)


def weighted_sum(probas: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """Weighted sum of member probability arrays."""
    return sum(w * p for w, p in zip(weights, probas, strict=True))


def fit_weights(
    probas: Sequence[np.ndarray], y: np.ndarray, min_weight: float = 1e-3, n_iter: int = 2000, tol: float = 1e-9
) -> np.ndarray:
    """Simplex weights minimising the log-loss of the weighted mixture on validation.

    The mixture's log-likelihood is concave in the weights, and the EM update for mixture weights
    (each member's share of the probability it gives the true class) climbs it monotonically to the
    global optimum, with no step size to tune. Weights below ``min_weight`` are then set to 0 (and the
    rest renormalized), so those members can be left out of the shipped ensemble.
    """
    y = np.asarray(y)
    lik = np.stack([np.clip(np.asarray(p)[np.arange(len(y)), y], EPS, 1.0) for p in probas], axis=1)  # n x k
    w = np.full(lik.shape[1], 1.0 / lik.shape[1])
    for _ in range(n_iter):
        resp = lik * w
        new = (resp / resp.sum(1, keepdims=True)).mean(0)
        done = np.abs(new - w).max() < tol
        w = new
        if done:
            break
    w[w < min_weight] = 0.0
    return w / w.sum()


def caruana_select(probas: Sequence[np.ndarray], y: np.ndarray, n_iter: int = 25) -> np.ndarray:
    """Greedy forward selection with replacement by macro-F1 (ties broken by log-loss)."""
    k, n_classes = len(probas), probas[0].shape[1]
    counts = np.zeros(k)
    current = np.zeros_like(probas[0])
    for _ in range(n_iter):
        best, best_key = None, None
        for j in range(k):
            cand = (current * counts.sum() + probas[j]) / (counts.sum() + 1)
            f1 = f1_score(y, cand.argmax(1), average="macro", zero_division=0)
            ll = log_loss(
                y, np.clip(cand, EPS, 1) / np.clip(cand, EPS, 1).sum(1, keepdims=True), labels=list(range(n_classes))
            )
            key = (f1, -ll)
            if best_key is None or key > best_key:
                best, best_key = j, key
        current = (current * counts.sum() + probas[best]) / (counts.sum() + 1)
        counts[best] += 1
    return counts / counts.sum()


def validation_folds(y: np.ndarray, seed: int = 42, max_splits: int = 5) -> StratifiedKFold | None:
    """The stratified folds that cross-fit a method on validation: up to ``max_splits``, no more than
    the rarest present class has images; ``None`` when that is fewer than 2 (no honest score then)."""
    y = np.asarray(y)
    n_splits = int(min(max_splits, np.bincount(y)[np.unique(y)].min()))
    return StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed) if n_splits >= 2 else None


def fit_stacker(probas: Sequence[np.ndarray], y: np.ndarray, seed: int = 42, C: float = 1.0) -> dict:
    """Fit the stacking meta-classifier on validation predictions.

    Returns ``coef`` (n_features x n_classes, for all model classes), ``intercept`` and the
    out-of-fold probabilities on the validation set (each predicted by a model that did not see it).
    """
    n_classes = probas[0].shape[1]
    x = _stack_features(probas)
    y = np.asarray(y)
    present = np.unique(y)
    clf = LogisticRegression(C=C, max_iter=5000)
    oof = None
    cv = validation_folds(y, seed)
    if cv is not None:
        oof_local = cross_val_predict(clf, x, y, cv=cv, method="predict_proba")
        oof = np.full((len(y), n_classes), EPS)
        oof[:, present] = oof_local
        oof /= oof.sum(1, keepdims=True)
    clf.fit(x, y)
    coef = np.zeros((x.shape[1], n_classes), np.float32)
    intercept = np.full(n_classes, -30.0, np.float32)  # classes absent from val: never predicted
    if len(present) == 2:  # sklearn's binary form: one column for the positive class
        coef[:, present[1]] = clf.coef_[0]
        intercept[present] = [0.0, clf.intercept_[0]]
    else:
        coef[:, present] = clf.coef_.T
        intercept[present] = clf.intercept_
    return {"coef": coef, "intercept": intercept, "oof_proba": oof}


# --------------------------------------------------------------------------- building


def check_members(models: Sequence) -> ModelInfo:
    """Members must carry the same class list, in the same order, and the same resize policy.

    Returns the ensemble's own :class:`ModelInfo` (the largest member input size, every backbone).
    """
    if not models:
        raise InputError("an ensemble needs at least one model")
    infos = [model_info(m) for m in models]
    first = infos[0]
    for m, info in zip(models[1:], infos[1:], strict=True):
        if info.classes != first.classes:
            raise InputError(
                f"ensemble members disagree on classes: {models[0].name!r} has {first.classes}, "
                f"{m.name!r} has {info.classes}"
            )
        if info.policy != first.policy:
            raise InputError(
                f"ensemble members disagree on the resize policy: {models[0].name!r} uses "
                f"{first.policy!r}, {m.name!r} uses {info.policy!r}"
            )
    sources = sorted({i.weights_source.split(":")[0] for i in infos if i.weights_source})
    return ModelInfo(
        first.classes,
        max(i.input_size for i in infos),
        first.policy,
        [b for i in infos for b in i.backbones],
        ",".join(sources) or None,
    )


def branch_outputs(models: Sequence, input_size: int | None = None):
    """The ensemble's single raw-image input and each member's output on it.

    Members needing another size than the input share one in-model resize per distinct size.
    """
    sizes = [model_info(m).input_size for m in models]
    size = int(input_size or max(sizes))
    inp = keras.Input((size, size, 3), name="image")
    resized: dict[int, object] = {size: inp}
    outs = []
    for i, (m, s) in enumerate(zip(models, sizes, strict=True)):
        if s not in resized:
            resized[s] = ResizeTo(s, name=f"resize_{s}")(inp)
        if not m.name.startswith("branch"):
            m.name = f"branch{i}_{m.name.removeprefix('gc10_')}"
        m.trainable = False
        outs.append(m(resized[s], training=False))
    return inp, outs


def build_ensemble(
    models: Sequence,
    method: str = "mean",
    *,
    weights: Sequence[float] | None = None,
    stacker: dict | None = None,
    input_size: int | None = None,
    name: str | None = None,
):
    """One Keras model combining ``models`` (each with its preprocessing inside) by ``method``.

    ``weighted``/``select`` need ``weights``; ``stack`` needs ``stacker`` from :func:`fit_stacker`.
    """
    if method not in METHODS:
        raise InputError(f"unknown ensemble method {method!r}; expected one of {METHODS}")
    info = check_members(models)
    classes = info.classes
    inp, outs = branch_outputs(models, input_size)
    if len(outs) == 1:
        combined = outs[0]
    elif method == "mean":
        combined = keras.layers.Average(name="mean")(outs)
    elif method in ("weighted", "select"):
        if weights is None or len(weights) != len(models):
            raise InputError(f"method {method!r} needs one weight per member")
        combined = WeightedAverage(weights, name=method)(outs)
    else:
        if stacker is None:
            raise InputError("method 'stack' needs a fitted stacker (fit_stacker); it is never shipped untrained")
        feats = SafeLog(name="log_proba")(keras.layers.Concatenate(name="stack_inputs")(outs))
        dense = keras.layers.Dense(len(classes), activation="softmax", name="stacker", dtype="float32")
        combined = dense(feats)
        dense.set_weights([np.asarray(stacker["coef"], np.float32), np.asarray(stacker["intercept"], np.float32)])
    meta = ModelInfo(classes, int(inp.shape[1]), info.policy, info.backbones, info.weights_source, method)
    out = ClassNames(classes, meta.as_info(), name="class_names", dtype="float32")(combined)
    return keras.Model(inp, out, name=name or f"ensemble_{method}")


def fit_method(method: str, val_probas: Sequence[np.ndarray], y_val: np.ndarray, seed: int = 42) -> dict:
    """Fit ``method`` on the members' validation probabilities.

    Returns ``{"method", "weights"}`` for ``weighted``/``select``, ``{"method", "stacker"}`` for
    ``stack`` and ``{"method"}`` for ``mean``. The fitted methods also return their cross-fitted
    validation probabilities under ``oof_val_proba`` (each fold's images scored by the method
    refitted on the other folds; ``None`` when the rarest class has a single image), the honest
    score to choose by. :func:`combine` applies it; :func:`build_fitted` ships it.
    """
    if method not in METHODS:
        raise InputError(f"unknown ensemble method {method!r}; expected one of {METHODS}")
    fitted: dict = {"method": method}
    if method in ("weighted", "select"):
        fit = fit_weights if method == "weighted" else caruana_select
        y_val = np.asarray(y_val)
        fitted["weights"] = [float(w) for w in fit(val_probas, y_val)]
        cv = validation_folds(y_val, seed)
        if cv is None:
            fitted["oof_val_proba"] = None
        else:
            oof = np.zeros_like(np.asarray(val_probas[0], np.float64))
            for train, held in cv.split(oof, y_val):
                w = fit([p[train] for p in val_probas], y_val[train])
                oof[held] = weighted_sum([p[held] for p in val_probas], w)
            fitted["oof_val_proba"] = oof
    elif method == "stack":
        stacker = fit_stacker(val_probas, y_val, seed=seed)
        fitted["stacker"] = {"coef": stacker["coef"], "intercept": stacker["intercept"]}
        fitted["oof_val_proba"] = stacker["oof_proba"]
    return fitted


def build_fitted(models: Sequence, fitted: dict, input_size: int | None = None):
    """The Keras ensemble of a fitted method; members with zero weight are left out of it."""
    method, weights = fitted["method"], fitted.get("weights")
    if weights is not None:
        keep = [i for i, w in enumerate(weights) if w > 0]
        models, weights = [models[i] for i in keep], [weights[i] for i in keep]
    return build_ensemble(models, method, weights=weights, stacker=fitted.get("stacker"), input_size=input_size)


# --------------------------------------------------------------------------- a run folder's ensembles


def combine(method: str, probas: Sequence[np.ndarray], info: dict) -> np.ndarray:
    """The ensemble's output computed from member probabilities, exactly as the Keras model does."""
    if len(probas) == 1:
        return probas[0]
    if method == "mean":
        return sum(probas) / len(probas)
    if method in ("weighted", "select"):
        return weighted_sum(probas, info["weights"])
    z = _stack_features(probas) @ info["stacker"]["coef"] + info["stacker"]["intercept"]
    z = np.exp(z - z.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


__all__ = [
    "METHODS",
    "build_ensemble",
    "caruana_select",
    "check_members",
    "combine",
    "build_fitted",
    "fit_method",
    "fit_stacker",
    "fit_weights",
    "weighted_sum",
]
