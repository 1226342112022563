"""Metrics for any model or ensemble on any split (scikit-learn based)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    log_loss,
    precision_recall_fscore_support,
)

from gc10lib.errors import InputError


def expected_calibration_error(y_true: np.ndarray, proba: np.ndarray, n_bins: int = 15) -> tuple[float, dict]:
    """ECE with equal-width confidence bins; also returns the bins for a reliability diagram."""
    conf = proba.max(axis=1)
    correct = (proba.argmax(axis=1) == y_true).astype(float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1]), 0, n_bins - 1)
    ece, bins = 0.0, {"confidence": [], "accuracy": [], "count": [], "edges": edges.tolist()}
    for b in range(n_bins):
        m = idx == b
        n = int(m.sum())
        bins["count"].append(n)
        if n:
            c, a = float(conf[m].mean()), float(correct[m].mean())
            ece += n / len(y_true) * abs(a - c)
            bins["confidence"].append(c)
            bins["accuracy"].append(a)
        else:
            bins["confidence"].append(None)
            bins["accuracy"].append(None)
    return float(ece), bins


def bootstrap_ci(
    y_true: np.ndarray, y_pred: np.ndarray, n_boot: int = 1000, seed: int = 0, labels: Sequence[int] | None = None
) -> dict:
    """Percentile 95% intervals for accuracy and macro-F1 by resampling images."""
    rng = np.random.default_rng(seed)
    n = len(y_true)
    accs, f1s = np.empty(n_boot), np.empty(n_boot)
    for i in range(n_boot):
        s = rng.integers(0, n, n)
        accs[i] = np.mean(y_true[s] == y_pred[s])
        f1s[i] = f1_score(y_true[s], y_pred[s], average="macro", labels=labels, zero_division=0)
    return {
        "accuracy": [float(np.percentile(accs, 2.5)), float(np.percentile(accs, 97.5))],
        "macro_f1": [float(np.percentile(f1s, 2.5)), float(np.percentile(f1s, 97.5))],
    }


def compute_metrics(
    y_true: Sequence[int], proba: np.ndarray, classes: Sequence[str], *, n_boot: int = 500, seed: int = 0
) -> dict:
    """Accuracy, balanced accuracy, macro-F1, top-2, per-class P/R/F1/support, confusion matrix
    (counts), ECE with reliability bins, log-loss and bootstrap 95% intervals.

    Macro averages run over the classes present in ``y_true`` (a model may know more classes
    than a dataset holds).
    """
    y_true = np.asarray(y_true, dtype=int)
    proba = np.asarray(proba, dtype=float)
    if proba.ndim != 2 or proba.shape[0] != len(y_true):
        raise InputError(f"proba has shape {proba.shape}, expected ({len(y_true)}, n_classes)")
    if proba.shape[1] != len(classes):
        raise InputError(f"proba has {proba.shape[1]} columns but {len(classes)} class names were given")
    y_pred = proba.argmax(axis=1)
    present = sorted(set(y_true.tolist()))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=list(range(len(classes))), zero_division=0)
    top2 = np.argsort(-proba, axis=1)[:, :2]
    ece, bins = expected_calibration_error(y_true, proba)
    clipped = np.clip(proba, 1e-7, 1.0)
    return {
        "n": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", labels=present, zero_division=0)),
        "top2_accuracy": float(np.mean([t in row for t, row in zip(y_true, top2, strict=True)])),
        "log_loss": float(log_loss(y_true, clipped / clipped.sum(1, keepdims=True), labels=list(range(len(classes))))),
        "ece": ece,
        "reliability": bins,
        "per_class": {
            c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, c in enumerate(classes)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=list(range(len(classes)))).tolist(),
        "classes": list(classes),
        "ci95": bootstrap_ci(y_true, y_pred, n_boot=n_boot, seed=seed, labels=present) if n_boot else None,
    }


def headline(m: dict) -> str:
    """One line: accuracy, macro-F1 with intervals."""
    ci = m.get("ci95") or {}
    acc_ci = ci.get("accuracy")
    f1_ci = ci.get("macro_f1")
    a = f"acc {m['accuracy']:.4f}" + (f" [{acc_ci[0]:.3f}, {acc_ci[1]:.3f}]" if acc_ci else "")
    f = f"macro-F1 {m['macro_f1']:.4f}" + (f" [{f1_ci[0]:.3f}, {f1_ci[1]:.3f}]" if f1_ci else "")
    return f"{a}, {f}, bal-acc {m['balanced_accuracy']:.4f}, n={m['n']}"
