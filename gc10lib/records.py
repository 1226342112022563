"""The artefacts of a run folder: one :class:`ModelRecord` per saved model, found one way.

Every step that saves a model writes a ``metrics.json`` beside it (``kind``: ``backbone``,
``probe`` or ``ensemble``). :func:`find_models` reads them all; the ensemble, quantize and explain
steps, the run summary and the CLI use it. Choosing among models is done on validation only
(:func:`choose_by_validation`); test figures are reported, never used to choose. A step's lines
for the run summary go through :func:`write_step_summary`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from gc10lib.errors import InputError, NotFoundError

KINDS = ("backbone", "probe", "ensemble", "student")
STEP_SUMMARY = "summary_extra.json"


@dataclass(frozen=True)
class ModelRecord:
    """One saved model and what its step recorded about it (``metrics``: its ``metrics.json``)."""

    name: str
    kind: str
    path: Path
    dir: Path
    metrics: dict

    @property
    def is_recipe(self) -> bool:
        """An ensemble kept as a recipe (``recipe.json``: method, members, fitted weights), not a model file."""
        return self.path.name == "recipe.json"

    @property
    def backbone(self) -> str | None:
        return self.metrics.get("backbone")

    @property
    def val(self) -> dict:
        return self.metrics.get("val") or {}

    @property
    def test(self) -> dict:
        return self.metrics.get("test") or {}

    def proba(self, part: str):
        """The probabilities this model's step saved for ``part`` (``val`` or ``test``), or ``None``."""
        f = self.dir / f"proba_{part}.npy"
        return np.load(f).astype(np.float64) if f.is_file() else None

    def row(self) -> dict:
        """One comparison-table row: accuracy, balanced accuracy and macro-F1 side by side, val and test."""
        m = self.metrics
        row = {
            "model": self.name,
            "kind": self.kind,
            "img_size": m.get("img_size"),
            "weights": (m.get("weights_source") or "").split(":")[0],
        }
        for part in ("test", "val"):
            for k in ("accuracy", "balanced_accuracy", "macro_f1"):
                row[f"{part}_{k}"] = (m.get(part) or {}).get(k)
        ci = self.test.get("ci95") or {}
        for k in ("accuracy", "macro_f1"):  # bootstrap 95% intervals, for error bars
            lo, hi = ci.get(k) or (None, None)
            row[f"test_{k}_ci_lo"], row[f"test_{k}_ci_hi"] = lo, hi
        row.update(
            val_log_loss=self.val.get("log_loss"),
            selected_phase=(m.get("selected") or {}).get("phase"),
            size_mb=m.get("model_size_mb"),
            train_s=(m.get("timings") or {}).get("total_s"),
        )
        return row


def _record(metrics_file: Path) -> ModelRecord | None:
    m = json.loads(metrics_file.read_text())
    if m.get("kind") not in KINDS:
        return None
    for key in ("model_path", "recipe_path"):  # an ensemble not materialized is found by its recipe
        if not m.get(key):
            continue
        path = Path(m[key])
        if not path.is_file():  # a moved or copied run folder: the file sits beside its metrics
            path = metrics_file.parent / path.name
        if path.is_file():
            return ModelRecord(m.get("name", metrics_file.parent.name), m["kind"], path, metrics_file.parent, m)
    return None


def find_models(run_dir: str | Path, kinds: Sequence[str] = KINDS) -> list[ModelRecord]:
    """Every saved model of ``kinds`` under ``run_dir``, in path order.

    Ensembles that were not materialized are found by their ``recipe.json`` (``is_recipe``). Attempts kept aside by ``--resume`` (``*.failed-N`` folders) are left out.
    """
    root = Path(run_dir)
    if not root.is_dir():
        raise NotFoundError(f"{root}: no such run folder")
    found = []
    for mf in sorted(root.glob("**/metrics.json")):
        if any(".failed-" in part for part in mf.relative_to(root).parts):
            continue
        rec = _record(mf)
        if rec is not None and rec.kind in kinds:
            found.append(rec)
    return found


def records_table(records: Sequence[ModelRecord]) -> pd.DataFrame:
    """One :meth:`ModelRecord.row` per record."""
    return pd.DataFrame([r.row() for r in records])


#: the ensemble that fits nothing on validation; a fitted method has to earn its place against it
BASELINE_ENSEMBLE = "ensemble_mean"

#: :func:`choose_by_validation`'s rule in one line per kind, for reports (the model card)
CHOICE_RULE = {
    "ensemble": "the plain mean unless a fitted method is right on more images at no higher log-loss",
    "backbone": "the lowest log-loss, ties by macro-F1",
}


def choose_by_validation(table: pd.DataFrame, kind: str = "ensemble") -> str:
    """The row of ``kind`` that validation prefers. Test columns are never read.

    Backbones (and any other kind): the lowest val log-loss; ties go to the higher val macro-F1,
    then to the first name in alphabetical order, so every caller, whatever its row order, makes
    the same choice. Log-loss rather than macro-F1 because a small validation split saturates or
    jitters macro-F1 (13 ELPV validation images make a class) long before log-loss.

    Ensembles: the plain mean (:data:`BASELINE_ENSEMBLE`) unless a fitted method (``weighted``,
    ``select``, ``stack``) is right on more validation images than the mean *and* has a val
    log-loss no higher; among those, the rule above. The fitted methods' validation scores are
    cross-fitted, yet log-loss alone still rewards a combiner that only makes already-right answers
    more confident: on a saturated split (X-SDD, every method right on all 161 images) ``select``
    kept the single most confident member, which then lost test images that the mean got right.
    A fit on a few hundred images has to show in the decisions before it replaces the mean;
    measured over the run folders in the README ("Which ensemble validation picks").
    """
    cand = table[table.kind == kind]
    if cand.empty:
        raise InputError(f"no {kind} rows to choose from")
    if kind == "ensemble" and (cand.model == BASELINE_ENSEMBLE).any():
        if "val_accuracy" not in cand or cand.val_accuracy.isna().any():
            raise InputError("choosing an ensemble needs every ensemble's val_accuracy")
        base = cand[cand.model == BASELINE_ENSEMBLE].iloc[0]
        earned = cand[(cand.val_accuracy > base.val_accuracy + 1e-9) & (cand.val_log_loss <= base.val_log_loss)]
        cand = earned if not earned.empty else cand[cand.model == BASELINE_ENSEMBLE]
    keys = ["val_log_loss", "val_macro_f1", "model"]
    return str(cand.sort_values(keys, ascending=[True, False, True], kind="mergesort").iloc[0]["model"])


def pick_models(run_dir: str | Path, which: Sequence[str] = ("best_backbone", "best_ensemble")) -> list[ModelRecord]:
    """Models by name, or ``best_backbone`` / ``best_ensemble`` chosen on validation."""
    found = find_models(run_dir)
    if not found:
        raise NotFoundError(f"{run_dir}: no trained models (metrics.json with a model file) found")
    by_name = {r.name: r for r in found}
    table = records_table(found)
    picked: list[ModelRecord] = []
    for w in which:
        if w in ("best_backbone", "best_ensemble"):
            kind = w.removeprefix("best_")
            if not (table.kind == kind).any():
                continue  # a run without ensembles still has its best backbone
            rec = by_name[choose_by_validation(table, kind)]
        elif w in by_name:
            rec = by_name[w]
        else:
            raise InputError(f"no model named {w!r} in {run_dir}; found: {', '.join(by_name)}")
        if rec.is_recipe:
            raise InputError(
                f"{rec.name} in {run_dir} is kept as a recipe ({rec.path}); build its .keras first with "
                f"`gc10 ensemble {run_dir} --materialize {rec.metrics.get('method')}`"
            )
        if rec not in picked:
            picked.append(rec)
    return picked


def write_step_summary(out_dir: str | Path, title: str, markdown: str, **extra) -> Path:
    """A step's section of the run summary (``summary_extra.json``): a title, a markdown table, extras."""
    path = Path(out_dir) / STEP_SUMMARY
    path.write_text(json.dumps({"title": title, "markdown": markdown, **extra}, indent=2, default=str))
    return path


def read_step_summaries(run_dir: str | Path) -> dict[str, dict]:
    """Every step's section, by step folder name."""
    return {
        f.parent.name: json.loads(f.read_text()) for f in sorted((Path(run_dir) / "steps").glob(f"*/{STEP_SUMMARY}"))
    }
