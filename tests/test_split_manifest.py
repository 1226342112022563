"""A split manifest that cannot mislabel: label and class must agree, the class order comes from the
sidecar or from the CSV's own pairs, and every malformed file is one line naming the file and row."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from gc10lib import cli, data
from gc10lib.backbones import build_classifier, save_model
from gc10lib.classes import GC10_CLASSES
from gc10lib.data import DatasetError
from gc10lib.inference import labelled_subset


@pytest.fixture()
def split(synth_root, tmp_path):
    ds = data.discover(synth_root)
    man = data.split_dataset(ds, (0.6, 0.2, 0.2), seed=1)
    return data.write_split(
        man, tmp_path / "split.csv", synth_root, classes=ds.classes, seed=1, fractions=(0.6, 0.2, 0.2)
    )


def _edit(path, fn):
    df = pd.read_csv(path)
    df = fn(df)
    df.to_csv(path, index=False)


def test_without_its_sidecar_the_csv_still_names_its_classes(split, synth_root):
    """Move every crease row to test and drop the sidecar: the labels still mean what they meant."""
    _edit(split, lambda d: d.assign(subset=d.subset.where(d["class"] != "crease", "test")))
    with_sidecar = data.split_classes(split)
    split.with_suffix(".json").unlink()
    assert data.split_classes(split) == with_sidecar == list(GC10_CLASSES)
    table, mapping = labelled_subset(synth_root, split, list(GC10_CLASSES), "test")
    counts = table["class"].value_counts()
    assert counts["crease"] == 12 and counts["water_spot"] < 12  # every crease image, under its own name
    named = {GC10_CLASSES[mapping[int(label)]] for label in table[table["class"] == "crease"].label}
    assert named == {"crease"}


def test_an_edited_class_column_that_disagrees_with_the_label_is_an_error(split, synth_root):
    _edit(
        split,
        lambda d: d.assign(
            **{"class": d["class"].where(d.index != 4, "crease" if d["class"][4] != "crease" else "oil_spot")}
        ),
    )
    with pytest.raises(
        DatasetError, match=r"split.csv, line 6: label \d+ is '\w+' in the class order .* but the class column says"
    ):
        data.read_split(split, synth_root)
    split.with_suffix(".json").unlink()  # without the sidecar the CSV's own pairs disagree
    with pytest.raises(DatasetError, match="goes with more than one"):
        data.read_split(split, synth_root)


def test_labels_that_skip_a_class_need_the_sidecar(split, synth_root):
    _edit(split, lambda d: d[d["class"] != "welding_line"])
    split.with_suffix(".json").unlink()
    with pytest.raises(DatasetError, match="skip some classes and there is no sidecar"):
        data.read_split(split, synth_root)


@pytest.mark.parametrize(
    ("plant", "message"),
    [
        (lambda p: p.write_text(""), "the split manifest is empty"),
        (lambda p: p.with_suffix(".json").write_text("{not json"), "sidecar is not valid JSON"),
        (lambda p: p.with_suffix(".json").write_text("[]"), "sidecar has no 'classes' list"),
        (lambda p: p.with_suffix(".json").write_text('{"data_root": "/x"}'), "sidecar has no 'classes' list"),
        (
            lambda p: _edit(p, lambda d: d.assign(label=d.label.astype(str).where(d.index != 2, "three"))),
            "line 4: label 'three' is not a whole number",
        ),
        (lambda p: _edit(p, lambda d: pd.concat([d, d.iloc[[3]]])), "is listed again (first on line 5)"),
        (
            lambda p: _edit(p, lambda d: d.assign(subset=d.subset.where(d.index != 0, "holdout"))),
            "line 2: subset 'holdout'",
        ),
    ],
)
def test_a_malformed_split_is_one_line_from_every_command(split, synth_root, tmp_path, capsys, plant, message):
    model, _ = build_classifier("mobilenet", GC10_CLASSES, 32, None, seed=0)
    path = save_model(model, tmp_path / "m.keras")
    plant(split)
    args = ["evaluate", "--model", str(path), "--data", str(synth_root), "--split-csv", str(split)]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "Traceback" not in err[0], err


def test_a_split_naming_a_class_the_model_lacks_blames_the_split(split, synth_root, tmp_path, capsys):
    model, _ = build_classifier("mobilenet", [c for c in GC10_CLASSES if c != "crease"], 32, None, seed=0)
    path = save_model(model, tmp_path / "m.keras")
    args = ["evaluate", "--model", str(path), "--data", str(synth_root), "--split-csv", str(split)]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "class(es) of the split" in err and "split.csv ['crease']" in err and "class folder" not in err
    assert json.loads(split.with_suffix(".json").read_text())["classes"] == list(GC10_CLASSES)  # nothing rewritten
