"""Progress bars: shown on long stretches, silent on quick ones, off with GC10_PROGRESS=0."""

from __future__ import annotations

import keras
import numpy as np

from gc10lib import data, progress
from gc10lib.inputs import ImageCache


def _cache_images(synth_root, tmp_path) -> int:
    paths = list(data.discover(synth_root).table.path[:12])
    assert len(ImageCache(48, "stretch", tmp_path / "cache").ensure(paths)) == 12
    return len(paths)


def test_a_slow_stretch_shows_a_bar_naming_the_work(synth_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GC10_PROGRESS_DELAY", "0")  # as if the work had already taken long
    n = _cache_images(synth_root, tmp_path)
    err = capsys.readouterr().err
    assert "caching stretch 48px images" in err and f"{n}/{n}" in err


def test_quick_work_prints_nothing_and_bars_can_be_turned_off(synth_root, tmp_path, monkeypatch, capsys):
    _cache_images(synth_root, tmp_path / "a")  # default delay: 12 small images take well under 5 s
    assert "caching" not in capsys.readouterr().err
    monkeypatch.setenv("GC10_PROGRESS_DELAY", "0")
    monkeypatch.setenv("GC10_PROGRESS", "0")
    _cache_images(synth_root, tmp_path / "b")
    assert "caching" not in capsys.readouterr().err
    assert not progress.enabled()


def test_predict_callback_counts_batches(monkeypatch, capsys):
    monkeypatch.setenv("GC10_PROGRESS_DELAY", "0")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.predict(np.zeros((10, 4)), batch_size=4, verbose=0, callbacks=[progress.predict_callback(3, "features")])
    err = capsys.readouterr().err
    assert "features" in err and "3/3" in err
