"""The one deployable model of a run, chosen on validation (``<run>/deploy/``).

The candidates are the small files the run made: the float student (``06_distill/model.keras``),
and every LiteRT file of the quantize and distill steps (the int8 student, each backbone's int8,
the int8 ensemble). Each is scored on the **validation** split, with its top-1 agreement with the
float model it was made from. The rule: the smallest candidate whose validation accuracy is within
``margin`` (default 1 point) of the ensemble validation chose, in float; if none is, the most
accurate one on validation, and the record says the rule fell back. The test split is reported
beside each candidate and never used to choose.

Writes ``<run>/deploy/model.tflite`` (or ``model.keras``) with its sidecar, and
``<run>/deploy/choice.json`` (the rule, the reference, every candidate's evidence); the run summary
and the model card name the choice (:func:`gc10lib.modelcard.deploy_lines`).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from gc10lib.errors import OutputExistsError
from gc10lib.inference import load_predictor, predict_proba, sidecar
from gc10lib.probe import log_loss
from gc10lib.records import ModelRecord, choose_by_validation, records_table
from gc10lib.runfolder import RunFolder
from gc10lib.settings import file_size_mb, save_json

#: a candidate qualifies when its validation accuracy is at most this far below the reference's
MARGIN = 0.01


@dataclass
class Candidate:
    """One deployable file and its validation evidence."""

    name: str
    path: str
    source: str  # the float model it was made from
    variant: str
    size_mib: float
    val_accuracy: float | None = None
    val_log_loss: float | None = None
    val_agreement: float | None = None  # top-1 agreement with its float source on validation
    test_accuracy: float | None = None


def candidates(run: RunFolder) -> list[tuple[Candidate, ModelRecord]]:
    """The run's deployable files, each with the record of the float model it was made from."""
    records = {r.name: r for r in run.models()}
    student = next((r for r in records.values() if r.kind == "student"), None)
    found: list[tuple[Candidate, ModelRecord]] = []
    if student is not None:
        found.append(
            (
                Candidate(student.name, str(student.path), student.name, "float32 keras", file_size_mb(student.path)),
                student,
            )
        )
    for f in sorted(run.steps_dir.glob("0[46]_*/*.tflite")):
        stem, _, variant = f.stem.rpartition("_")
        source = student if stem == "student" else records.get(stem)
        if source is None or not sidecar(f).is_file():
            continue
        name = f"{source.name} {variant}"
        if any(c.name == name for c, _ in found):
            continue  # the distill step re-exports the best backbone; one file of each is enough
        found.append((Candidate(name, str(f), source.name, variant, file_size_mb(f)), source))
    return found


def score(run: RunFolder, found: list[tuple[Candidate, ModelRecord]]) -> list[Candidate]:
    """Each candidate's validation accuracy, log-loss and agreement with its float source, and its
    test accuracy (reported only)."""
    man = run.split()
    parts = {s: man[man.subset == s] for s in ("val", "test")}
    out = []
    for cand, source in found:
        pred = load_predictor(cand.path)
        classes = list(pred.classes)
        for part, rows in parts.items():
            if rows.empty:
                continue
            y = np.array([classes.index(c) for c in rows["class"]])
            proba = predict_proba(pred, list(rows.path))
            accuracy = float(np.mean(proba.argmax(1) == y))
            if part == "val":
                cand.val_accuracy, cand.val_log_loss = accuracy, log_loss(y, proba)
                ref = _float_val(source, rows)
                if ref is not None:
                    cand.val_agreement = float(np.mean(ref.argmax(1) == proba.argmax(1)))
            else:
                cand.test_accuracy = accuracy
        out.append(cand)
    return out


def _float_val(source: ModelRecord, val: pd.DataFrame) -> np.ndarray | None:
    """The float model's validation probabilities: saved by its step, else computed (``None`` for an
    ensemble kept only as a recipe)."""
    saved = source.proba("val")
    if saved is not None and len(saved) == len(val):
        return saved
    if source.is_recipe:
        return None
    return predict_proba(source.path, list(val.path))


def reference(run: RunFolder) -> tuple[str, float]:
    """The float model every candidate is measured against: the ensemble validation chose (else the
    best backbone), with its validation accuracy."""
    table = records_table(run.models())
    kind = "ensemble" if (table.kind == "ensemble").any() else "backbone"
    name = choose_by_validation(table, kind)
    return name, float(table.loc[table.model == name, "val_accuracy"].iloc[0])


def choose(scored: list[Candidate], ref_accuracy: float, margin: float = MARGIN) -> tuple[Candidate, str]:
    """The smallest candidate within ``margin`` of ``ref_accuracy`` on validation; if none, the most
    accurate on validation (then the smallest of those). Returns ``(choice, why)``."""
    ok = [c for c in scored if c.val_accuracy is not None and c.val_accuracy >= ref_accuracy - margin - 1e-12]
    if ok:
        best = min(ok, key=lambda c: (c.size_mib, -(c.val_accuracy or 0.0), c.name))
        return best, f"the smallest file within {margin:.0%} of the reference's validation accuracy"
    best = max(scored, key=lambda c: (c.val_accuracy or 0.0, -c.size_mib))
    return best, f"fallback: no file came within {margin:.0%} of the reference on validation; the most accurate one"


def choose_deployable(run_dir: str | Path, margin: float = MARGIN) -> dict | None:
    """Score the run's candidates on validation, copy the chosen file to ``<run>/deploy/`` and write
    ``choice.json``; ``None`` when the run made no deployable file (no quantize or distill step)."""
    run = RunFolder(run_dir)
    found = candidates(run)
    if not found:
        return None
    out = run.dir / "deploy"
    if (out / "choice.json").is_file():  # chosen already (a resumed run): the choice stands
        return json.loads((out / "choice.json").read_text())
    if out.exists():
        raise OutputExistsError(f"{out}: exists without choice.json; remove it to choose again")
    scored = score(run, found)
    ref_name, ref_acc = reference(run)
    best, why = choose(scored, ref_acc, margin)
    out.mkdir()
    src = Path(best.path)
    target = out / f"model{src.suffix}"
    shutil.copy2(src, target)
    if sidecar(src).is_file():
        shutil.copy2(sidecar(src), sidecar(target))
    record = {
        "chosen": best.name,
        "path": str(target),
        "from": best.path,
        "rule": why,
        "margin": margin,
        "reference": {"name": ref_name, "val_accuracy": ref_acc},
        "candidates": [asdict(c) for c in scored],
    }
    save_json(record, out / "choice.json")
    return record


def main(argv: list[str] | None = None) -> int:
    """``python -m gc10lib.deploy RUN``: what ``gc10 run`` calls at its end, in a process of its own
    (TensorFlow's start-up lines go to the run's log, not the terminal). Prints the choice."""
    import sys  # lazy: the command-line entry only

    args = sys.argv[1:] if argv is None else argv
    choice = choose_deployable(args[0])
    if choice is not None:
        print(f"deployable model: {choice['chosen']} -> {choice['path']} ({choice['rule']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
