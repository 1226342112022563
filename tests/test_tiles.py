"""Tiling: the grid is an exact reshape, the tiled classifier trains, caches apart from the whole-image
one, reloads in a fresh process, explains and exports; bad settings are refused clearly."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from conftest import fresh_process_gap, trains

from gc10lib import data, export, features
from gc10lib.backbones import build_classifier, load_model
from gc10lib.errors import InputError
from gc10lib.explanation import gradcam
from gc10lib.inference import LiteRTPredictor, predict_proba
from gc10lib.layers import TileGrid, TilePool, model_info
from gc10lib.steps import train


def test_grid_cuts_tiles_row_by_row_and_merge_inverts_it():
    x = np.arange(2 * 6 * 6 * 1, dtype="float32").reshape(2, 6, 6, 1)
    grid = TileGrid(3)
    tiles = keras.ops.convert_to_numpy(grid(x))
    assert tiles.shape == (18, 2, 2, 1)
    np.testing.assert_array_equal(tiles[1], x[0, 0:2, 2:4])  # image 0, row 0, column 1
    np.testing.assert_array_equal(tiles[9 + 3], x[1, 2:4, 0:2])  # image 1, row 1, column 0
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(grid.merge(tiles)), x)
    f = np.stack([np.full(3, i, "float32") for i in range(8)])  # 2 images x 4 tiles
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(TilePool(4, "max")(f)), [[3] * 3, [7] * 3])
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(TilePool(4, "meanmax")(f)), [[1.5] * 3 + [3] * 3, [5.5] * 3 + [7] * 3]
    )


def test_tiled_features_are_the_backbone_on_each_crop():
    model, _ = build_classifier("mobilenet", ["a", "b", "c"], 64, None, seed=0, tiles=2, tile_pool="meanmax")
    x = np.random.default_rng(0).uniform(0, 255, (3, 64, 64, 3)).astype("float32")
    base, pre = model.get_layer("backbone"), model.get_layer("preprocess")
    crops = [x[:, r * 32 : (r + 1) * 32, c * 32 : (c + 1) * 32] for r in range(2) for c in range(2)]
    per = np.stack([keras.ops.convert_to_numpy(keras.ops.mean(base(pre(c)), axis=(1, 2))) for c in crops], 1)
    pooled = keras.Model(model.inputs, model.get_layer("pool").output).predict(x, verbose=0)
    np.testing.assert_allclose(pooled, np.concatenate([per.mean(1), per.max(1)], -1), rtol=1e-5, atol=1e-5)
    info = model_info(model)
    assert (info.input_size, info.tiles, info.tile_pool) == (64, 2, "meanmax")
    assert model_info(build_classifier("mobilenet", ["a"], 64, None, seed=0)[0]).tiles == 1
    native, _ = build_classifier("mobilenet", ["a"], None, None, seed=0, tiles=2)  # no size: tiles at native size
    assert model_info(native).input_size == 448 and native.get_layer("backbone").input.shape[1] == 224


def test_bad_tiling_is_refused_clearly():
    with pytest.raises(InputError, match="divides img_size 64"):
        build_classifier("mobilenet", ["a"], 64, None, tiles=3)
    with pytest.raises(InputError, match="unknown tile pooling 'median'"):
        build_classifier("mobilenet", ["a"], 64, None, tiles=2, tile_pool="median")
    with pytest.raises(InputError, match="map_head: .* tiles"):  # refused when the config is made
        train.TrainConfig(backbone="mobilenet", img_size=64, weights=None, tiles=2, map_head=True, verbose=0)


@pytest.fixture(scope="module")
@trains
def tiled_run(smoke_data, tmp_path_factory):
    root, split = smoke_data
    out = tmp_path_factory.mktemp("tiles") / "o"
    cfg = train.TrainConfig(
        backbone="mobilenet",
        img_size=64,
        weights=None,
        tiles=2,
        tile_pool="meanmax",
        epochs_head=2,
        epochs_finetune=1,
        finetune_fraction=0.05,
        batch_size=16,
        verbose=0,
        seed=3,
    )
    return out, train.run(cfg, root, out, split_csv=split)


def test_tiled_classifier_trains_and_caches_apart(tiled_run, smoke_data):
    out, m = tiled_run
    assert m["tiles"] == 2 and m["config"]["tile_pool"] == "meanmax"
    assert m["handover"]["max_prob_gap"] < 1e-4  # the full tiled model equals the head on its cached features
    model = load_model(out / "model.keras")
    assert model_info(model).tiles == 2 and model.get_layer("pool").output.shape[-1] == 2 * 1024
    assert load_model(out / "probe" / "model.keras").get_layer("tiles").grid == 2
    # the tiled features are cached under their own key, never mixed with the whole-image ones
    _, split = smoke_data
    paths = list(data.read_split(split).path[:4])
    whole, _ = build_classifier("mobilenet", data.split_classes(split), 64, None, seed=0)
    kw = dict(size=64, policy="stretch", weights_source="random", backbone="mobilenet", seed=3)
    a, _ = features.extract_features(model, paths, **kw)
    b, cached = features.extract_features(whole, paths, **kw)
    assert a.shape[1] == 2048 and b.shape[1] == 1024 and not cached


def test_tiled_classifier_reloads_in_a_fresh_process_explains_and_exports(tiled_run, smoke_data, tmp_path):
    out, _ = tiled_run
    _, split = smoke_data
    va = data.read_split(split).query("subset == 'val'")
    assert fresh_process_gap(out / "model.keras", list(va.path), out / "proba_val.npy") < 1e-5
    model = load_model(out / "model.keras")
    x = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    cams, proba = gradcam(model, x, [0, 1])
    assert cams.shape == (2, 64, 64) and cams.min() >= 0.0 and cams.max() <= 1.0
    np.testing.assert_allclose(proba, model.predict(x, verbose=0), atol=1e-5)  # the CAM's logits are the model's
    path = export.export_litert(model, tmp_path / "m.tflite", "float32")
    np.testing.assert_allclose(LiteRTPredictor(path)(x), proba, atol=1e-4)
    np.testing.assert_allclose(predict_proba(model, va.path), np.load(out / "proba_val.npy"), atol=1e-5)
