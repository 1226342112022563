"""One way to find a run's models: records, moved run folders, attempts kept aside, choice on validation."""

from __future__ import annotations

import json
import shutil

import pytest

from gc10lib import records
from gc10lib.errors import Gc10Error


def _plant(d, name, kind, val_f1, val_ll, test_f1, backbone=None):
    d.mkdir(parents=True)
    (d / "model.keras").write_bytes(b"x")
    m = {
        "name": name,
        "kind": kind,
        "backbone": backbone,
        "model_path": str(d / "model.keras"),
        "val": {"accuracy": val_f1, "macro_f1": val_f1, "balanced_accuracy": val_f1, "log_loss": val_ll},
        "test": {"accuracy": test_f1, "macro_f1": test_f1, "balanced_accuracy": test_f1},
    }
    (d / "metrics.json").write_text(json.dumps(m))


@pytest.fixture()
def run(tmp_path):
    s = tmp_path / "run" / "steps"
    _plant(s / "02_finetune_a", "a", "backbone", 0.80, 0.5, 0.99, "a")
    _plant(s / "02_finetune_a" / "probe", "probe_a", "probe", 0.85, 0.4, 0.70, "a")
    _plant(s / "02_finetune_b", "b", "backbone", 0.90, 0.3, 0.60, "b")
    _plant(s / "02_finetune_b.failed-1", "b", "backbone", 0.99, 0.1, 0.99, "b")  # an attempt kept aside
    _plant(s / "03_ensemble" / "ensembles" / "mean", "ensemble_mean", "ensemble", 0.91, 0.30, 0.50)
    _plant(s / "03_ensemble" / "ensembles" / "stack", "ensemble_stack", "ensemble", 0.912, 0.20, 0.40)
    (s / "04_quantize").mkdir()
    (s / "04_quantize" / "metrics.json").write_text(json.dumps({"kind": "table"}))  # not a model
    return tmp_path / "run"


def test_find_models_reads_every_kind_and_skips_failed_attempts(run):
    found = records.find_models(run)
    assert [r.name for r in found] == ["a", "probe_a", "b", "ensemble_mean", "ensemble_stack"]
    assert {r.kind for r in found} == {"backbone", "probe", "ensemble"}
    assert [r.name for r in records.find_models(run, ("probe",))] == ["probe_a"]


def test_a_moved_run_folder_still_finds_its_models(run, tmp_path):
    moved = tmp_path / "moved"
    shutil.move(run, moved)
    found = records.find_models(moved)
    assert len(found) == 5 and all(r.path.is_file() and moved in r.path.parents for r in found)


def test_pick_models_chooses_on_validation_never_test(run):
    picked = records.pick_models(run, ["best_backbone", "best_ensemble", "a"])
    # b beats a on validation (a is better on test); stack is right on more validation images than
    # the mean, at a lower validation log-loss (mean is better on test)
    assert [r.name for r in picked] == ["b", "ensemble_stack", "a"]
    # a stack no more accurate than the mean on validation does not replace it, whatever its log-loss
    mf = run / "steps" / "03_ensemble" / "ensembles" / "stack" / "metrics.json"
    m = json.loads(mf.read_text())
    m["val"]["accuracy"] = 0.91
    mf.write_text(json.dumps(m))
    assert [r.name for r in records.pick_models(run, ["best_ensemble"])] == ["ensemble_mean"]
    with pytest.raises(Gc10Error, match="no model named 'zz'"):
        records.pick_models(run, ["zz"])


def test_step_summaries_round_trip(run):
    out = run / "steps" / "03_ensemble"
    records.write_step_summary(out, "Title", "| a |", best="x")
    assert records.read_step_summaries(run) == {"03_ensemble": {"title": "Title", "markdown": "| a |", "best": "x"}}


def test_an_ensemble_kept_as_a_recipe_is_found_but_not_loaded(run):
    d = run / "steps" / "03_ensemble" / "ensembles" / "select"
    d.mkdir()
    (d / "recipe.json").write_text(json.dumps({"method": "select", "members": []}))
    m = {"name": "ensemble_select", "kind": "ensemble", "method": "select", "model_path": None}
    m |= {"recipe_path": str(d / "recipe.json"), "val": {"macro_f1": 0.5, "log_loss": 1.0}}
    (d / "metrics.json").write_text(json.dumps(m))
    found = {r.name: r for r in records.find_models(run)}
    assert found["ensemble_select"].is_recipe and not found["ensemble_mean"].is_recipe
    with pytest.raises(Gc10Error, match="gc10 ensemble .* --materialize select"):
        records.pick_models(run, ["ensemble_select"])
