"""Linear probes: a logistic regression on a backbone's cached, frozen features.

A probe is the floor every trained model must beat: on NEU and X-SDD it already scores 99-100%,
and on hard imbalanced data (ELPV) a careless fine-tune falls below it. :func:`fit_probe` fits one
on the features that training has already cached (no extra backbone pass for train and val), with
``C`` chosen on validation by log-loss. :func:`set_head` writes it into a classifier's head
(standardization + softmax Dense), so a probe is an ordinary gc10 model: it can be saved,
evaluated, exported, put in an ensemble, or used as the starting point of fine-tuning.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression

from gc10lib.errors import InputError

C_GRID = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)


@dataclass
class Probe:
    """A fitted probe in the head's standardized feature space."""

    C: float
    coef: np.ndarray  # (n_classes, n_features), logits = z @ coef.T + intercept
    intercept: np.ndarray  # (n_classes,)
    val_log_loss: float
    grid: dict[float, float]  # C -> validation log-loss

    def logits(self, z: np.ndarray) -> np.ndarray:
        return z @ self.coef.T + self.intercept

    def predict_proba(self, z: np.ndarray) -> np.ndarray:
        return softmax(self.logits(z))


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def log_loss(y: np.ndarray, proba: np.ndarray) -> float:
    """Mean cross-entropy, as Keras' unweighted ``val_loss`` computes it."""
    p = np.clip(proba[np.arange(len(y)), np.asarray(y, int)], 1e-7, 1.0)
    return float(-np.mean(np.log(p)))


def fit_probe(
    z_train: np.ndarray,
    y_train: np.ndarray,
    z_val: np.ndarray,
    y_val: np.ndarray,
    n_classes: int,
    class_weight: dict[int, float] | None = None,
    grid=C_GRID,
    seed: int = 42,
) -> Probe:
    """Multinomial logistic regression on standardized features, ``C`` chosen by validation log-loss.

    ``class_weight`` (keyed by label index, as training uses it) weights the training samples.
    Classes absent from ``y_train`` get a logit of -30, so the result always has ``n_classes`` columns.
    """
    y_train = np.asarray(y_train, int)
    present = np.unique(y_train)
    if len(present) < 2:
        raise InputError("fit_probe: the training features hold fewer than two classes")
    sw = None if not class_weight else np.array([class_weight.get(int(c), 1.0) for c in y_train])
    best: Probe | None = None
    scores: dict[float, float] = {}
    for C in grid:
        lr = LogisticRegression(C=C, max_iter=3000, random_state=seed)
        lr.fit(z_train, y_train, sample_weight=sw)
        coef = np.full((n_classes, z_train.shape[1]), 0.0)
        intercept = np.full(n_classes, -30.0)
        if len(present) == 2:  # sklearn keeps one row for two classes: logits (-z/2, z/2)
            coef[present[0]], coef[present[1]] = -lr.coef_[0] / 2, lr.coef_[0] / 2
            intercept[present[0]], intercept[present[1]] = (-lr.intercept_[0] / 2, lr.intercept_[0] / 2)
        else:
            coef[present], intercept[present] = lr.coef_, lr.intercept_
        p = Probe(float(C), coef.astype(np.float32), intercept.astype(np.float32), 0.0, scores)
        p.val_log_loss = scores[C] = log_loss(y_val, p.predict_proba(z_val))
        if best is None or p.val_log_loss < best.val_log_loss:
            best = p
    assert best is not None
    return best


def standardize(head, features: np.ndarray) -> np.ndarray:
    """Features in the head's standardized space (its ``feature_norm`` layer, inference mode)."""
    return np.asarray(head.get_layer("feature_norm")(features), dtype=np.float32)


def set_head(head, probe: Probe) -> None:
    """Write ``probe`` into a classifier head (``feature_norm`` -> Dropout -> ``logits``)."""
    head.get_layer("logits").set_weights([probe.coef.T.copy(), probe.intercept.copy()])
