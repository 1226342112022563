"""The ensemble step (notebook ``03_ensemble``, ``gc10 ensemble``): every method of
:mod:`gc10lib.ensembles` fitted on a run's backbone models, scored, and the one validation
chooses saved as ``ensemble.keras``; the others stay recipes that :func:`materialize` builds."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from gc10lib import data, plots
from gc10lib.backbones import load_model, save_model
from gc10lib.ensembles import branch_outputs, build_fitted, check_members, combine, fit_method
from gc10lib.errors import InputError, NotFoundError, OutputExistsError
from gc10lib.evaluation import compute_metrics
from gc10lib.inference import predict_proba
from gc10lib.inputs import make_dataset
from gc10lib.layers import model_info
from gc10lib.records import ModelRecord, choose_by_validation, find_models, write_step_summary
from gc10lib.settings import file_size_mb, new_output_dir, save_json

__all__ = ["find_recipe", "materialize", "run"]


def run(
    run_dir: str | Path,
    methods: Sequence[str],
    out_dir: str | Path | None,
    data_dir: str | Path,
    split_csv: str | Path,
    backbones: Sequence[str] | None = None,
    seed: int = 42,
    batch_size: int = 32,
    check_n: int = 16,
    probes: bool = False,
) -> tuple[pd.DataFrame, dict]:
    """The ensemble step: fit and evaluate every method over a run's backbone models, and save the
    one chosen on validation.

    Member probabilities on the test split are computed once, through the ensemble's own shared
    input and resize (so decoding and resizing match the shipped model); so are those on the
    validation split that fits the methods, when some member is resized inside the ensemble
    (otherwise the members' own validation probabilities are reused). Each method's output is
    then combined exactly as its layer does. Every method gets ``recipe.json`` (method, members,
    fitted weights or stacker) and ``metrics.json``; only the method chosen on validation is built
    as ``ensemble.keras`` (members with zero weight left out), checked against the table on
    ``check_n`` test images. :func:`materialize` builds any other. Writes ``<out>/ensembles/<method>/``,
    ``<out>/comparison.{csv,md,png}``, ``per_class_f1.png`` and the step's summary section; returns
    ``(table, {name: test metrics})``. Every backbone's probe (``probe_<backbone>``) is a row of the
    table; with ``probes=True`` the probes are members too. The chosen ensemble and single model
    (on validation) are in ``table.attrs``.
    """
    found = [r for r in find_models(run_dir, ("backbone", "probe")) if not backbones or r.backbone in set(backbones)]
    members = [r for r in found if probes or r.kind == "backbone"]
    if not members:
        raise InputError(f"{run_dir}: no per-backbone outputs (metrics.json with a model) found")
    out = new_output_dir(out_dir, prefix="ensemble")
    man = data.read_split(split_csv, data_root=data_dir)
    va, te = man[man.subset == "val"], man[man.subset == "test"]
    y_val, y_test = va.label.to_numpy(), te.label.to_numpy()
    models = [load_model(r.path) for r in members]
    info = check_members(models)

    t0 = time.perf_counter()
    inp, outs = branch_outputs(models)  # the ensemble's own shared input and resizes
    branches = keras.Model(inp, outs)

    def through_branches(paths: Sequence) -> list[np.ndarray]:
        batches = make_dataset(list(paths), None, int(inp.shape[1]), policy=info.policy, batch_size=batch_size)
        out = branches.predict(batches, verbose=0)
        return [np.asarray(p, np.float64) for p in (out if len(models) > 1 else [out])]

    test_probas = through_branches(te.path)
    # A member resized inside the ensemble (from the largest input size) sees other pixels than it
    # saw alone; the weights are then fitted on what the shipped ensemble will actually compute.
    resized = any(model_info(m).input_size != int(inp.shape[1]) for m in models)
    val_probas = through_branches(va.path) if resized else [r.proba("val") for r in members]
    members_s = time.perf_counter() - t0

    shown = members + [r for r in found if r not in members]
    results: dict[str, dict] = {r.name: r.test for r in shown}
    rows = [r.row() for r in shown]
    ensembles: dict[str, tuple[dict, dict, np.ndarray]] = {}
    for method in methods:
        t0 = time.perf_counter()
        fitted, metrics, proba = _fit_and_score(
            method, val_probas, test_probas, y_val, y_test, members, out, int(inp.shape[1]), info, seed
        )
        metrics["timings"] = {"total_s": round(time.perf_counter() - t0 + members_s, 2)}
        save_json(metrics, out / "ensembles" / method / "metrics.json")
        results[metrics["name"]] = metrics["test"]
        rows.append(
            ModelRecord(
                metrics["name"], "ensemble", Path(metrics["recipe_path"]), out / "ensembles" / method, metrics
            ).row()
        )
        ensembles[method] = (fitted, metrics, proba)
    table = pd.DataFrame(rows)
    if ensembles:  # only the method chosen on validation is written as a .keras; the others stay recipes
        chosen = choose_by_validation(table, "ensemble").removeprefix("ensemble_")
        _materialize_chosen(ensembles[chosen], models, out / "ensembles" / chosen, te, check_n, batch_size)
        table.loc[table.model == ensembles[chosen][1]["name"], "size_mb"] = ensembles[chosen][1]["model_size_mb"]
    _write_outputs(table, results, out)
    return table, results


def _fit_and_score(method, val_probas, test_probas, y_val, y_test, members, out: Path, size: int, info, seed: int):
    """One method fitted on validation (cross-fitted where it fits anything), its recipe saved and
    its val and test metrics computed. Returns ``(fitted, metrics, test probabilities)``."""
    fitted = fit_method(method, val_probas, y_val, seed=seed)
    d = out / "ensembles" / method
    d.mkdir(parents=True)
    recipe = save_json(_recipe(fitted, members, size), d / "recipe.json")
    proba = combine(method, test_probas, fitted)
    val_combined = fitted.get("oof_val_proba")
    if val_combined is None:
        val_combined = combine(method, val_probas, fitted)
    metrics = {
        "name": f"ensemble_{method}",
        "kind": "ensemble",
        "method": method,
        "members": [r.name for r in members],
        "img_size": size,
        "policy": info.policy,
        "weights_source": info.weights_source,
        "model_path": None,
        "recipe_path": str(recipe),
        "model_size_mb": None,
        "seed": seed,
        "classes": info.classes,
        "fitted": {"weights": fitted.get("weights")},
        "val": compute_metrics(y_val, val_combined, info.classes, seed=seed),
        "val_is_out_of_fold": fitted.get("oof_val_proba") is not None,
        "test": compute_metrics(y_test, proba, info.classes, seed=seed),
    }
    np.save(d / "proba_test.npy", proba.astype(np.float32))
    return fitted, metrics, proba


def _materialize_chosen(chosen: tuple, models, d: Path, te: pd.DataFrame, check_n: int, batch_size: int) -> None:
    """Build and save the method validation chose as ``ensemble.keras``; the saved file must
    reproduce the table's test probabilities on ``check_n`` images."""
    fitted, metrics, proba = chosen
    path = _save_materialized(build_fitted(models, fitted), metrics, d)
    n = min(check_n, len(te))
    if n:
        reloaded = predict_proba(load_model(path), list(te.path[:n]), batch_size=batch_size)
        gap = float(np.abs(reloaded - proba[:n]).max())
        if gap > 1e-4:
            raise RuntimeError(f"{path}: reloaded ensemble differs from its evaluation by {gap:.2e}")


def _recipe(fitted: dict, members: Sequence[ModelRecord], input_size: int) -> dict:
    """What :func:`materialize` needs to build the ensemble again: method, members, fitted numbers."""
    recipe = {
        "method": fitted["method"],
        "input_size": input_size,
        "members": [{"name": r.name, "path": str(r.path)} for r in members],
    }
    if "weights" in fitted:
        recipe["weights"] = fitted["weights"]
    if "stacker" in fitted:
        recipe["stacker"] = {k: np.asarray(v).tolist() for k, v in fitted["stacker"].items()}
    return recipe


def _save_materialized(model, metrics: dict, d: Path) -> Path:
    """Save ``model`` as ``d/ensemble.keras`` (never over an existing file) and point its metrics at it."""
    path = d / "ensemble.keras"
    if path.exists():
        raise OutputExistsError(f"{path} already exists; remove it to build it again")
    save_model(model, path)
    metrics.update(model_path=str(path), model_size_mb=file_size_mb(path))
    save_json(metrics, d / "metrics.json")
    return path


def find_recipe(run_dir: str | Path, method: str) -> Path:
    """The one ``ensembles/<method>/recipe.json`` under ``run_dir`` (a run folder or an ensemble step's)."""
    root = Path(run_dir)
    if (root / "recipe.json").is_file():
        return root / "recipe.json"
    hits = [p for p in sorted(root.glob(f"**/ensembles/{method}/recipe.json")) if ".failed-" not in str(p)]
    if not hits:
        raise NotFoundError(f"{root}: no ensemble recipe for method {method!r} (run `gc10 ensemble {root}` first)")
    if len(hits) > 1:
        raise InputError(f"{root}: several {method!r} recipes, name one: " + ", ".join(map(str, hits)))
    return hits[0]


def materialize(recipe_path: str | Path) -> Path:
    """Build the ``.keras`` of an ensemble kept as a recipe, beside it; returns its path.

    Members are loaded from the paths the recipe names, or found by name in the run folder when the
    folder was moved. The new file's metrics are those already recorded (the same numbers).
    """
    recipe_path = Path(recipe_path)
    if not recipe_path.is_file():
        raise NotFoundError(f"{recipe_path}: no such ensemble recipe")
    recipe = json.loads(recipe_path.read_text())
    d = recipe_path.parent
    by_name = None
    models = []
    for member in recipe["members"]:
        path = Path(member["path"])
        if not path.is_file():
            if by_name is None:  # a moved run folder: the run is four levels up (run/steps/03_*/ensembles/m)
                by_name = {r.name: r.path for r in find_models(d.parents[min(3, len(d.parents) - 1)])}
            if member["name"] not in by_name:
                raise NotFoundError(f"{recipe_path}: member {member['name']!r} not found at {path} nor in its run")
            path = by_name[member["name"]]
        models.append(load_model(path))
    fitted = {"method": recipe["method"], "weights": recipe.get("weights"), "stacker": recipe.get("stacker")}
    if fitted["weights"] is None:
        del fitted["weights"]
    model = build_fitted(models, fitted, recipe.get("input_size"))
    metrics = json.loads((d / "metrics.json").read_text()) if (d / "metrics.json").is_file() else {}
    return _save_materialized(model, metrics, d)


def _write_outputs(table: pd.DataFrame, results: dict, out: Path) -> None:
    """Comparison table and plots, and the step's summary section (choices made on validation)."""
    table.to_csv(out / "comparison.csv", index=False)
    markdown = table.to_markdown(index=False, floatfmt=".4f")
    (out / "comparison.md").write_text(markdown + "\n")
    best_single = choose_by_validation(table, "backbone") if (table.kind == "backbone").any() else None
    best_ens = choose_by_validation(table, "ensemble") if (table.kind == "ensemble").any() else None
    table.attrs.update(out_dir=str(out), best_single=best_single, best_ensemble=best_ens)
    fig = plots.comparison_bars(table)
    fig.savefig(out / "comparison.png", dpi=100)
    shown = {k: results[k] for k in (best_single, best_ens) if k}
    if shown:
        fig = plots.per_class_f1(shown)
        fig.savefig(out / "per_class_f1.png", dpi=100)
    if best_ens:  # the chosen ensemble's pictures, as PNGs beside the table
        plots.confusion(results[best_ens]).savefig(out / f"confusion_{best_ens}.png", dpi=100)
        plots.reliability(results[best_ens]).savefig(out / f"reliability_{best_ens}.png", dpi=100)
    plots.close_all()
    write_step_summary(
        out,
        "Ensembles vs single backbones (test split)",
        markdown,
        best_single=best_single,
        best_ensemble=best_ens,
        chosen_on="validation",
    )
