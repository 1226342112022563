"""01_eda.ipynb executed by papermill, on synthetic data and on the real GC10 sample."""

from __future__ import annotations

import json

import papermill as pm
import pytest
from conftest import LABELS, REPO, SAMPLE, needs_shared

pytestmark = pytest.mark.slow  # each test starts a Jupyter kernel

NB = REPO / "notebooks" / "01_eda.ipynb"


def _run(tmp_path, **params):
    out = tmp_path / "eda"
    pm.execute_notebook(
        str(NB),
        str(tmp_path / "01_eda.ipynb"),
        parameters={"out_dir": str(out), **params},
        kernel_name="python3",
        cwd=str(NB.parent),
        progress_bar=False,
    )
    return out


def test_eda_on_synthetic(synth_root, tmp_path):
    out = _run(tmp_path, data_dir=str(synth_root))
    s = json.loads((out / "eda_summary.json").read_text())
    assert s["n_images"] == 120 and s["n_classes"] == 10
    for f in ("class_counts.png", "split.png", "boxes.png", "samples.png", "quality.csv"):
        assert (out / f).stat().st_size > 0


@needs_shared
def test_eda_on_real_sample_with_labels(tmp_path):
    out = _run(tmp_path, data_dir=str(SAMPLE), labels_dir=str(LABELS))
    s = json.loads((out / "eda_summary.json").read_text())
    assert s["n_images"] == 18 and s["boxes"]["n_boxes"] > 0
    assert s["labels_only"]["n_xml"] == 2280
    assert (out / "samples.png").stat().st_size > 10_000  # real 2048x1000 images drawn


def test_eda_refuses_existing_results(synth_root, tmp_path):
    out = tmp_path / "eda"
    out.mkdir()
    (out / "eda_summary.json").write_text("{}")
    with pytest.raises(pm.PapermillExecutionError, match="already holds results"):
        _run(tmp_path, data_dir=str(synth_root))
    assert (out / "eda_summary.json").read_text() == "{}"
