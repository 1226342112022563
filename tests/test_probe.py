"""Linear probes: C chosen on validation, written exactly into a classifier head."""

from __future__ import annotations

import numpy as np
import pytest

from gc10lib import probe


def _blobs(n_per: int, centres: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = np.concatenate([c + rng.normal(0, 1.0, (n_per, centres.shape[1])) for c in centres])
    return x.astype(np.float32), np.repeat(np.arange(len(centres)), n_per)


def test_probe_separates_blobs_and_picks_c_by_validation_log_loss():
    centres = np.eye(3, 8) * 3.0
    xt, yt = _blobs(40, centres, 0)
    xv, yv = _blobs(20, centres, 1)
    p = probe.fit_probe(xt, yt, xv, yv, n_classes=3)
    assert min(p.grid, key=p.grid.get) == p.C
    assert set(p.grid) == set(probe.C_GRID)
    assert (p.predict_proba(xv).argmax(1) == yv).mean() >= 0.85
    assert p.val_log_loss == pytest.approx(probe.log_loss(yv, p.predict_proba(xv)))


def test_probe_with_two_present_classes_keeps_every_column():
    centres = np.eye(2, 6) * 3.0
    xt, yt = _blobs(30, centres, 0)
    yt = np.where(yt == 1, 2, 0)  # classes 0 and 2 of 3; class 1 absent
    xv, yv = _blobs(10, centres, 1)
    yv = np.where(yv == 1, 2, 0)
    p = probe.fit_probe(xt, yt, xv, yv, n_classes=3)
    proba = p.predict_proba(xv)
    assert proba.shape == (20, 3) and proba[:, 1].max() < 1e-6
    assert (proba.argmax(1) == yv).mean() >= 0.85


def test_probe_written_into_head_gives_the_same_probabilities():
    from gc10lib.backbones import adapt_feature_norm, build_classifier

    model, _ = build_classifier("mobilenet", ["a", "b", "c"], img_size=32, weights=None, seed=0)
    head = model.get_layer("head")
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 2, (3, head.inputs[0].shape[-1])).astype(np.float32)
    xt, yt = _blobs(20, centres, 0)
    xv, yv = _blobs(10, centres, 1)
    adapt_feature_norm(head, xt)
    p = probe.fit_probe(probe.standardize(head, xt), yt, probe.standardize(head, xv), yv, 3)
    probe.set_head(head, p)
    np.testing.assert_allclose(head.predict(xv, verbose=0), p.predict_proba(probe.standardize(head, xv)), atol=1e-5)


def test_probe_needs_two_classes():
    x = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match="fewer than two classes"):
        probe.fit_probe(x, np.zeros(4, int), x, np.zeros(4, int), 2)
