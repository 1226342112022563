"""The one deployable model of a run, chosen on validation (``<run>/deploy/``).

The candidates are the small files the run made: the float student (``06_distill/model.keras``),
and every LiteRT file of the quantize and distill steps (the int8 student, each backbone's int8,
the int8 ensemble). Each is scored on the **validation** split, with its top-1 agreement with the
float model it was made from. The rule: the smallest candidate whose validation accuracy is within
``margin`` (default 1 point) of the ensemble validation chose, in float; if none is, the most
accurate one on validation, and the record says the rule fell back. The test split is reported
beside each candidate and never used to choose.

Two checks come before the rule, both on validation, and the record says what each found:

* a float student below the backbone of its own architecture is left out, student files and all,
  and that backbone's int8 stands in (exported here when no step made it);
* an int8 file that loses more than ``margin`` against its float model (in accuracy, or in top-1
  agreement) gets a float16 file of that model offered beside it, unless the rule could not choose
  that file: a smaller one qualifies already (a float16 file is at least 1.5 times its int8 file),
  or its float model is more than ``margin`` below what would win (the reference, or in the
  fallback the most accurate file).

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

from gc10lib.backbones import load_model
from gc10lib.errors import OutputExistsError
from gc10lib.export import calibration_images, export_litert
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
    left_out: str | None = None  # why the rule may not choose it (a student below its backbone)


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
    if not found:
        return []
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


def qualifying(scored: list[Candidate], ref_accuracy: float, margin: float = MARGIN) -> list[Candidate]:
    """The candidates whose validation accuracy is within ``margin`` of ``ref_accuracy``."""
    return [c for c in scored if c.val_accuracy is not None and c.val_accuracy >= ref_accuracy - margin - 1e-12]


def choose(scored: list[Candidate], ref_accuracy: float, margin: float = MARGIN) -> tuple[Candidate, str]:
    """The smallest candidate within ``margin`` of ``ref_accuracy`` on validation; if none, the most
    accurate on validation (then the smallest of those). Returns ``(choice, why)``."""
    scored = [c for c in scored if not c.left_out]
    ok = qualifying(scored, ref_accuracy, margin)
    if ok:
        best = min(ok, key=lambda c: (c.size_mib, -(c.val_accuracy or 0.0), c.name))
        return best, f"the smallest file within {margin:.0%} of the reference's validation accuracy"
    best = max(scored, key=lambda c: (c.val_accuracy or 0.0, -c.size_mib))
    return best, f"fallback: no file came within {margin:.0%} of the reference on validation; the most accurate one"


def int8_loss(cand: Candidate, source: ModelRecord) -> float:
    """How much an int8 file loses against its float model on validation: the larger of the
    accuracy drop and the share of images whose top-1 class changed."""
    drop = (source.val.get("accuracy") or 0.0) - (cand.val_accuracy or 0.0)
    changed = 1.0 - cand.val_agreement if cand.val_agreement is not None else 0.0
    return max(drop, changed)


def offer_float16(
    run: RunFolder,
    found: list[tuple[Candidate, ModelRecord]],
    scored: list[Candidate],
    into: Path,
    margin: float,
    ref_accuracy: float | None = None,
) -> list[str]:
    """A float16 file beside every int8 file that loses more than ``margin`` on validation (kept
    ensembles included; a recipe-only ensemble has no model to convert), unless the rule could not
    choose it (:func:`_float16_cannot_win`): its model is left out, or, given ``ref_accuracy``, a
    smaller file qualifies already, or its float model is clearly below what wins. Returns the notes."""
    notes, offers = [], []
    for cand, source in found:
        if cand.variant != "int8" or (loss := int8_loss(cand, source)) <= margin:
            continue
        note = f"{cand.name} loses {loss:.1%} against its float model on validation"
        if source.is_recipe:
            notes.append(f"{note}; its ensemble is kept as a recipe, so no float16 file is offered")
            continue
        if why_not := _float16_cannot_win(cand, source, scored, ref_accuracy, margin):
            notes.append(f"{note}; no float16 file is offered: {why_not}")
            continue
        f = export_litert(source.path, into / f"{source.name}_float16.tflite", "float16")
        offers.append((Candidate(f"{source.name} float16", str(f), source.name, "float16", file_size_mb(f)), source))
        notes.append(f"{note}: a float16 file of {source.name} is offered beside it")
    scored += score(run, offers)
    found += offers
    return notes


#: a float16 file is at least this many times its int8 file (measured: 1.65x to 1.99x)
FLOAT16_OVER_INT8 = 1.5


def _float16_cannot_win(
    cand: Candidate, source: ModelRecord, scored: list[Candidate], ref_accuracy: float | None, margin: float
) -> str:
    """Why the rule could never choose a float16 file of ``cand``'s model ("" when it could). Its
    validation accuracy is taken as its float model's, give or take ``margin``; its size as at least
    :data:`FLOAT16_OVER_INT8` times the int8 file's."""
    if cand.left_out:
        return f"its model is left out ({cand.left_out})"
    if ref_accuracy is None:
        return ""
    live = [c for c in scored if not c.left_out and c.val_accuracy is not None]
    ok = qualifying(live, ref_accuracy, margin)
    acc = source.val.get("accuracy") or 0.0
    if not ok:  # the fallback: the most accurate file wins
        top = max((c.val_accuracy for c in live), default=0.0)
        if acc + margin < top:
            return f"no file qualifies, and its float model ({acc:.4f}) is below the most accurate file ({top:.4f})"
        return ""
    if acc + margin < ref_accuracy - margin:
        return f"its float model ({acc:.4f}) is not within reach of the reference ({ref_accuracy:.4f})"
    least = FLOAT16_OVER_INT8 * cand.size_mib
    smaller = min((c for c in ok if c.size_mib < least), key=lambda c: c.size_mib, default=None)
    if smaller is None:
        return ""
    return f"{smaller.name} ({smaller.size_mib:.2f} MiB) qualifies already and is smaller than it would be"


def student_check(
    run: RunFolder, found: list[tuple[Candidate, ModelRecord]], scored: list[Candidate], into: Path
) -> list[str]:
    """Leave the student's files out when the float student is below the backbone of its own
    architecture on validation, and make sure that backbone's int8 is a candidate. Returns the notes."""
    records = run.models()
    student = next((r for r in records if r.kind == "student"), None)
    peer = next((r for r in records if student and r.kind == "backbone" and r.backbone == student.backbone), None)
    if student is None or peer is None:
        return []
    s_acc, p_acc = student.val.get("accuracy") or 0.0, peer.val.get("accuracy") or 0.0
    if s_acc >= p_acc:
        return [f"the float student ({s_acc:.4f}) is at or above {peer.name} ({p_acc:.4f}) on validation"]
    for cand, source in found:
        if source.name == student.name:
            cand.left_out = f"the float student is below {peer.name} on validation"
    note = (
        f"the float student ({s_acc:.4f}) is below {peer.name} ({p_acc:.4f}), the backbone of its size, on "
        f"validation: the student's files are left out and {peer.name}'s int8 stands in"
    )
    if not any(source.name == peer.name and cand.variant == "int8" for cand, source in found):
        model = load_model(peer.path)
        rep = calibration_images(model, *run.inputs(), seed=int(run.config.get("seed") or 0))
        f = export_litert(model, into / f"{peer.name}_int8.tflite", "int8", representative=rep)
        extra = [(Candidate(f"{peer.name} int8", str(f), peer.name, "int8", file_size_mb(f)), peer)]
        scored += score(run, extra)
        found += extra
    return [note]


def choose_deployable(run_dir: str | Path, margin: float = MARGIN) -> dict | None:
    """Score the run's candidates on validation, run the two checks, copy the chosen file to
    ``<run>/deploy/`` and write ``choice.json``; ``None`` when the run made no deployable file (no
    quantize or distill step). The folder is built as ``deploy.partial`` and renamed when whole."""
    run = RunFolder(run_dir)
    found = candidates(run)
    if not found:
        return None
    out = run.dir / "deploy"
    if (out / "choice.json").is_file():  # chosen already (a resumed run): the choice stands
        return json.loads((out / "choice.json").read_text())
    if out.exists():
        raise OutputExistsError(f"{out}: exists without choice.json; remove it to choose again")
    staging = run.dir / "deploy.partial"  # only this function writes here: a crash's leftovers go
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "offered").mkdir(parents=True)
    scored = score(run, found)
    ref_name, ref_acc = reference(run)
    notes = student_check(run, found, scored, staging / "offered")
    notes += offer_float16(run, found, scored, staging / "offered", margin, ref_acc)
    best, why = choose(scored, ref_acc, margin)
    src = Path(best.path)
    target = staging / f"model{src.suffix}"
    shutil.copy2(src, target)
    if sidecar(src).is_file():
        shutil.copy2(sidecar(src), sidecar(target))
    for c in scored:  # the record's paths: where the files lie once the folder is renamed
        c.path = c.path.replace(str(staging), str(out))
    record = {
        "chosen": best.name,
        "path": str(out / target.name),
        "from": best.path,
        "rule": why,
        "margin": margin,
        "reference": {"name": ref_name, "val_accuracy": ref_acc},
        "checks": notes,
        "candidates": [asdict(c) for c in scored],
    }
    save_json(record, staging / "choice.json")
    if not any((staging / "offered").iterdir()):
        (staging / "offered").rmdir()
    staging.rename(out)
    return record


def main(argv: list[str] | None = None) -> int:
    """``python -m gc10lib.steps.deploy RUN``: what ``gc10 run`` calls at its end, in a process of its own
    (TensorFlow's start-up lines go to the run's log, not the terminal). Prints the choice."""
    import sys  # lazy: the command-line entry only

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not (Path(args[0]) / "run.json").is_file():
        print(f"usage: python -m gc10lib.steps.deploy RUN (a gc10 run folder); got {' '.join(args)!r}", file=sys.stderr)
        return 2
    choice = choose_deployable(args[0])
    if choice is not None:
        print(f"deployable model: {choice['chosen']} -> {choice['path']} ({choice['rule']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
