"""Ensembles: structure, methods, save/reload in a fresh process, class checks, run-folder reports."""

from __future__ import annotations

import json
import subprocess
import sys

import keras
import numpy as np
import pandas as pd
import pytest
from conftest import NEU, WEIGHTS, needs_shared, needs_weights
from sklearn.metrics import log_loss

from gc10lib import data, ensembles, steps
from gc10lib.backbones import build_classifier, load_model
from gc10lib.inference import predict_proba
from gc10lib.layers import ResizeTo, model_classes, model_info
from gc10lib.records import choose_by_validation, find_models, pick_models
from gc10lib.steps import train


@pytest.fixture(scope="module")
def members(smoke_models):
    out, _ = smoke_models
    return [load_model(out / n / "model.keras") for n in ("mobilenet", "vgg19", "inception_v3")]


def test_single_input_shared_resize_and_class_names(members):
    small, _ = build_classifier("mobilenet_v2", model_classes(members[0]), img_size=64, weights=None)
    also_small, _ = build_classifier("resnet50_v2", model_classes(members[0]), img_size=64, weights=None)
    ens = ensembles.build_ensemble([*members, small, also_small], "mean")
    assert len(ens.inputs) == 1 and tuple(ens.inputs[0].shape[1:]) == (75, 75, 3)
    resizes = [la for la in ens.layers if isinstance(la, ResizeTo)]
    assert [la.size for la in resizes] == [64]  # one shared resize for both 64-px branches, none for 75 px
    assert model_classes(ens) == model_classes(members[0])
    info = model_info(ens)  # the ensemble describes itself: every member's backbone, their policy, its input
    assert info.backbones == ["mobilenet", "vgg19", "inception_v3", "mobilenet_v2", "resnet50_v2"]
    assert (info.policy, info.input_size, info.method) == ("stretch", 75, "mean")
    x = np.random.default_rng(0).uniform(0, 255, (3, 75, 75, 3)).astype("float32")
    p = ens.predict(x, verbose=0)
    manual = np.mean(
        [
            m.predict(
                x if m.inputs[0].shape[1] == 75 else np.asarray(keras.ops.image.resize(x, (64, 64), antialias=True)),
                verbose=0,
            )
            for m in (*members, small, also_small)
        ],
        axis=0,
    )
    np.testing.assert_allclose(p, manual, atol=1e-5)


def test_members_must_agree_on_classes(members):
    other, _ = build_classifier("mobilenet", list(reversed(model_classes(members[0]))), img_size=75, weights=None)
    with pytest.raises(ValueError, match="disagree on classes"):
        ensembles.build_ensemble([members[0], other], "mean")


def test_weight_fitting_and_selection_prefer_the_good_member():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 25)
    good = np.full((100, 4), 0.02)
    good[np.arange(100), y] = 0.94
    noise = rng.dirichlet(np.ones(4), 100)
    w = ensembles.fit_weights([good, noise], y)
    assert w.sum() == pytest.approx(1) and w[0] > 0.8
    s = ensembles.caruana_select([noise, good], y)
    assert s[1] > 0.5


def _table(rows):
    cols = ("model", "kind", "val_accuracy", "val_macro_f1", "val_log_loss", "test_accuracy")
    return pd.DataFrame(rows, columns=cols)


def test_choice_by_validation_keeps_the_mean_unless_a_fit_earns_its_place_and_never_reads_test():
    table = _table(
        [
            ("ensemble_select", "ensemble", 0.96, 1.0, 0.20, 0.1),
            ("ensemble_mean", "ensemble", 0.95, 0.998, 0.05, 1.0),
            ("ensemble_stack", "ensemble", 0.97, 0.90, 0.01, 0.0),
            ("ensemble_weighted", "ensemble", 0.98, 0.99, 0.06, 0.0),
            ("mobilenet", "backbone", 0.9, 1.0, 0.5, 1.0),
            ("mobilenet_v2", "backbone", 0.99, 1.0, 0.6, 1.0),
        ]
    )
    # stack is right on more validation images than the mean, at a lower log-loss; select is right on
    # more but with a higher log-loss, weighted too: neither earns its place
    assert choose_by_validation(table) == "ensemble_stack"
    # saturated validation: every method right on every image; the most confident one does not replace the mean
    saturated = table.assign(val_accuracy=1.0)
    assert choose_by_validation(saturated) == "ensemble_mean"
    # two that earned it: the lower log-loss, then (a tie) the higher macro-F1, whatever the row order
    two = table.assign(val_log_loss=[0.04, 0.05, 0.04, 0.06, 0.5, 0.6])
    assert choose_by_validation(two) == choose_by_validation(two.iloc[::-1]) == "ensemble_select"
    assert choose_by_validation(table.assign(test_accuracy=0.0)) == "ensemble_stack"  # test never read
    # backbones: the lowest val log-loss, whatever their accuracy
    assert choose_by_validation(table, "backbone") == "mobilenet"
    # without the mean (a run that left it out of its methods), the lowest log-loss among the rest
    assert choose_by_validation(table[table.model != "ensemble_mean"]) == "ensemble_stack"
    with pytest.raises(ValueError, match="no probe rows"):
        choose_by_validation(table, "probe")
    with pytest.raises(ValueError, match="val_accuracy"):
        choose_by_validation(table.drop(columns="val_accuracy"))


def test_stacker_is_trained_and_scored_out_of_fold():
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(3), 20)
    a = rng.dirichlet(np.ones(3), 60)
    a[np.arange(60), y] += 2
    a /= a.sum(1, keepdims=True)
    st = ensembles.fit_stacker([a, rng.dirichlet(np.ones(3), 60)], y, seed=0)
    assert np.abs(st["coef"]).sum() > 0  # never shipped untrained
    assert st["oof_proba"].shape == (60, 3)
    assert (st["oof_proba"].argmax(1) == y).mean() > 0.8


def test_fitted_methods_are_scored_cross_fitted_on_validation():
    rng = np.random.default_rng(3)
    y = np.repeat(np.arange(4), 30)
    members = []  # three members of the same quality, each with its own noise
    for _ in range(3):
        z = 1.5 * np.eye(4)[y] + rng.normal(0, 1, (120, 4))
        members.append(np.exp(z) / np.exp(z).sum(1, keepdims=True))
    mean_ll = log_loss(y, sum(members) / 3)
    for method in ("weighted", "select"):
        fitted = ensembles.fit_method(method, members, y, seed=0)
        oof = fitted["oof_val_proba"]
        expected = np.zeros_like(oof)  # each fold scored by the method refitted on the other folds
        fit = ensembles.fit_weights if method == "weighted" else ensembles.caruana_select
        for fit_rows, held in ensembles.validation_folds(y, seed=0).split(oof, y):
            expected[held] = ensembles.weighted_sum(
                [p[held] for p in members], fit([p[fit_rows] for p in members], y[fit_rows])
            )
        np.testing.assert_allclose(oof, expected)
        in_sample = log_loss(y, ensembles.combine(method, members, fitted))
        assert log_loss(y, oof) > in_sample  # the in-sample score flatters the fit
    # scored on the images it was fitted on, weighted can never lose to mean: it searched the uniform weights too
    weighted = ensembles.fit_method("weighted", members, y, seed=0)
    assert log_loss(y, ensembles.combine("weighted", members, weighted)) <= mean_ll
    assert log_loss(y, weighted["oof_val_proba"]) > mean_ll  # cross-fitted, it loses to mean here
    single = np.append(y[:-30], [3])  # the rarest class has one image: no folds, no honest score
    assert ensembles.validation_folds(single) is None
    assert ensembles.fit_method("weighted", [p[:91] for p in members], single)["oof_val_proba"] is None


def test_probes_can_be_ensemble_members(smoke_models, smoke_data, tmp_path):
    out, _ = smoke_models
    root, split = smoke_data
    table, _ = steps.ensemble.run(
        out, ["mean"], tmp_path / "ens", root, split, backbones=["mobilenet"], seed=0, probes=True
    )
    m = json.loads((tmp_path / "ens" / "ensembles" / "mean" / "metrics.json").read_text())
    assert m["members"] == ["mobilenet", "probe_mobilenet"]
    assert list(table.model) == ["mobilenet", "probe_mobilenet", "ensemble_mean"]


def test_mixed_sizes_are_fitted_on_what_the_shipped_ensemble_computes(smoke_models, smoke_data, tmp_path):
    """A 64-px member inside a 75-px ensemble sees the image resized twice; the validation numbers the
    methods are fitted and chosen on must be those of the saved ensemble, not of the member alone."""
    import shutil

    out, _ = smoke_models
    root, split = smoke_data
    run = tmp_path / "run"
    shutil.copytree(out / "mobilenet", run / "mobilenet")
    cfg = train.TrainConfig(
        backbone="mobilenet_v2", img_size=64, weights=None, epochs_head=1, epochs_finetune=0, verbose=0, seed=3
    )
    train.run(cfg, root, run / "mobilenet_v2", split_csv=split)
    steps.ensemble.run(run, ["mean"], tmp_path / "ens", root, split, backbones=["mobilenet", "mobilenet_v2"])
    m = json.loads((tmp_path / "ens" / "ensembles" / "mean" / "metrics.json").read_text())
    va = data.read_split(split, data_root=root).query("subset == 'val'")
    shipped = predict_proba(load_model(m["model_path"]), list(va.path))
    alone = np.mean([np.load(run / b / "proba_val.npy") for b in ("mobilenet", "mobilenet_v2")], axis=0)
    assert np.abs(shipped - alone).max() > 1e-4  # the double resize does change the 64-px member's output
    p = np.clip(shipped, 1e-7, 1)
    p /= p.sum(1, keepdims=True)
    assert m["val"]["log_loss"] == pytest.approx(float(-np.log(p[np.arange(len(va)), va.label]).mean()), abs=1e-4)


def test_members_must_agree_on_resize_policy(members):
    padded, _ = build_classifier("mobilenet", model_classes(members[0]), img_size=75, weights=None, policy="pad")
    with pytest.raises(ValueError, match="disagree on the resize policy"):
        ensembles.build_ensemble([members[0], padded], "mean")


def test_stack_without_stacker_is_refused(members):
    with pytest.raises(ValueError, match="never shipped untrained"):
        ensembles.build_ensemble(members[:2], "stack")


def test_every_method_saves_and_reloads_in_fresh_process(smoke_models, smoke_data, tmp_path):
    out, results = smoke_models
    root, split = smoke_data
    table, res = steps.ensemble.run(
        out, ensembles.METHODS, tmp_path / "ens", root, split, backbones=["mobilenet", "vgg19", "mobilenet_v2"], seed=0
    )
    members = ["mobilenet", "mobilenet_v2", "vgg19"]  # found in folder order; vgg19 brings caffe preprocessing
    probes = [f"probe_{m}" for m in members]  # every backbone's probe is a row (not a member by default)
    assert list(table.model) == members + probes + [f"ensemble_{m}" for m in ensembles.METHODS]
    assert set(table[table.kind == "probe"].model) == set(probes)
    assert (tmp_path / "ens" / "comparison.csv").is_file() and (tmp_path / "ens" / "comparison.md").is_file()
    chosen = table.attrs["best_ensemble"]
    for png in ("comparison.png", "per_class_f1.png", f"confusion_{chosen}.png", f"reliability_{chosen}.png"):
        assert (tmp_path / "ens" / png).stat().st_size > 0, png
    ens_dir = tmp_path / "ens" / "ensembles"
    # only the method chosen on validation is a model file; the others are recipes until materialized
    assert sorted(p.parent.name for p in ens_dir.glob("*/ensemble.keras")) == [chosen.removeprefix("ensemble_")]
    recipes = {r.name: r for r in find_models(tmp_path / "ens") if r.is_recipe}
    assert set(recipes) == {f"ensemble_{m}" for m in ensembles.METHODS} - {chosen}
    with pytest.raises(ValueError, match="--materialize"):
        pick_models(tmp_path / "ens", [next(iter(recipes))])
    te = data.read_split(split, data_root=root).query("subset == 'test'")
    loaded_by_method = {}  # each ensemble file is loaded once here (VGG19 makes them large)
    for name in recipes:
        method = name.removeprefix("ensemble_")
        path = steps.ensemble.materialize(steps.ensemble.find_recipe(tmp_path / "ens", method))
        with pytest.raises(FileExistsError):  # never over an existing model file
            steps.ensemble.materialize(ens_dir / method / "recipe.json")
        loaded = loaded_by_method[method] = load_model(path)
        got = predict_proba(loaded, list(te.path))  # the recipe rebuilds the table's numbers
        np.testing.assert_allclose(got, np.load(ens_dir / method / "proba_test.npy"), atol=1e-4)
        m = json.loads((ens_dir / method / "metrics.json").read_text())
        assert m["model_path"] == str(path) and m["model_size_mb"] > 0
        assert path.stat().st_size <= 1.03 * sum(np.asarray(v).nbytes for v in loaded.weights)  # lean file
        n_branches = sum(la.name.startswith("branch") for la in loaded.layers)
        assert n_branches == sum(w > 0 for w in (m["fitted"]["weights"] or [1, 1, 1]))  # zero weights left out
    y_test = te.label.to_numpy()
    x = np.random.default_rng(2).uniform(0, 255, (4, 75, 75, 3)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    expected = {}
    for method in ensembles.METHODS:
        m = json.loads((tmp_path / "ens" / "ensembles" / method / "metrics.json").read_text())
        assert m["kind"] == "ensemble" and m["members"] == members
        saved = np.load(tmp_path / "ens" / "ensembles" / method / "proba_test.npy")
        assert m["test"]["accuracy"] == pytest.approx(float(np.mean(saved.argmax(1) == y_test)))
        model = loaded_by_method.get(method) or load_model(tmp_path / "ens" / "ensembles" / method / "ensemble.keras")
        expected[method] = model.predict(x, verbose=0).tolist()
    for method in ensembles.METHODS:  # the fitted methods are scored cross-fitted on validation, mean as it is
        m = json.loads((tmp_path / "ens" / "ensembles" / method / "metrics.json").read_text())
        assert m["val_is_out_of_fold"] == (method != "mean")
    code = f"""
import json, numpy as np, keras
import gc10lib.ensembles  # registers the custom layers
from gc10lib.layers import model_classes
x = np.load({str(tmp_path / "x.npy")!r})
exp = json.loads({json.dumps(json.dumps(expected))})
for method, ref in exp.items():
    m = keras.saving.load_model({str(tmp_path / "ens" / "ensembles")!r} + f"/{{method}}/ensemble.keras", safe_mode=True)
    assert len(model_classes(m)) == 10
    gap = np.abs(m.predict(x, verbose=0) - np.array(ref)).max()
    assert gap < 1e-5, (method, gap)
print("OK", len(exp))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "OK 4" in r.stdout


@pytest.mark.slow
@needs_shared
@needs_weights
def test_real_neu_mean_ensemble_not_worse_than_worse_member(tmp_path, monkeypatch):
    monkeypatch.setenv("GC10_WEIGHTS_DIR", str(WEIGHTS))
    ds = data.discover(NEU)
    ds.table = ds.table.groupby("class").sample(40, random_state=0).reset_index(drop=True)
    man = data.split_dataset(ds, (0.6, 0.2, 0.2), seed=0)
    te = man[man.subset == "test"]
    models, accs = [], []
    for name in ("mobilenet", "mobilenet_v2"):
        cfg = train.TrainConfig(
            backbone=name,
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
        m = train.run(cfg, NEU, tmp_path / name, manifest=man, classes=ds.classes)
        accs.append(m["test"]["accuracy"])
        models.append(load_model(m["model_path"]))
    ens = ensembles.build_ensemble(models, "mean")
    proba = predict_proba(ens, te.path)
    acc = float((proba.argmax(1) == te.label.to_numpy()).mean())
    assert acc >= min(accs), (acc, accs)
    assert acc >= 0.9


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "gc10lib.cli", *args], capture_output=True, text=True, timeout=600)


@needs_shared
def test_cli_evaluate_and_predict_on_real_sample(smoke_models, tmp_path):
    from conftest import SAMPLE

    out, _ = smoke_models
    model = out / "mobilenet" / "model.keras"  # a GC10-class model (synthetic training)
    r = _cli("evaluate", "--model", str(model), "--data", str(SAMPLE), "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads(r.stdout)
    assert m["n"] == 18 and {"accuracy", "macro_f1", "balanced_accuracy", "top2_accuracy", "ece"} <= set(m)
    assert sum(v["support"] for v in m["per_class"].values()) == 18
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nope")
    r = _cli(
        "predict",
        "--model",
        str(model),
        str(SAMPLE / "images" / "images" / "crescent_gap"),
        str(bad),
        "--top-k",
        "3",
        "--out",
        str(tmp_path / "p.csv"),
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "skipped" in r.stderr and "bad.jpg" in r.stderr
    preds = pd.read_csv(tmp_path / "p.csv")
    assert len(preds) == 4 and {"class_1", "prob_1", "class_3", "prob_3"} <= set(preds.columns)
    assert (preds.prob_1 >= preds.prob_2).all()
    r = _cli("predict", "--model", str(model), str(bad), "--out", str(tmp_path / "p.csv"))
    assert r.returncode == 2 and "already exists" in r.stderr


@needs_shared
def test_cli_evaluate_unknown_class_folder_is_clear(smoke_models):
    out, _ = smoke_models
    r = _cli("evaluate", "--model", str(out / "mobilenet" / "model.keras"), "--data", str(NEU))
    assert r.returncode == 2
    assert "not among the model's classes" in r.stderr and "Traceback" not in r.stderr


def test_cli_evaluate_with_split_subset(smoke_models, smoke_data):
    out, _ = smoke_models
    root, split = smoke_data
    r = _cli(
        "evaluate",
        "--model",
        str(out / "vgg19" / "model.keras"),
        "--data",
        str(root),
        "--split-csv",
        str(split),
        "--subset",
        "val",
        "--json",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads(r.stdout)
    assert m["subset"] == "val" and m["n"] == (pd.read_csv(split).subset == "val").sum()


def test_fitted_weights_reach_the_best_mixture_of_many_members():
    """Six members, one near-perfect: the fitted mixture must be at least as good as every member alone
    (the softmax-parameterised Powell search once stopped at a worse member, as in the demo)."""
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(10), 4)

    def member(sharpness, noise):
        logits = rng.normal(0, noise, (40, 10))
        logits[np.arange(40), y] += sharpness
        p = np.exp(logits)
        return p / p.sum(1, keepdims=True)

    probas = [member(0.2, 1.0), member(5.0, 1.0), member(4.0, 1.5), member(9.0, 1.0), member(1.0, 1.0), member(0.5, 1)]
    w = ensembles.fit_weights(probas, y)

    def loss(p):
        return float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-7, 1)).mean())

    assert w.sum() == pytest.approx(1) and (w >= 0).all()
    assert loss(ensembles.weighted_sum(probas, w)) <= min(loss(p) for p in probas) + 1e-6
    assert loss(ensembles.weighted_sum(probas, w)) <= loss(sum(probas) / 6)
