"""Training: smoke runs of every backbone, outputs, feature cache, real-data floor, strategies."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import NEU, WEIGHTS, fresh_process_gaps, needs_shared, needs_weights

from gc10lib import data
from gc10lib.backbones import ORIGINAL, load_model
from gc10lib.inference import predict_proba
from gc10lib.layers import model_classes
from gc10lib.steps import train


def test_every_backbone_trains_and_writes_outputs(smoke_models):
    out, results = smoke_models
    assert set(results) == set(ORIGINAL)
    for name, m in results.items():
        d = out / name
        for f in ("model.keras", "metrics.json", "history.csv", "proba_val.npy", "proba_test.npy"):
            assert (d / f).is_file(), (name, f)
        saved = json.loads((d / "metrics.json").read_text())
        assert saved["weights_source"] == "random" and saved["seed"] == 3 and saved["img_size"] == 75
        assert saved["split_csv"].endswith("split.csv")
        man = data.read_split(saved["split_csv"])
        for part in ("val", "test"):
            y = man[man.subset == part].label.to_numpy()
            proba = np.load(d / f"proba_{part}.npy")
            assert saved[part]["accuracy"] == pytest.approx(float(np.mean(proba.argmax(1) == y)))
            assert len(saved[part]["confusion_matrix"]) == 10 and set(saved[part]["per_class"]) == set(m["classes"])
        assert {"head_s", "finetune_s", "eval_s", "total_s"} <= set(saved["timings"])
        hist = pd.read_csv(d / "history.csv")
        assert list(hist.phase.unique()) == ["head", "finetune"]
        sel = saved["selected"]
        assert sel["phase"] in ("probe", "head", "finetune") and sel["monitor"] == "val_loss"
        assert sel["value"] == min(sel["best_by_phase"].values())
        # the hand-over between phases is exact: full model on plain images == head on cached features
        assert saved["handover"]["max_prob_gap"] < 1e-4, (name, saved["handover"])
        assert saved["handover"]["loss_full"] == pytest.approx(saved["handover"]["loss_head"], abs=1e-4)
        probe = json.loads((d / "probe" / "metrics.json").read_text())
        assert probe["kind"] == "probe" and probe["name"] == f"probe_{name}" and probe["backbone"] == name
        assert (d / "probe" / "model.keras").is_file() and (d / "probe" / "proba_test.npy").is_file()
        assert saved["probe"]["val_accuracy"] == probe["val"]["accuracy"]
        # class weights keyed by class name; all ten balanced classes weigh the same here
        assert len(set(round(v, 6) for v in saved["class_weights"].values())) == 1


def test_saved_model_reproduces_recorded_probabilities(smoke_models, smoke_data):
    """Every backbone's saved file reloads in safe mode in a fresh process (its registered layers
    found by name, no Lambda) and reproduces its recorded test probabilities."""
    out, results = smoke_models
    root, split = smoke_data
    man = data.read_split(split)
    te = man[man.subset == "test"]
    model = load_model(out / "mobilenet" / "model.keras")
    assert model_classes(model) == results["mobilenet"]["classes"]
    proba = predict_proba(model, te.path)
    np.testing.assert_allclose(proba, np.load(out / "mobilenet" / "proba_test.npy"), atol=1e-5)
    names = sorted(results)
    gaps = fresh_process_gaps(
        [out / n / "model.keras" for n in names], list(te.path), [out / n / "proba_test.npy" for n in names]
    )
    assert max(gaps) < 1e-4, dict(zip(names, gaps, strict=True))
    import warnings

    for name in results:  # weights and architecture only: no optimizer state to skip on loading
        # where the saved state is the probe, the probe's file is the same file (a hard link), not a copy
        same = (out / name / "model.keras").samefile(out / name / "probe" / "model.keras")
        assert same == (results[name]["selected"]["phase"] == "probe"), name
        for path in [out / name / "model.keras"] + ([] if same else [out / name / "probe" / "model.keras"]):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                loaded = load_model(path)
            assert not [w for w in caught if "Skipping variable loading" in str(w.message)], path
            weight_bytes = sum(np.asarray(v).nbytes for v in loaded.weights)
            assert path.stat().st_size <= 1.03 * weight_bytes, (path, path.stat().st_size, weight_bytes)


@pytest.mark.slow
def test_saved_model_is_the_best_state_across_phases(smoke_data, tmp_path):
    """A fine-tune that diverges (SGD at lr 50, no clipping) must not be what gets saved."""
    root, split = smoke_data
    cfg = train.TrainConfig(
        backbone="mobilenet",
        img_size=75,
        weights=None,
        epochs_head=3,
        epochs_finetune=2,
        finetune_fraction=0.3,
        lr_finetune=50.0,
        clipnorm=None,
        warmup_fraction=0.0,
        batch_size=16,
        verbose=0,
        seed=3,
    )
    m = train.run(cfg, root, tmp_path / "o", split_csv=split)
    hist = pd.read_csv(tmp_path / "o" / "history.csv")
    ft = hist[hist.phase == "finetune"]
    head_best = min(hist[hist.phase == "head"].val_loss.min(), m["selected"]["best_by_phase"]["probe"])
    assert ft.val_loss.min() > head_best  # the fine-tune did diverge ...
    assert m["selected"]["phase"] in ("probe", "head")  # ... so the frozen-backbone state was kept
    assert m["selected"]["value"] == pytest.approx(head_best, abs=1e-6)
    # the saved file really holds that state: its validation log-loss is the selected value
    assert m["val"]["log_loss"] == pytest.approx(head_best, abs=1e-3)
    reloaded = load_model(tmp_path / "o" / "model.keras")
    man = data.read_split(split)
    va = man[man.subset == "val"]
    np.testing.assert_allclose(predict_proba(reloaded, va.path), np.load(tmp_path / "o" / "proba_val.npy"), atol=1e-5)


def test_train_config_from_notebook_parameters():
    cfg = train.TrainConfig.from_params({"backbone": "vgg19", "class_weight": "none", "out_dir": "x", "seed": 7})
    assert (cfg.backbone, cfg.class_weight, cfg.seed) == ("vgg19", "none", 7)


def test_notebook_02_defaults_are_train_config_defaults():
    """One source of training defaults: every TrainConfig field the 02 parameters cell declares has
    the TrainConfig default there (configs/*.yaml override them per dataset)."""
    import ast
    from dataclasses import fields

    from gc10lib import pipeline

    declared = pipeline.notebook_parameters(pipeline.NOTEBOOK_DIR / "02_finetune.ipynb")
    defaults = {f.name: f.default for f in fields(train.TrainConfig)}
    shared = set(declared) & set(defaults)
    assert len(shared) >= 20
    wrong = {k: (declared[k], defaults[k]) for k in shared if ast.literal_eval(declared[k]) != defaults[k]}
    assert not wrong, f"02 parameters differ from TrainConfig (notebook, TrainConfig): {wrong}"


def test_feature_cache_is_reused(smoke_models, smoke_data, tmp_path):
    root, split = smoke_data
    cfg = train.TrainConfig(
        backbone="mobilenet",
        img_size=75,
        weights=None,
        epochs_head=1,
        epochs_finetune=0,
        batch_size=16,
        verbose=0,
        seed=3,
    )
    first = train.run(cfg, root, tmp_path / "a", split_csv=split)
    second = train.run(cfg, root, tmp_path / "b", split_csv=split)
    assert first["timings"]["features_cached"] is True  # smoke_models computed the same features already
    assert second["timings"]["features_cached"] is True
    other = train.TrainConfig(**{**cfg.__dict__, "seed": 4})
    third = train.run(other, root, tmp_path / "c", split_csv=split)
    assert third["timings"]["features_cached"] is False  # another random init is another key


def test_finetune_unfreezes_top_only_and_keeps_batchnorm_frozen():
    import keras

    from gc10lib.backbones import build_classifier

    model, _ = build_classifier("mobilenet_v2", ["a", "b"], img_size=64, weights=None)
    n = train.set_finetune_trainable(model, 0.3)
    base = model.get_layer("backbone")
    assert n > 0
    cut = int(round(len(base.layers) * 0.7))
    assert not any(la.trainable for la in base.layers[:cut] if la.weights)
    assert not any(la.trainable for la in base.layers if isinstance(la, keras.layers.BatchNormalization))


def test_existing_output_folder_is_refused(smoke_data, tmp_path):
    root, split = smoke_data
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "model.keras").write_text("previous")
    cfg = train.TrainConfig(backbone="mobilenet", img_size=75, weights=None, epochs_head=1, epochs_finetune=0)
    with pytest.raises(FileExistsError, match="already holds results"):
        train.run(cfg, root, tmp_path / "x", split_csv=split)
    assert (tmp_path / "x" / "model.keras").read_text() == "previous"


@pytest.mark.slow
@needs_shared
@needs_weights
def test_real_neu_mobilenet_frozen_head_reaches_90_percent(tmp_path, monkeypatch):
    """MobileNet with real ImageNet weights, frozen-feature head only, on a NEU subset."""
    monkeypatch.setenv("GC10_WEIGHTS_DIR", str(WEIGHTS))
    ds = data.discover(NEU)
    sub = ds.table.groupby("class").sample(40, random_state=0)
    ds.table = sub.reset_index(drop=True)
    man = data.split_dataset(ds, (0.6, 0.2, 0.2), seed=0)
    cfg = train.TrainConfig(
        backbone="mobilenet",
        img_size=224,
        weights="imagenet",
        epochs_head=60,
        epochs_finetune=0,
        augment=False,
        batch_size=32,
        verbose=0,
        patience=8,
        seed=0,
    )
    m = train.run(cfg, NEU, tmp_path / "neu", manifest=man, classes=ds.classes)
    assert m["weights_source"].startswith("imagenet-file:")
    assert m["test"]["n"] == 48
    assert m["test"]["accuracy"] >= 0.90, m["test"]["accuracy"]


@pytest.mark.slow
@needs_shared
@needs_weights
def test_real_neu_saved_model_never_below_the_head_phase(tmp_path, monkeypatch):
    """Real weights, a NEU subset, one fine-tune epoch: the saved model's validation loss is at most
    the best head-phase (probe or head) validation loss, and the saved model scores what it claims."""
    monkeypatch.setenv("GC10_WEIGHTS_DIR", str(WEIGHTS))
    ds = data.discover(NEU)
    ds.table = ds.table.groupby("class").sample(24, random_state=1).reset_index(drop=True)
    man = data.split_dataset(ds, (0.5, 0.25, 0.25), seed=1)
    cfg = train.TrainConfig(
        backbone="mobilenet",
        img_size=160,
        weights="imagenet",
        epochs_head=15,
        epochs_finetune=1,
        finetune_fraction=0.2,
        batch_size=16,
        verbose=0,
        seed=1,
    )
    m = train.run(cfg, NEU, tmp_path / "neu", manifest=man, classes=ds.classes)
    hist = pd.read_csv(tmp_path / "neu" / "history.csv")
    head_best = min(hist[hist.phase == "head"].val_loss.min(), m["selected"]["best_by_phase"]["probe"])
    assert "finetune" in set(hist.phase)
    assert m["val"]["log_loss"] <= head_best + 1e-3, (m["val"]["log_loss"], head_best, m["selected"])
    assert m["val"]["accuracy"] >= 0.9 and m["probe"]["val_accuracy"] >= 0.9


STRATEGY_SCRIPT = r"""
import json, os, sys
import tensorflow as tf
n_cpu = int(os.environ.get("N_LOGICAL_CPUS", "1"))
if n_cpu > 1:
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n_cpu)
from gc10lib.steps import train
root, split, out, strategy = sys.argv[1:5]
cfg = train.TrainConfig(backbone="mobilenet", img_size=64, weights=None, epochs_head=1, epochs_finetune=1,
                           finetune_fraction=0.05, batch_size=8, verbose=0, seed=1, strategy=strategy,
                           head_mode=os.environ.get("HEAD_MODE", "features"))
m = train.run(cfg, root, out, split_csv=split)
strat = train.make_strategy(strategy)
print("RESULT", json.dumps({"replicas": strat.num_replicas_in_sync, "acc": m["test"]["accuracy"]}))
"""


def _result(stdout: str) -> dict:
    line = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line.split(" ", 1)[1])


@pytest.mark.slow
def test_mirrored_strategy_on_two_logical_cpus(smoke_data, tmp_path):
    root, split = smoke_data
    env = {**os.environ, "N_LOGICAL_CPUS": "2"}
    r = subprocess.run(
        [sys.executable, "-c", STRATEGY_SCRIPT, str(root), str(split), str(tmp_path / "o"), "mirrored"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert _result(r.stdout)["replicas"] == 2
    assert (tmp_path / "o" / "model.keras").is_file()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_multiworker_strategy_two_processes(smoke_data, tmp_path):
    """Two worker processes on 127.0.0.1 train together through TF_CONFIG; bounded in time."""
    root, split = smoke_data
    cluster = {"worker": [f"127.0.0.1:{_free_port()}", f"127.0.0.1:{_free_port()}"]}
    procs = []
    for i in range(2):
        env = {**os.environ, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})}
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", STRATEGY_SCRIPT, str(root), str(split), str(tmp_path / f"w{i}"), "multiworker"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
        )
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=420))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (so, se) in zip(procs, outs, strict=True):
        assert p.returncode == 0, se[-3000:]
        assert _result(so)["replicas"] == 2
    for i in range(2):
        hist = pd.read_csv(tmp_path / f"w{i}" / "history_finetune.csv")
        assert len(hist) == 1 and np.isfinite(hist["loss"]).all()
    # synchronous training: both workers end with the same weights, hence the same predictions
    np.testing.assert_allclose(
        np.load(tmp_path / "w0" / "proba_test.npy"), np.load(tmp_path / "w1" / "proba_test.npy"), atol=1e-5
    )


@pytest.mark.slow
def test_tensorboard_logs_per_phase(smoke_data, tmp_path):
    root, split = smoke_data
    cfg = train.TrainConfig(
        backbone="mobilenet",
        img_size=48,
        weights=None,
        epochs_head=1,
        epochs_finetune=1,
        finetune_fraction=0.05,
        batch_size=16,
        verbose=0,
        seed=3,
        tensorboard=True,
    )
    train.run(cfg, root, tmp_path / "m", split_csv=split)
    for phase in ("head", "finetune"):
        events = list((tmp_path / "m" / "tensorboard" / phase).rglob("events.out.tfevents.*"))
        assert events and all(e.stat().st_size > 0 for e in events), phase
    off = train.run(train.TrainConfig(**{**cfg.__dict__, "tensorboard": False}), root, tmp_path / "n", split_csv=split)
    assert off["config"]["tensorboard"] is False and not (tmp_path / "n" / "tensorboard").exists()
