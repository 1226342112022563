"""One Keras model from several fine-tuned backbone models.

The ensemble has a single raw-image input (float 0..255, RGB, ``input_size`` square). Branches
that need another size share one in-model resize per size; every branch applies its own
preprocessing inside itself (it is the member model, nested). Members' probabilities are combined
by one of:

* ``mean`` — plain average (the original project's method);
* ``weighted`` — weights on the simplex minimising validation log-loss;
* ``select`` — greedy ensemble selection with replacement by validation macro-F1
  (Caruana et al., ICML 2004); the selection counts become weights;
* ``stack`` — multinomial logistic regression on the members' validation log-probabilities,
  embedded as a trained Dense layer (never shipped untrained).

The three fitted methods are fitted on the validation split, so their validation scores are
*cross-fitted*: each validation image is scored by the method refitted without its fold. Scored on
the images it was fitted on, ``weighted`` could never lose to ``mean`` (the uniform weights are one
of the points its fit searches), and validation would always prefer it, however little the fit
generalises.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score, log_loss
from sklearn.model_selection import StratifiedKFold, cross_val_predict

from gc10lib import data, plots
from gc10lib.backbones import load_model, save_model
from gc10lib.errors import InputError, NotFoundError, OutputExistsError
from gc10lib.evaluation import compute_metrics
from gc10lib.inference import predict_proba
from gc10lib.inputs import make_dataset
from gc10lib.layers import EPS, ClassNames, ModelInfo, ResizeTo, SafeLog, WeightedAverage, model_info
from gc10lib.records import ModelRecord, choose_by_validation, find_models, write_step_summary
from gc10lib.settings import file_size_mb, new_output_dir, save_json

METHODS = ("mean", "weighted", "stack", "select")


# --------------------------------------------------------------------------- fitting on validation


def _stack_features(probas: Sequence[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.log(np.clip(p, EPS, 1.0)) for p in probas], axis=1)


def weighted_sum(probas: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """Weighted sum of member probability arrays."""
    return sum(w * p for w, p in zip(weights, probas, strict=True))


def fit_weights(
    probas: Sequence[np.ndarray], y: np.ndarray, min_weight: float = 1e-3, n_iter: int = 2000, tol: float = 1e-9
) -> np.ndarray:
    """Simplex weights minimising the log-loss of the weighted mixture on validation.

    The mixture's log-likelihood is concave in the weights, and the EM update for mixture weights
    (each member's share of the probability it gives the true class) climbs it monotonically to the
    global optimum, with no step size to tune. Weights below ``min_weight`` are then set to 0 (and the
    rest renormalized), so those members can be left out of the shipped ensemble.
    """
    y = np.asarray(y)
    lik = np.stack([np.clip(np.asarray(p)[np.arange(len(y)), y], EPS, 1.0) for p in probas], axis=1)  # n x k
    w = np.full(lik.shape[1], 1.0 / lik.shape[1])
    for _ in range(n_iter):
        resp = lik * w
        new = (resp / resp.sum(1, keepdims=True)).mean(0)
        done = np.abs(new - w).max() < tol
        w = new
        if done:
            break
    w[w < min_weight] = 0.0
    return w / w.sum()


def caruana_select(probas: Sequence[np.ndarray], y: np.ndarray, n_iter: int = 25) -> np.ndarray:
    """Greedy forward selection with replacement by macro-F1 (ties broken by log-loss)."""
    k, n_classes = len(probas), probas[0].shape[1]
    counts = np.zeros(k)
    current = np.zeros_like(probas[0])
    for _ in range(n_iter):
        best, best_key = None, None
        for j in range(k):
            cand = (current * counts.sum() + probas[j]) / (counts.sum() + 1)
            f1 = f1_score(y, cand.argmax(1), average="macro", zero_division=0)
            ll = log_loss(
                y, np.clip(cand, EPS, 1) / np.clip(cand, EPS, 1).sum(1, keepdims=True), labels=list(range(n_classes))
            )
            key = (f1, -ll)
            if best_key is None or key > best_key:
                best, best_key = j, key
        current = (current * counts.sum() + probas[best]) / (counts.sum() + 1)
        counts[best] += 1
    return counts / counts.sum()


def validation_folds(y: np.ndarray, seed: int = 42, max_splits: int = 5) -> StratifiedKFold | None:
    """The stratified folds that cross-fit a method on validation: up to ``max_splits``, no more than
    the rarest present class has images; ``None`` when that is fewer than 2 (no honest score then)."""
    y = np.asarray(y)
    n_splits = int(min(max_splits, np.bincount(y)[np.unique(y)].min()))
    return StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed) if n_splits >= 2 else None


def fit_stacker(probas: Sequence[np.ndarray], y: np.ndarray, seed: int = 42, C: float = 1.0) -> dict:
    """Fit the stacking meta-classifier on validation predictions.

    Returns ``coef`` (n_features x n_classes, for all model classes), ``intercept`` and the
    out-of-fold probabilities on the validation set (each predicted by a model that did not see it).
    """
    n_classes = probas[0].shape[1]
    x = _stack_features(probas)
    y = np.asarray(y)
    present = np.unique(y)
    clf = LogisticRegression(C=C, max_iter=5000)
    oof = None
    cv = validation_folds(y, seed)
    if cv is not None:
        oof_local = cross_val_predict(clf, x, y, cv=cv, method="predict_proba")
        oof = np.full((len(y), n_classes), EPS)
        oof[:, present] = oof_local
        oof /= oof.sum(1, keepdims=True)
    clf.fit(x, y)
    coef = np.zeros((x.shape[1], n_classes), np.float32)
    intercept = np.full(n_classes, -30.0, np.float32)  # classes absent from val: never predicted
    if len(present) == 2:  # sklearn's binary form: one column for the positive class
        coef[:, present[1]] = clf.coef_[0]
        intercept[present] = [0.0, clf.intercept_[0]]
    else:
        coef[:, present] = clf.coef_.T
        intercept[present] = clf.intercept_
    return {"coef": coef, "intercept": intercept, "oof_proba": oof}


# --------------------------------------------------------------------------- building


def check_members(models: Sequence) -> ModelInfo:
    """Members must carry the same class list, in the same order, and the same resize policy.

    Returns the ensemble's own :class:`ModelInfo` (the largest member input size, every backbone).
    """
    if not models:
        raise InputError("an ensemble needs at least one model")
    infos = [model_info(m) for m in models]
    first = infos[0]
    for m, info in zip(models[1:], infos[1:], strict=True):
        if info.classes != first.classes:
            raise InputError(
                f"ensemble members disagree on classes: {models[0].name!r} has {first.classes}, "
                f"{m.name!r} has {info.classes}"
            )
        if info.policy != first.policy:
            raise InputError(
                f"ensemble members disagree on the resize policy: {models[0].name!r} uses "
                f"{first.policy!r}, {m.name!r} uses {info.policy!r}"
            )
    sources = sorted({i.weights_source.split(":")[0] for i in infos if i.weights_source})
    return ModelInfo(
        first.classes,
        max(i.input_size for i in infos),
        first.policy,
        [b for i in infos for b in i.backbones],
        ",".join(sources) or None,
    )


def branch_outputs(models: Sequence, input_size: int | None = None):
    """The ensemble's single raw-image input and each member's output on it.

    Members needing another size than the input share one in-model resize per distinct size.
    """
    sizes = [model_info(m).input_size for m in models]
    size = int(input_size or max(sizes))
    inp = keras.Input((size, size, 3), name="image")
    resized: dict[int, object] = {size: inp}
    outs = []
    for i, (m, s) in enumerate(zip(models, sizes, strict=True)):
        if s not in resized:
            resized[s] = ResizeTo(s, name=f"resize_{s}")(inp)
        if not m.name.startswith("branch"):
            m.name = f"branch{i}_{m.name.removeprefix('gc10_')}"
        m.trainable = False
        outs.append(m(resized[s], training=False))
    return inp, outs


def build_ensemble(
    models: Sequence,
    method: str = "mean",
    *,
    weights: Sequence[float] | None = None,
    stacker: dict | None = None,
    input_size: int | None = None,
    name: str | None = None,
):
    """One Keras model combining ``models`` (each with its preprocessing inside) by ``method``.

    ``weighted``/``select`` need ``weights``; ``stack`` needs ``stacker`` from :func:`fit_stacker`.
    """
    if method not in METHODS:
        raise InputError(f"unknown ensemble method {method!r}; expected one of {METHODS}")
    info = check_members(models)
    classes = info.classes
    inp, outs = branch_outputs(models, input_size)
    if len(outs) == 1:
        combined = outs[0]
    elif method == "mean":
        combined = keras.layers.Average(name="mean")(outs)
    elif method in ("weighted", "select"):
        if weights is None or len(weights) != len(models):
            raise InputError(f"method {method!r} needs one weight per member")
        combined = WeightedAverage(weights, name=method)(outs)
    else:
        if stacker is None:
            raise InputError("method 'stack' needs a fitted stacker (fit_stacker); it is never shipped untrained")
        feats = SafeLog(name="log_proba")(keras.layers.Concatenate(name="stack_inputs")(outs))
        dense = keras.layers.Dense(len(classes), activation="softmax", name="stacker", dtype="float32")
        combined = dense(feats)
        dense.set_weights([np.asarray(stacker["coef"], np.float32), np.asarray(stacker["intercept"], np.float32)])
    meta = ModelInfo(classes, int(inp.shape[1]), info.policy, info.backbones, info.weights_source, method)
    out = ClassNames(classes, meta.as_info(), name="class_names", dtype="float32")(combined)
    return keras.Model(inp, out, name=name or f"ensemble_{method}")


def fit_method(method: str, val_probas: Sequence[np.ndarray], y_val: np.ndarray, seed: int = 42) -> dict:
    """Fit ``method`` on the members' validation probabilities.

    Returns ``{"method", "weights"}`` for ``weighted``/``select``, ``{"method", "stacker"}`` for
    ``stack`` and ``{"method"}`` for ``mean``. The fitted methods also return their cross-fitted
    validation probabilities under ``oof_val_proba`` (each fold's images scored by the method
    refitted on the other folds; ``None`` when the rarest class has a single image), the honest
    score to choose by. :func:`combine` applies it; :func:`build_fitted` ships it.
    """
    if method not in METHODS:
        raise InputError(f"unknown ensemble method {method!r}; expected one of {METHODS}")
    fitted: dict = {"method": method}
    if method in ("weighted", "select"):
        fit = fit_weights if method == "weighted" else caruana_select
        y_val = np.asarray(y_val)
        fitted["weights"] = [float(w) for w in fit(val_probas, y_val)]
        cv = validation_folds(y_val, seed)
        if cv is None:
            fitted["oof_val_proba"] = None
        else:
            oof = np.zeros_like(np.asarray(val_probas[0], np.float64))
            for train, held in cv.split(oof, y_val):
                w = fit([p[train] for p in val_probas], y_val[train])
                oof[held] = weighted_sum([p[held] for p in val_probas], w)
            fitted["oof_val_proba"] = oof
    elif method == "stack":
        stacker = fit_stacker(val_probas, y_val, seed=seed)
        fitted["stacker"] = {"coef": stacker["coef"], "intercept": stacker["intercept"]}
        fitted["oof_val_proba"] = stacker["oof_proba"]
    return fitted


def build_fitted(models: Sequence, fitted: dict, input_size: int | None = None):
    """The Keras ensemble of a fitted method; members with zero weight are left out of it."""
    method, weights = fitted["method"], fitted.get("weights")
    if weights is not None:
        keep = [i for i, w in enumerate(weights) if w > 0]
        models, weights = [models[i] for i in keep], [weights[i] for i in keep]
    return build_ensemble(models, method, weights=weights, stacker=fitted.get("stacker"), input_size=input_size)


# --------------------------------------------------------------------------- a run folder's ensembles


def combine(method: str, probas: Sequence[np.ndarray], info: dict) -> np.ndarray:
    """The ensemble's output computed from member probabilities, exactly as the Keras model does."""
    if len(probas) == 1:
        return probas[0]
    if method == "mean":
        return sum(probas) / len(probas)
    if method in ("weighted", "select"):
        return weighted_sum(probas, info["weights"])
    z = _stack_features(probas) @ info["stacker"]["coef"] + info["stacker"]["intercept"]
    z = np.exp(z - z.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


def ensemble_run(
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


__all__ = [
    "METHODS",
    "build_ensemble",
    "caruana_select",
    "check_members",
    "combine",
    "ensemble_run",
    "build_fitted",
    "find_recipe",
    "fit_method",
    "fit_stacker",
    "fit_weights",
    "materialize",
    "weighted_sum",
]
