"""Discovery, quality table, split and class weights."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import NEU, SAMPLE, needs_shared

from gc10lib import data
from gc10lib.classes import GC10_CLASSES


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# ----------------------------------------------------------------------------- layouts


def test_kaggle_layout(synth_root):
    ds = data.discover(synth_root)
    assert ds.layout == "kaggle"
    assert ds.classes == list(GC10_CLASSES)
    assert len(ds) == 120
    assert (ds.table.groupby("class").size() == 12).all()
    assert (ds.table["label"] == ds.table["class"].map(ds.classes.index)).all()
    assert ds.table["boxes"].map(len).eq(1).all()
    assert (ds.table["box_classes"].map(lambda c: c[0]) == ds.table["class"]).all()
    assert ds.table[["width", "height"]].drop_duplicates().values.tolist() == [[256, 125]]
    assert ds.quality.empty


def test_original_release_layout(synth_root, tmp_path):
    """Numbered class folders 1..10 and XMLs in lable/ (the original release's spelling)."""
    root = tmp_path / "orig"
    for k, cls in enumerate(GC10_CLASSES, start=1):
        src = synth_root / "images" / "images" / ("waist folding" if cls == "waist_folding" else cls)
        shutil.copytree(src, root / str(k))
    shutil.copytree(synth_root / "label" / "label", root / "lable")
    ds = data.discover(root)
    assert ds.layout == "gc10-original"
    assert ds.table.groupby("class").size().to_dict() == {c: 12 for c in GC10_CLASSES}
    assert ds.table["boxes"].map(len).eq(1).all()


@pytest.mark.parametrize("nested", [False, True])
def test_folder_per_class_layout(synth_root, tmp_path, nested):
    root = tmp_path / "generic"
    parent = root / "images" if nested else root
    for cls in ("crease", "silk_spot", "water_spot"):
        shutil.copytree(synth_root / "images" / "images" / cls, parent / cls)
    ds = data.discover(root)
    assert ds.layout == "folder"
    assert ds.classes == ["crease", "silk_spot", "water_spot"]
    assert len(ds) == 36


@needs_shared
def test_real_gc10_sample():
    ds = data.discover(SAMPLE)
    s = data.summarize(ds)
    assert ds.layout == "kaggle"
    assert s["n_images"] == 18 and s["n_classes"] == 7
    assert s["images_per_class"]["crescent_gap"] == 4
    assert s["images_per_class"]["waist_folding"] == 1  # folder "waist folding", with a space
    assert s["image_sizes"] == [{"width": 2048, "height": 1000, "count": 18}]
    assert s["boxes"]["images_with_xml"] == 18 and s["boxes"]["n_boxes"] >= 18


@needs_shared
def test_real_neu():
    ds = data.discover(NEU)
    assert ds.layout == "folder"
    assert len(ds) == 1499
    assert len(ds.present_classes) == 6
    assert ds.table["boxes"].map(len).gt(0).mean() > 0.99  # NEU's own VOC boxes are attached


@needs_shared
def test_label_only_view_of_all_real_xmls():
    labels = data.label_table(SAMPLE.parent / "gc10-labels")
    assert labels.image_id.nunique() == 2280
    assert "unknown:d" in set(labels["class"])  # the real stray tag is kept visible
    assert (labels["class"] == "waist_folding").sum() == 142  # 11 x 10_yaozhe + 131 x 10_yaozhed


# ----------------------------------------------------------------------------- quality table


def test_quality_table_cases(synth_copy):
    img = synth_copy / "images" / "images"
    xml = synth_copy / "label" / "label"
    # same file name in two class folders
    shutil.copy(img / "crease" / "syn_09_00000.jpg", img / "silk_spot" / "syn_09_00000.jpg")
    # no XML
    (xml / "syn_01_00001.xml").unlink()
    # folder class not among the XML labels
    t = (xml / "syn_02_00002.xml").read_text().replace("2_hanfeng", "3_yueyawan")
    (xml / "syn_02_00002.xml").write_text(t)
    # unknown tag
    t = (xml / "syn_03_00003.xml").read_text().replace("3_yueyawan", "d")
    (xml / "syn_03_00003.xml").write_text(t)
    # corrupt image and a non-image file
    (img / "oil_spot" / "broken.jpg").write_bytes(b"not a jpeg at all")
    (img / "oil_spot" / "notes.txt").write_text("hello")
    before = _tree_digest(synth_copy)
    with pytest.warns(UserWarning, match="broken.jpg"):
        ds = data.discover(synth_copy)
    q = ds.quality
    problems = set(q["problem"])
    assert {
        "duplicate_name",
        "no_xml",
        "folder_class_not_in_xml",
        "unknown_tag",
        "unreadable",
        "not_an_image",
    } <= problems
    assert q.loc[q.problem == "duplicate_name", "file"].str.contains("syn_09_00000").sum() == 2
    assert q.loc[q.problem == "no_xml", "file"].str.endswith("syn_01_00001.jpg").all()
    assert q.loc[q.problem == "unknown_tag", "detail"].str.contains("'d'").any()
    assert q.loc[q.problem == "unreadable", "file"].str.endswith("broken.jpg").all()
    assert not ds.table["path"].str.endswith("broken.jpg").any()  # excluded, but reported
    assert len(ds) == 121  # 120 originals + the planted duplicate; broken.jpg excluded
    assert _tree_digest(synth_copy) == before  # nothing in the dataset folder changed


def test_wrong_path_is_clear(tmp_path):
    with pytest.raises(data.DatasetError, match="no such folder"):
        data.discover(tmp_path / "missing")


def test_empty_folder_is_clear(tmp_path):
    with pytest.raises(data.DatasetError, match="unrecognised layout"):
        data.discover(tmp_path)


def test_empty_class_folder_is_clear(synth_copy):
    (synth_copy / "images" / "images" / "crease").rename(synth_copy / "crease_moved")
    (synth_copy / "images" / "images" / "crease").mkdir()
    with pytest.raises(data.DatasetError, match="class folder 'crease' is empty"):
        data.discover(synth_copy)
    (synth_copy / "images" / "images" / "crease" / "notes.txt").write_text("not an image")
    with pytest.raises(data.DatasetError, match=r"class folder 'crease' holds no image files \(only notes.txt\)"):
        data.discover(synth_copy)


def test_unknown_gc10_class_folder_is_clear(synth_copy):
    (synth_copy / "images" / "images" / "scratches").mkdir()
    shutil.copy(
        synth_copy / "images" / "images" / "crease" / "syn_09_00000.jpg",
        synth_copy / "images" / "images" / "scratches" / "x.jpg",
    )
    with pytest.raises(data.DatasetError, match="unknown class folder 'scratches'"):
        data.discover(synth_copy)


def test_only_corrupt_images_is_clear(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.jpg").write_bytes(b"\x00" * 10)
    with pytest.warns(UserWarning), pytest.raises(data.DatasetError, match="no readable images"):
        data.discover(tmp_path)


# ----------------------------------------------------------------------------- split


def test_split_deterministic_and_stratified(synth_root):
    ds = data.discover(synth_root)
    a = data.split_dataset(ds, (0.7, 0.15, 0.15), seed=7)
    b = data.split_dataset(ds, (0.7, 0.15, 0.15), seed=7)
    c = data.split_dataset(ds, (0.7, 0.15, 0.15), seed=8)
    pd.testing.assert_frame_equal(a, b)
    assert not a["subset"].equals(c["subset"])
    per = a.groupby(["class", "subset"]).size().unstack(fill_value=0)
    assert (per["val"] >= 1).all() and (per["test"] >= 1).all()
    assert (per["train"] >= 7).all()


def test_split_groups_duplicates_and_keeps_rare_classes(synth_copy):
    img = synth_copy / "images" / "images"
    # same name in two folders must land in one subset
    for i in range(6):
        shutil.copy(img / "crease" / f"syn_09_{i:05d}.jpg", img / "silk_spot" / f"syn_09_{i:05d}.jpg")
    # a rare class with exactly 3 images still gets one in val and one in test
    for p in sorted((img / "rolled_pit").glob("*.jpg"))[3:]:
        p.unlink()
    ds = data.discover(synth_copy)
    for seed in range(5):
        m = data.split_dataset(ds, seed=seed)
        assert (m.groupby("image_id")["subset"].nunique() == 1).all()
        rare = m[m["class"] == "rolled_pit"]["subset"].value_counts().to_dict()
        assert rare == {"train": 1, "val": 1, "test": 1}


def test_split_manifest_roundtrip_and_no_overwrite(synth_root, tmp_path):
    ds = data.discover(synth_root)
    m = data.split_dataset(ds, seed=1)
    out = data.write_split(m, tmp_path / "split.csv", ds.root, classes=ds.classes, seed=1, fractions=(0.7, 0.15, 0.15))
    back = data.read_split(out)
    assert back["path"].tolist() == m["path"].tolist()
    assert back["subset"].tolist() == m["subset"].tolist()
    assert data.split_classes(out) == list(GC10_CLASSES)
    assert not pd.read_csv(out)["path"].str.startswith("/").any()  # relative to the data root
    with pytest.raises(FileExistsError, match="already exists"):
        data.write_split(m, out, ds.root, classes=ds.classes, seed=1, fractions=(0.7, 0.15, 0.15))


def test_bad_fractions():
    with pytest.raises(ValueError, match="fractions"):
        data.split_dataset(None, (0.5, 0.2, 0.2))  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- class weights


def test_class_weights_keyed_by_label_index():
    # GC10-like counts, in canonical label order: rolled_pit (label 7) is the rarest.
    counts = [219, 273, 226, 289, 204, 650, 216, 31, 52, 146]
    labels = np.repeat(np.arange(10), counts)
    w = data.class_weights(labels)
    assert set(w) == set(range(10))
    assert max(w, key=w.get) == 7  # the rarest class, under its own index
    assert min(w, key=w.get) == 5  # silk_spot, the commonest
    assert w[7] == pytest.approx(len(labels) / (10 * 31))
    assert np.allclose([w[i] * counts[i] for i in range(10)], len(labels) / 10)


def test_class_weights_skip_absent_classes():
    w = data.class_weights([0, 0, 2], n_classes=4)
    assert set(w) == {0, 2}
    assert w[2] == pytest.approx(3 / (2 * 1))


def test_class_weight_modes():
    labels = [0] * 90 + [1] * 10
    bal = data.class_weights(labels, mode="balanced")
    sq = data.class_weights(labels, mode="sqrt")
    none = data.class_weights(labels, mode="none")
    assert bal[1] == pytest.approx(100 / (2 * 10)) and bal[0] == pytest.approx(100 / (2 * 90))
    assert sq[1] == pytest.approx(bal[1] ** 0.5) and sq[0] == pytest.approx(bal[0] ** 0.5)
    assert none == {0: 1.0, 1: 1.0}
    with pytest.raises(ValueError, match="class-weight mode 'inverse'"):
        data.class_weights(labels, mode="inverse")
