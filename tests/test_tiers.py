"""The test tiers cannot drift: a test outside ``slow`` that trains, exports, runs a notebook or starts
a whole ``gc10 run`` fails on the spot (``tests/conftest.py``), and fixtures that train say so."""

from __future__ import annotations

import subprocess
import sys

import keras
import numpy as np
import papermill
import pytest
import tensorflow as tf
from conftest import TrainedInFastTier, _slow_fixtures


def _tiny():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    return model


def test_a_fast_test_that_trains_exports_or_runs_a_notebook_fails():
    with pytest.raises(TrainedInFastTier, match="fits a model but is not marked slow"):
        _tiny().fit(np.zeros((2, 2)), np.zeros((2, 1)), verbose=0)
    with pytest.raises(TrainedInFastTier, match="converts a model to LiteRT"):
        tf.lite.TFLiteConverter.from_keras_model(_tiny()).convert()
    with pytest.raises(TrainedInFastTier, match="converts a model to LiteRT"):
        tf.lite.TFLiteConverter.from_saved_model("saved")
    with pytest.raises(TrainedInFastTier, match="exports a model"):
        _tiny().export("saved")
    with pytest.raises(TrainedInFastTier, match="executes a notebook"):
        papermill.execute_notebook("in.ipynb", "out.ipynb")
    with pytest.raises(TrainedInFastTier, match="starts a whole gc10 run"):
        subprocess.run([sys.executable, "-m", "gc10lib.cli", "run", "--config", "demo"], check=False)
    ok = subprocess.run([sys.executable, "-c", "print('fine')"], capture_output=True, text=True, check=True)
    assert ok.stdout.strip() == "fine"  # other subprocesses are left alone


@pytest.mark.slow
def test_a_slow_test_may_train():
    hist = _tiny().fit(np.zeros((4, 2)), np.zeros((4, 1)), epochs=1, verbose=0)
    assert len(hist.history["loss"]) == 1


@pytest.fixture()
def uses_smoke_models(smoke_models):  # never built here: the test below only inspects the closure
    return smoke_models


def test_a_fixture_that_trains_makes_its_users_slow_through_any_chain(request):
    """Detection follows the fixture closure: a fixture using ``smoke_models`` makes its tests slow."""

    def user(uses_smoke_models): ...

    class Item:
        _fixtureinfo = request.session._fixturemanager.getfixtureinfo(node=request.node, func=user, cls=None)

    assert _slow_fixtures(Item()) == ["smoke_models"]
    assert _slow_fixtures(request.node) == []
    assert request.node.get_closest_marker("slow") is None
