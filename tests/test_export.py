"""LiteRT export: every variant runs, int8 agrees with float, .tflite through predict/evaluate, bad files."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import WEIGHTS, XSDD, needs_shared, needs_weights, trains

from gc10lib import data, steps
from gc10lib.backbones import load_model
from gc10lib.export import VARIANTS, export_litert, representative_images
from gc10lib.inference import KerasPredictor, LiteRTPredictor, load_predictor, sidecar
from gc10lib.inputs import ImageCache


@pytest.fixture(scope="module")
@trains
def exported(smoke_data, tmp_path_factory):
    """MobileNetV2 with real ImageNet weights (from ../shared/weights), head trained on synthetic data.

    Random-init features are too ill-conditioned for a meaningful int8 comparison, and MobileNet
    (v1) loses most of its agreement under full-integer quantization (see the README)."""
    import os

    from gc10lib.steps import train

    if not WEIGHTS.is_dir():
        pytest.skip(f"{WEIGHTS} is absent: the int8 checks need real ImageNet weights (CI always has them)")
    os.environ["GC10_WEIGHTS_DIR"] = str(WEIGHTS)
    root, split = smoke_data
    d = tmp_path_factory.mktemp("tflite")
    cfg = train.TrainConfig(
        backbone="mobilenet_v2",
        img_size=75,
        weights="imagenet",
        epochs_head=15,
        epochs_finetune=0,
        augment=False,
        verbose=0,
        seed=0,
    )
    model = train.run(cfg, root, d / "model", split_csv=split)["model_path"]
    rep = representative_images(root, split, 75, n=40)
    files = {
        v: export_litert(model, d / f"vgg19_{v}.tflite", v, representative=rep if v == "int8" else None)
        for v in VARIANTS
    }
    return model, files


def test_every_variant_exports_and_runs(exported, smoke_data):
    model, files = exported
    root, split = smoke_data
    man = data.read_split(split)
    te = man[man.subset == "test"]
    keras_pred = KerasPredictor(model)
    from gc10lib.inputs import ImageCache

    x = ImageCache(75).load(list(te.path))
    ref = keras_pred(x)
    sizes = {v: f.stat().st_size for v, f in files.items()}
    for v, f in files.items():
        p = LiteRTPredictor(f)
        assert p.classes == keras_pred.classes and p.input_size == 75
        out = p(x, batch_size=4)
        assert out.shape == ref.shape and np.allclose(out.sum(1), 1, atol=0.02)
        if v == "float32":
            np.testing.assert_allclose(out, ref, atol=1e-3)
    assert sizes["int8"] * 3 <= sizes["float32"]
    assert sizes["dynamic"] * 3 <= sizes["float32"]
    assert sizes["float16"] < 0.6 * sizes["float32"]
    meta = json.loads((files["int8"].parent / (files["int8"].name + ".json")).read_text())
    assert meta["variant"] == "int8" and meta["output"] == "logits"
    # MobileNetV2 keeps its stem float (the full-integer file is tested below), so it takes float pixels
    assert meta["input"].startswith("float32") and meta["float_layers"][:2] == ["preprocess", "Conv1"]
    assert {json.loads(sidecar(f).read_text())["output"] for v, f in files.items() if v != "int8"} == {"probabilities"}


def test_int8_classifier_returns_logits_not_probabilities_in_steps_of_1_256(exported, smoke_data):
    """The int8 file stops before its softmax: the raw output is logits (rows do not sum to 1), the
    predictor's softmax of them gives probabilities finer than an int8 softmax's 1/256 steps, and
    the class order is the float model's."""
    from ai_edge_litert.interpreter import Interpreter

    model, files = exported
    _, split = smoke_data
    man = data.read_split(split)
    x = ImageCache(75).load(list(man[man.subset != "train"].path))
    lite = LiteRTPredictor(files["int8"], batch_size=len(x))
    proba = lite(x)
    interp = Interpreter(model_path=str(files["int8"]))
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    interp.resize_tensor_input(inp["index"], list(x.shape))
    interp.allocate_tensors()
    interp.set_tensor(inp["index"], lite._quantize(x))  # the file's own input scale and zero point
    interp.invoke()
    raw = interp.get_tensor(out["index"]).astype(np.float64)
    assert out["dtype"] == np.float32 and not np.allclose(raw.sum(1), 1.0, atol=0.05)
    np.testing.assert_allclose(proba, np.exp(raw) / np.exp(raw).sum(1, keepdims=True), rtol=1e-6)
    off_grid = np.abs(proba * 256 - np.round(proba * 256)) > 1e-3
    print(f"int8 probabilities off the 1/256 grid: {off_grid.mean():.3f} of {proba.size}")
    assert off_grid.mean() > 0.5
    ref = KerasPredictor(model)(x)
    assert np.mean(proba.argmax(1) == ref.argmax(1)) >= 0.75  # measured 1.0 (see the agreement test)


def test_tflite_through_cli(exported, smoke_data, tmp_path):
    _, files = exported
    root, split = smoke_data
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "gc10lib.cli",
            "evaluate",
            "--model",
            str(files["int8"]),
            "--data",
            str(root),
            "--split-csv",
            str(split),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout)["n"] == (data.read_split(split).subset == "test").sum()
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "gc10lib.cli",
            "predict",
            "--model",
            str(files["dynamic"]),
            str(root / "images" / "images" / "crease"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(r.stdout.strip().splitlines()) == 1 + 6


def test_cli_export(smoke_models, tmp_path, capsys):
    """int8 needs calibration data; the export and its sidecar are written once and never overwritten.
    (int8 through the CLI, with the model's own policy, is tested in test_model_info.py.)"""
    from gc10lib.cli import main

    out, _ = smoke_models
    model = str(out / "mobilenet" / "model.keras")
    assert main(["export", "--model", model, "--variant", "int8", "--out", str(tmp_path / "m.tflite")]) == 2
    assert "needs --data" in capsys.readouterr().err and not (tmp_path / "m.tflite").exists()
    args = ["export", "--model", model, "--variant", "dynamic", "--out", str(tmp_path / "m.tflite")]
    assert main(args) == 0
    assert load_predictor(tmp_path / "m.tflite").variant == "dynamic"
    before = (tmp_path / "m.tflite").read_bytes()
    assert main([*args[:-1], str(tmp_path / "m.tflite")]) == 2 and "already exists" in capsys.readouterr().err
    (tmp_path / "n.tflite.json").write_text("{}")  # an unrelated sidecar already there is not overwritten either
    assert (
        main([*args[:-1], str(tmp_path / "n.tflite")]) == 2
        and "n.tflite.json: already exists" in capsys.readouterr().err
    )
    assert (tmp_path / "n.tflite.json").read_text() == "{}" and (tmp_path / "m.tflite").read_bytes() == before


def test_corrupt_or_foreign_tflite_is_clear(exported, tmp_path):
    _, files = exported
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"\x00" * 64)
    (tmp_path / "bad.tflite.json").write_text(json.dumps({"classes": ["a", "b"], "img_size": 75}))
    with pytest.raises(ValueError, match="bad.tflite: not a valid LiteRT model"):
        LiteRTPredictor(bad)
    foreign = tmp_path / "foreign.tflite"
    foreign.write_bytes(files["float32"].read_bytes())
    with pytest.raises(ValueError, match="not a gc10lib export"):
        LiteRTPredictor(foreign)
    (tmp_path / "foreign.tflite.json").write_text(json.dumps({"classes": ["a", "b", "c"], "img_size": 75}))
    with pytest.raises(ValueError, match="do not match a 3-class"):
        LiteRTPredictor(foreign)
    meta = json.loads(sidecar(files["float32"]).read_text())
    (tmp_path / "foreign.tflite.json").write_text(json.dumps({**meta, "output": "scores"}))
    with pytest.raises(ValueError, match="foreign.tflite.json: unknown output 'scores'"):
        LiteRTPredictor(foreign)


def test_int8_agrees_with_float_on_most_test_images(exported, smoke_data):
    """Full-integer int8 vs the float32 file on the synthetic test split: top-1 agreement >= 75%."""
    _, files = exported
    root, split = smoke_data
    from gc10lib.inputs import ImageCache

    man = data.read_split(split)
    x = ImageCache(75).load(list(man[man.subset == "test"].path))
    ref = LiteRTPredictor(files["float32"])(x).argmax(1)
    q = LiteRTPredictor(files["int8"])(x).argmax(1)
    agreement = float(np.mean(q == ref))
    print(f"int8 vs float32 top-1 agreement: {agreement:.3f} on {len(x)} images")
    assert agreement >= 0.75


def test_quantize_table_and_plot(exported, smoke_data, tmp_path):
    from gc10lib import plots, quantization

    model, _ = exported
    root, split = smoke_data
    df = quantization.quantize_table(
        model, root, split, tmp_path / "q", ("dynamic",), name="m", batch_sizes=(1, 4), timing_images=8, repeats=2
    )
    assert list(df.variant) == ["keras", "dynamic"]
    keras_row, dyn = df.iloc[0], df.iloc[1]
    te = data.read_split(split).query("subset == 'test'")
    x = ImageCache(75).load(list(te.path))
    ref = KerasPredictor(model)(x).argmax(1)
    lite = LiteRTPredictor(dyn.file)(x).argmax(1)
    assert keras_row.agreement == 1.0 and keras_row.size_ratio == 1.0
    assert dyn.agreement == pytest.approx(float(np.mean(lite == ref)))
    assert dyn.accuracy == pytest.approx(float(np.mean(lite == te.label.to_numpy())))
    assert (df.latency_ms_b1 > 0).all() and (df.throughput_img_s > 0).all() and set(df.best_batch) <= {1, 4}
    float_bytes = sum(np.asarray(v).nbytes for v in load_model(model).weights)  # the .keras file itself is deflated
    assert dyn.size_mib * 2**20 * 3 < float_bytes and dyn.size_ratio == pytest.approx(keras_row.size_mib / dyn.size_mib)
    assert df.n_images.iloc[0] == (data.read_split(split).subset == "test").sum()
    csv, md = steps.quantize.write_table(df, tmp_path / "q")
    assert "| m " in md.read_text() and len(__import__("pandas").read_csv(csv)) == 2
    with pytest.raises(FileExistsError):
        steps.quantize.write_table(df, tmp_path / "q")
    ax = plots.size_vs_accuracy(df).axes[0]
    assert len(ax.texts) == 2 and ax.get_xscale() == "log"  # one latency label per file


def test_ensemble_exports_and_matches_keras(smoke_models, smoke_data, tmp_path):
    """An ensemble (two branches, one raw input) converts and runs like the Keras model."""
    from gc10lib import ensembles
    from gc10lib.backbones import load_model
    from gc10lib.inputs import ImageCache

    out, _ = smoke_models
    root, split = smoke_data
    ens = ensembles.build_ensemble([load_model(out / n / "model.keras") for n in ("mobilenet", "mobilenet_v2")], "mean")
    path = export_litert(ens, tmp_path / "ens.tflite", "float32")
    man = data.read_split(split)
    x = ImageCache(75).load(list(man[man.subset == "test"].path)[:8])
    np.testing.assert_allclose(
        LiteRTPredictor(path)(x, batch_size=4), ens.predict(x.astype("float32"), verbose=0), atol=1e-3
    )
    # int8: each branch keeps its own stem in float, the rest of both branches is int8
    from tensorflow.lite.python.schema_py_generated import TensorType

    from gc10lib.export import _made_by, _tensor_types

    q = export_litert(ens, tmp_path / "ens_int8.tflite", "int8", representative=representative_images(root, split, 75))
    kept = json.loads(sidecar(q).read_text())["float_layers"]
    # random init with one seed gives both stems the same first layers, which the converter merges
    # into one op named after the MobileNet branch; MobileNetV2's projection is its own
    assert kept[:4] == ["preprocess", "conv1", "conv_dw_1", "conv_pw_1"] and "expanded_conv_project" in kept
    types = _tensor_types(q.read_bytes())
    for layer in kept[1:]:
        assert {types[t] for t in types if _made_by(t, layer)} == {TensorType.FLOAT32}, layer
    for layer in ("conv_pw_5", "block_5_project"):
        assert TensorType.INT8 in {types[t] for t in types if _made_by(t, layer)}, layer
    p = LiteRTPredictor(q)(x, batch_size=4)
    assert p.shape == (len(x), len(ens.layers[-1].class_names)) and np.allclose(p.sum(1), 1, atol=0.02)


def test_folding_the_head_normalization_is_exact_and_leaves_ensembles_alone():
    """The standardization folded into the Dense gives the same probabilities; a model without a
    classifier head (as an ensemble's top) is returned unchanged."""
    import keras

    from gc10lib.backbones import adapt_feature_norm, build_classifier
    from gc10lib.export import fold_head_normalization
    from gc10lib.layers import model_info

    model, _ = build_classifier("mobilenet", ["a", "b", "c"], 32, None, seed=0)
    rng = np.random.default_rng(0)
    head = model.get_layer("head")
    feats = rng.gamma(0.5, 1.0, size=(64, head.input_shape[-1])).astype("float32")
    feats[:, :5] *= 1e-3  # low-variance features: the ones that reach tens of standard deviations
    adapt_feature_norm(head, feats)
    dense = head.get_layer("logits")
    dense.set_weights([rng.normal(size=w.shape).astype("float32") for w in dense.get_weights()])
    x = rng.uniform(0, 255, size=(4, 32, 32, 3)).astype("float32")
    folded = fold_head_normalization(model)
    assert folded is not model and "head" not in [la.name for la in folded.layers]
    np.testing.assert_allclose(folded.predict(x, verbose=0), model.predict(x, verbose=0), atol=2e-5)
    assert model_info(folded) == model_info(model)
    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    assert fold_head_normalization(other) is other


@pytest.mark.slow
@needs_shared
@needs_weights
def test_int8_mobilenet_keeps_its_stem_float_and_its_agreement(tmp_path, monkeypatch):
    """MobileNet (real ImageNet weights, a head on an X-SDD subset): the default int8 file keeps the
    preprocessing and the first depthwise-separable block in float and everything else int8, and
    agrees with Keras at least as well as the full-integer file (``float_stem=False``), which
    rounds the stem."""
    from tensorflow.lite.python.schema_py_generated import TensorType

    from gc10lib.export import _made_by, _tensor_types
    from gc10lib.steps import train

    monkeypatch.setenv("GC10_WEIGHTS_DIR", str(WEIGHTS))
    ds = data.discover(XSDD)
    ds.table = ds.table.groupby("class").sample(30, random_state=0).reset_index(drop=True)
    man = data.split_dataset(ds, (0.5, 0.2, 0.3), seed=0)
    cfg = train.TrainConfig(
        backbone="mobilenet",
        img_size=160,
        weights="imagenet",
        epochs_head=15,
        epochs_finetune=0,
        augment=False,
        verbose=0,
        seed=0,
    )
    model = train.run(cfg, XSDD, tmp_path / "m", manifest=man, classes=ds.classes)["model_path"]
    split = tmp_path / "split.csv"
    data.write_split(man, split, XSDD, classes=ds.classes, seed=0, fractions=(0.5, 0.2, 0.3))
    rep = representative_images(XSDD, split, 160, n=60)
    stem = export_litert(model, tmp_path / "stem.tflite", "int8", representative=rep)
    full = export_litert(model, tmp_path / "full.tflite", "int8", representative=rep, float_stem=False)
    meta = json.loads(sidecar(stem).read_text())
    assert meta["float_layers"] == ["preprocess", "conv1", "conv_dw_1", "conv_pw_1"]
    assert meta["input"].startswith("float32") and json.loads(sidecar(full).read_text())["float_layers"] == []
    types = _tensor_types(stem.read_bytes())
    for layer in ("conv1", "conv_dw_1", "conv_pw_1"):
        assert {types[t] for t in types if _made_by(t, layer)} == {TensorType.FLOAT32}, layer
    for layer in ("conv_dw_2", "conv_pw_2", "conv_pw_9"):  # the rest stays int8
        assert TensorType.INT8 in {types[t] for t in types if _made_by(t, layer)}, layer
    full_types = {t for n, t in _tensor_types(full.read_bytes()).items() if _made_by(n, "conv_dw_1")}
    assert TensorType.FLOAT32 not in full_types and TensorType.INT8 in full_types
    x = ImageCache(160).load(list(man[man.subset != "train"].path))
    ref = KerasPredictor(model)(x).argmax(1)
    agree = {f.stem: float(np.mean(LiteRTPredictor(f, batch_size=32)(x).argmax(1) == ref)) for f in (stem, full)}
    print(f"int8 agreement with Keras on {len(x)} X-SDD images: {agree}")
    assert agree["stem"] >= 0.95 and agree["stem"] >= agree["full"], agree


def test_int8_calibration_draws_train_and_val_views_over_every_class_and_never_test(smoke_data, monkeypatch):
    from gc10lib import data, export

    root, split = smoke_data
    man = data.read_split(split, data_root=root)
    loaded: list[str] = []
    real = export.ImageCache.load

    def spy(self, paths):
        loaded.extend(map(str, paths))
        return real(self, paths)

    monkeypatch.setattr(export.ImageCache, "load", spy)
    n_classes = man["class"].nunique()
    rep = representative_images(root, split, 48, n=n_classes, seed=5)
    first = list(loaded)
    subsets = man.set_index(man.path.astype(str)).loc[first]
    assert len(rep) == n_classes and "test" not in set(subsets.subset)
    assert subsets["class"].nunique() == n_classes  # one of each class before any class twice
    everything = representative_images(root, split, 48, n=10_000, seed=5)
    assert len(everything) == int(man.subset.isin(["train", "val"]).sum())
    monkeypatch.undo()
    plain = export.ImageCache(48, "stretch").load(first)
    flipped = [not np.array_equal(a, b) for a, b in zip(rep, plain, strict=True)]
    assert any(flipped) and not all(flipped)  # views: some flipped, some as they are
