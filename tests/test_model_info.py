"""Models describe themselves: a pad-trained model is evaluated, predicted, explained and exported
with pad geometry without any flag; files saved before the metadata existed still load."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import trains

from gc10lib import cli, data, export
from gc10lib.backbones import build_classifier, load_model
from gc10lib.inference import KerasPredictor, LiteRTPredictor, evaluate_model, predict_files
from gc10lib.inputs import ImageCache
from gc10lib.layers import model_info
from gc10lib.steps import train


@pytest.fixture(scope="module")
@trains
def pad_model(smoke_data, tmp_path_factory):
    root, split = smoke_data
    cfg = train.TrainConfig(
        backbone="mobilenet",
        img_size=64,
        weights=None,
        policy="pad",
        epochs_head=3,
        epochs_finetune=0,
        batch_size=16,
        verbose=0,
        seed=5,
    )
    m = train.run(cfg, root, tmp_path_factory.mktemp("pad") / "m", split_csv=split)
    return m["model_path"]


def test_saved_model_carries_its_metadata(pad_model, smoke_data):
    info = model_info(load_model(pad_model))
    assert info.policy == "pad" and info.backbones == ["mobilenet"] and info.input_size == 64
    assert info.classes == data.split_classes(smoke_data[1]) and info.weights_source == "random"


def test_pad_model_is_evaluated_and_predicted_with_pad_geometry(pad_model, smoke_data):
    root, split = smoke_data
    va = data.read_split(split).query("subset == 'val'")
    pred = KerasPredictor(pad_model)
    padded = pred(ImageCache(64, "pad").load(list(va.path)))
    stretched = pred(ImageCache(64, "stretch").load(list(va.path)))
    assert np.abs(padded - stretched).max() > 1e-3  # the geometry matters for this model: the check can fail
    m = evaluate_model(pad_model, root, split, "val", n_boot=0)
    assert m["policy"] == "pad"
    assert m["accuracy"] == pytest.approx(float(np.mean(padded.argmax(1) == va.label.to_numpy())))
    table = predict_files(pad_model, list(va.path), top_k=1)
    np.testing.assert_allclose(table.prob_1.to_numpy(), padded.max(1), atol=1e-5)
    forced = evaluate_model(pad_model, root, split, "val", policy="stretch", n_boot=0)  # an explicit override wins
    assert forced["policy"] == "stretch"
    assert forced["accuracy"] == pytest.approx(float(np.mean(stretched.argmax(1) == va.label.to_numpy())))


def test_pad_model_exports_and_calibrates_with_pad_geometry(pad_model, smoke_data, tmp_path, monkeypatch):
    root, split = smoke_data
    seen = {}
    real = export.representative_images

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(export, "representative_images", spy)
    out = tmp_path / "m.tflite"
    assert (
        cli.main(
            [
                "export",
                "--model",
                str(pad_model),
                "--variant",
                "int8",
                "--data",
                str(root),
                "--split-csv",
                str(split),
                "--calibration",
                "8",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert seen["policy"] == "pad"
    lite = LiteRTPredictor(out)
    assert lite.policy == "pad" and json.loads((tmp_path / "m.tflite.json").read_text())["backbones"] == ["mobilenet"]
    m = evaluate_model(out, root, split, "val", n_boot=0)
    assert m["policy"] == "pad"
    # MobileNet keeps its stem float by default; --full-integer writes the integer-only file
    full = tmp_path / "full.tflite"
    args = ["export", "--model", str(pad_model), "--variant", "int8", "--data", str(root), "--split-csv", str(split)]
    assert cli.main([*args, "--calibration", "8", "--full-integer", "--out", str(full)]) == 0
    metas = [json.loads((tmp_path / f"{f}.tflite.json").read_text()) for f in ("m", "full")]
    assert metas[0]["float_layers"] == ["preprocess", "conv1", "conv_dw_1", "conv_pw_1"]
    assert metas[0]["input"].startswith("float32")
    assert metas[1]["float_layers"] == [] and metas[1]["input"].startswith("uint8")
    assert LiteRTPredictor(full).inp["dtype"] == np.uint8 and LiteRTPredictor(out).inp["dtype"] == np.float32


def test_file_saved_before_metadata_still_loads(tmp_path):
    model, _ = build_classifier("mobilenet", ["a", "b"], img_size=48, weights=None, seed=0, policy="pad")
    model.get_layer("class_names").info = {}  # what files saved before the metadata hold
    model.save(tmp_path / "old.keras")
    info = model_info(load_model(tmp_path / "old.keras"))
    assert info.policy == "stretch" and info.backbones == ["mobilenet"] and info.classes == ["a", "b"]
