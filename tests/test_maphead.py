"""The map head: the cut, the map cache, the flip batches, and the phase that competes on validation."""

from __future__ import annotations

import keras
import numpy as np
import pandas as pd
import pytest
from conftest import fresh_process_gap, trains

from gc10lib import data, export, features, maphead
from gc10lib.backbones import build_classifier, load_model
from gc10lib.errors import InputError
from gc10lib.explanation import gradcam
from gc10lib.inference import LiteRTPredictor, predict_proba
from gc10lib.inputs import ImageCache
from gc10lib.layers import model_info
from gc10lib.steps import train


@pytest.mark.parametrize("name", ["mobilenet_v2", "inception_v3"])
def test_cut_is_where_one_tensor_feeds_the_rest(name):
    """Both have skip connections or branches: the trunk's output alone must reproduce the backbone."""
    model, _ = build_classifier(name, ["a", "b"], 96, None, seed=0)
    base = model.get_layer("backbone")
    trunk, cut = maphead.split_backbone(base, 0.3)
    top = keras.Model(base.get_layer(cut).output, base.output)
    x = np.random.default_rng(0).normal(size=(2, 96, 96, 3)).astype("float32")
    np.testing.assert_allclose(top(trunk(x)), base(x), rtol=1e-4, atol=1e-4)
    depth = [la.name for la in base.layers].index(cut) / len(base.layers)
    assert 0.4 < depth <= 0.7, (cut, depth)
    with pytest.raises(InputError, match="map_fraction"):
        maphead.split_backbone(base, 1.0)


def test_flip_batches_show_every_image_once_per_epoch_with_its_class_weight():
    n = 10
    maps = [np.full((n, 2, 2, 1), code, np.float16) + np.arange(n)[:, None, None, None] * 10 for code in range(4)]
    y = np.array([0, 1] * 5)
    batches = maphead.FlipBatches(maps, y, np.where(y == 1, 3.0, 1.0), 4, seed=0)
    seen_codes = set()
    for _ in range(3):
        xs, ys, ws = zip(*(batches[i] for i in range(len(batches))), strict=True)
        x, yy, w = np.concatenate(xs), np.concatenate(ys), np.concatenate(ws)
        image = (x[:, 0, 0, 0] // 10).astype(int)  # which image each row is
        code = (x[:, 0, 0, 0] % 10).astype(int)  # which flip it came in
        assert sorted(image) == list(range(n))
        np.testing.assert_array_equal(yy, y[image])
        np.testing.assert_array_equal(w, np.where(yy == 1, 3.0, 1.0))
        seen_codes |= set(code)
        batches.on_epoch_end()
    assert seen_codes == {0, 1, 2, 3}
    # one target array per view (distillation: the teacher's soft targets differ from view to view)
    per_view = maphead.FlipBatches(maps[:2], [np.zeros(n), np.ones(n)], np.ones(n), 5, seed=1)
    x, yy, _ = per_view[0]
    np.testing.assert_array_equal(yy, (x[:, 0, 0, 0] % 10).astype(int))  # each row's target is its view's
    with pytest.raises(InputError, match="2 map arrays, but 3 target"):
        maphead.FlipBatches(maps[:2], [y, y, y], np.ones(n), 5, seed=1)


def test_maps_are_cached_and_flipped(smoke_data, monkeypatch):
    root, split = smoke_data
    paths = list(data.read_split(split).path[:5])
    model, source = build_classifier("mobilenet", data.split_classes(split), 64, None, seed=0)
    train.calibrate_batchnorm(model, ImageCache(64, "stretch").load(paths).astype("float32"))  # live random maps
    src, trunk, cut = maphead.map_source(model, 0.3, "mobilenet", 64, "stretch", batch_size=4)
    plain, flipped = src.maps(paths, 0), src.maps(paths, 1)
    assert plain.dtype == np.float16 and plain.shape[0] == 5 and plain.shape[1:] == tuple(trunk.output.shape[1:])
    assert plain.astype("float32").std() > 0.01
    assert not np.allclose(plain, flipped, atol=1e-3)  # the flip reached the maps

    def no_backbone(*a, **k):
        raise AssertionError("the backbone ran although the maps were cached")

    monkeypatch.setattr(src.extractor, "predict_on_batch", no_backbone)
    np.testing.assert_array_equal(src.maps(paths, 0), plain)


@pytest.fixture(scope="module")
@trains
def map_run(smoke_data, tmp_path_factory):
    """A run in which the map head is the only candidate (no probe, no head epochs), so it is saved."""
    root, split = smoke_data
    out = tmp_path_factory.mktemp("maps") / "o"
    cfg = train.TrainConfig(
        backbone="mobilenet",
        img_size=64,
        weights=None,
        probe=False,
        epochs_head=0,
        epochs_finetune=0,
        map_head=True,
        map_epochs=3,
        map_width=16,
        batch_size=16,
        verbose=0,
        seed=3,
    )
    return out, train.run(cfg, root, out, split_csv=split)


def test_map_head_that_wins_is_saved_and_recorded(map_run, smoke_data):
    out, m = map_run
    assert m["selected"]["phase"] == "maps" and m["map_head"]["won"]
    assert m["map_head"]["cut"] == "conv_pw_9_bn" and m["map_head"]["views"] == 4
    hist = pd.read_csv(out / "history.csv")
    assert (hist.phase == "maps").sum() == 3
    kept = hist[hist.phase == "maps"].val_loss.min()
    assert m["selected"]["value"] == pytest.approx(kept)
    assert m["val"]["log_loss"] == pytest.approx(kept, abs=1e-3)  # the file holds that epoch
    model = load_model(out / "model.keras")
    assert maphead.is_map_head(model) and m["n_params"] == model.count_params()
    _, split = smoke_data
    va = data.read_split(split).query("subset == 'val'")
    np.testing.assert_allclose(predict_proba(model, va.path), np.load(out / "proba_val.npy"), atol=1e-5)


def test_saved_map_head_finds_its_training_maps_by_its_trunk_weights(map_run, smoke_data, monkeypatch):
    """The map cache is keyed by the trunk's weights: the saved classifier finds the maps its training
    cached (and its head on them is the classifier on the flipped images); a changed trunk does not."""
    out, m = map_run
    _, split = smoke_data
    paths = list(data.read_split(split).query("subset == 'train'").path)
    model = load_model(out / "model.keras")
    src = maphead.classifier_source(model, batch_size=4)
    assert src.key[4] == m["map_head"]["cut"] and src.size == 64

    def no_backbone(*a, **k):
        raise AssertionError("the trunk ran although training cached these maps")

    monkeypatch.setattr(src.extractor, "predict_on_batch", no_backbone)
    maps = src.maps(paths, 2)
    x = maphead.flip(ImageCache(64).load(paths[:4]), 2).astype("float32")
    want = model.predict(x, verbose=0)
    np.testing.assert_allclose(maphead.head_proba(model.get_layer("head"), maps[:4], batch_size=4), want, atol=2e-3)
    kernel = model.get_layer("backbone").weights[0]
    kernel.assign(kernel * 1.01)  # a trunk fine-tuned below the cut makes other maps: another key
    assert maphead.classifier_source(model).path([], 2) != src.path([], 2)


def test_map_head_classifier_reloads_in_a_fresh_process(map_run, smoke_data):
    out, m = map_run
    _, split = smoke_data
    va = data.read_split(split).query("subset == 'val'")
    assert fresh_process_gap(out / "model.keras", list(va.path), out / "proba_val.npy") < 1e-5


def test_gradcam_and_export_take_a_map_head_classifier(map_run, tmp_path):
    out, m = map_run
    model = load_model(out / "model.keras")
    x = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    cams, proba = gradcam(model, x, [0, 1])
    assert cams.shape == (2, 64, 64) and cams.min() >= 0.0 and cams.max() <= 1.0
    np.testing.assert_allclose(proba, model.predict(x, verbose=0), atol=1e-5)  # the CAM's logits are the model's
    assert export.fold_head_normalization(model) is model  # nothing to fold: the head has no standardization
    path = export.export_litert(model, tmp_path / "m.tflite", "float32")
    np.testing.assert_allclose(LiteRTPredictor(path)(x), proba, atol=1e-4)
    logits = export.logits_classifier(model)  # what the int8 file holds: the map head without its softmax
    z = logits.predict(x, verbose=0)
    np.testing.assert_allclose(np.exp(z) / np.exp(z).sum(1, keepdims=True), proba, atol=1e-5)
    assert not np.allclose(z.sum(1), 1.0) and model_info(logits) == model_info(model)
    rep = np.random.default_rng(1).uniform(0, 255, (8, 64, 64, 3)).astype("float32")
    q = export.export_litert(model, tmp_path / "q.tflite", "int8", representative=rep)
    lite = LiteRTPredictor(q)
    assert lite.output == "logits" and np.allclose(lite(x).sum(1), 1.0)


@pytest.mark.slow
def test_map_head_that_loses_leaves_the_model_and_best_state_alone(smoke_data):
    root, split = smoke_data
    man = data.read_split(split)
    tr, va = (man[man.subset == s] for s in ("train", "val"))
    classes = data.split_classes(split)
    model, _ = build_classifier("mobilenet", classes, 64, None, seed=0)
    best = train.BestState(model, "val_loss")
    best.offer(0.0, "probe", 0)  # nothing can beat a log-loss of 0
    before = [np.array(w) for w in best.weights]
    cfg = train.TrainConfig(backbone="mobilenet", img_size=64, map_epochs=2, map_width=8, batch_size=16, verbose=0)
    cw = data.class_weights(tr.label, len(classes), "none")
    saved, record, history = train.map_phase(model, cfg, tr, va, "mobilenet", 64, cw, best)
    assert saved is model and not record["won"] and len(history) == 2
    assert best.phase == "probe" and best.best_by_phase["maps"] > 0.0
    for a, b in zip(before, best.weights, strict=True):
        np.testing.assert_array_equal(a, b)


def _map_run_config(augment: list[str], epochs: int) -> train.TrainConfig:
    """A smoke map-head run at 64 px with random weights, two feature views of ``augment``."""
    return train.TrainConfig(
        backbone="mobilenet",
        img_size=64,
        weights=None,
        augment=augment,
        aug_views=2,
        epochs_head=epochs,
        epochs_finetune=0,
        map_head=True,
        map_epochs=epochs,
        map_width=8,
        batch_size=16,
        verbose=0,
        seed=5,
    )


@pytest.mark.slow
def test_a_map_head_run_takes_its_features_from_the_maps_and_runs_the_trunk_once_per_flip(
    smoke_data, tmp_path, monkeypatch
):
    """With flips only, phase 1's pooled features come from the maps the map phase caches: the trunk
    runs once per flip of the training images and once on the val images, the whole backbone never
    runs over the images for features, and the features match a float32 pass to float16 rounding."""
    root, split = smoke_data
    monkeypatch.setenv("GC10_CACHE_DIR", str(tmp_path / "cache"))
    cfg = _map_run_config(["flip"], epochs=2)
    assert features.uses_maps_for_features(cfg) and features.augmented_views_from_maps(cfg)
    assert not features.uses_maps_for_features(train.TrainConfig(map_head=False))
    assert not features.augmented_views_from_maps(train.TrainConfig(map_head=True, augment=["flip", "shift"]))
    assert not features.augmented_views_from_maps(train.TrainConfig(map_head=True, augment=["flip"], map_flips=2))
    trunk_calls = []
    real_maps_of = maphead.maps_of
    monkeypatch.setattr(maphead, "maps_of", lambda *a, **k: trunk_calls.append(1) or real_maps_of(*a, **k))

    def no_full_pass(*a, **k):
        raise AssertionError("the whole backbone ran over the images for phase-1 features")

    monkeypatch.setattr(features, "extract_features", no_full_pass)
    m = train.run(cfg, root, tmp_path / "run", split_csv=split)
    assert m["timings"]["features_from"] == "maps"
    assert len(trunk_calls) == len(maphead.FLIPS) + 1  # four flips of the training images, the val images
    assert m["handover"]["max_prob_gap"] < 5e-3, m["handover"]  # float16 maps: rounding, not a different model

    # the features themselves: view 0 is the plain pass, view 1 each image under its seeded flip
    monkeypatch.setenv("GC10_CACHE_DIR", str(tmp_path / "cache2"))  # another model: its own cache
    man = data.read_split(split)
    tr, va = (list(man[man.subset == s].path) for s in ("train", "val"))
    model, source = build_classifier("mobilenet", data.split_classes(split), 64, None, seed=0)
    train.calibrate_batchnorm(model, ImageCache(64, "stretch").load(tr).astype("float32"))
    src = features.FeatureSource(model, cfg, "mobilenet", 64, "random")
    xs, xv, cached = features.features_from_maps(src, tr, va, views=2)
    assert len(xs) == 2 and not any(cached)
    pool = keras.Model(model.inputs, model.get_layer("pool").output)
    images = ImageCache(64, "stretch").load(tr)
    codes = maphead.flip_codes(cfg.seed, 2, len(tr))[1]
    assert len(set(codes.tolist())) > 1  # the view mixes flips
    flipped = np.stack([maphead.flip(images[i : i + 1], c)[0] for i, c in enumerate(codes)]).astype("float32")
    scale = np.abs(xs[0]).max()
    np.testing.assert_allclose(xs[0], pool.predict(images.astype("float32"), verbose=0), atol=2e-3 * scale)
    np.testing.assert_allclose(xs[1], pool.predict(flipped, verbose=0), atol=2e-3 * scale)
    assert np.abs(xs[1] - xs[0]).max() > 1e-2 * scale  # and the flips changed them
    again = features.features_from_maps(src, tr, va, views=2)
    assert all(again[2])  # cached, keyed by the cut
    np.testing.assert_array_equal(again[0][1], xs[1])


@pytest.mark.slow
def test_other_augmentation_takes_only_the_plain_view_and_val_from_the_maps(smoke_data, tmp_path, monkeypatch):
    """With shifts as well as flips, the maps cannot hold the augmented view: it is one pass of the
    whole model over augmented images (as without maps), while the plain view and the val images
    still come from the maps; the trunk runs no more often than the map phase needs."""
    root, split = smoke_data
    monkeypatch.setenv("GC10_CACHE_DIR", str(tmp_path / "cache"))
    cfg = _map_run_config(["flip", "shift"], epochs=1)
    trunk_calls, full_passes = [], []
    real_maps_of, real_extract = maphead.maps_of, features.extract_features
    monkeypatch.setattr(maphead, "maps_of", lambda *a, **k: trunk_calls.append(1) or real_maps_of(*a, **k))
    monkeypatch.setattr(
        features, "extract_features", lambda *a, **k: full_passes.append(k["view"]) or real_extract(*a, **k)
    )
    m = train.run(cfg, root, tmp_path / "run", split_csv=split)
    assert m["timings"]["features_from"] == "maps and images"
    assert full_passes == [1]  # only the augmented view
    assert len(trunk_calls) == len(maphead.FLIPS) + 1
    assert m["handover"]["max_prob_gap"] < 5e-3, m["handover"]
