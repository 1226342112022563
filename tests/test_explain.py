"""Grad-CAM and localization scores: planted CAMs, coordinate mapping, a trained model's CAMs."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import trains

from gc10lib import explanation
from gc10lib.inputs import resize_geometry

BOX = (20.0, 10.0, 40.0, 30.0)  # in a 100 x 60 image


def blob(cx: float, cy: float, h: int = 60, w: int = 100, r: float = 4.0) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    return np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))


def test_planted_cams_give_the_expected_scores():
    inside, outside, uniform = blob(30, 20), blob(85, 50), np.ones((60, 100))
    assert explanation.pointing_hit(inside, [BOX]) is True
    assert explanation.energy_in_boxes(inside, [BOX]) > 0.95
    assert explanation.pointing_hit(outside, [BOX], tolerance=15) is False
    assert explanation.energy_in_boxes(outside, [BOX]) < 0.01
    # a flat map points nowhere; its energy is the boxes' share of the image
    assert explanation.pointing_hit(uniform, [BOX]) is False
    assert explanation.energy_in_boxes(uniform, [BOX]) == pytest.approx(20 * 20 / (100 * 60))
    # tolerance: a peak 10 px right of the box is a hit at 15 px, a miss at 5 px
    assert explanation.pointing_hit(blob(50, 20), [BOX], tolerance=15) is True
    assert explanation.pointing_hit(blob(50, 20), [BOX], tolerance=5) is False
    # no boxes: not scored, never a silent miss
    assert explanation.pointing_hit(inside, []) is None and explanation.energy_in_boxes(inside, []) is None


@pytest.mark.parametrize("policy", ["stretch", "pad"])
def test_cam_maps_back_to_original_coordinates(policy):
    w, h, size = 256, 125, 64
    box = (150.0, 30.0, 200.0, 90.0)
    g = resize_geometry(w, h, size, policy)
    x0, y0, x1, y1 = g.to_input(box)
    cam = np.zeros((size, size))
    cam[int(np.ceil(y0)) : int(np.floor(y1)), int(np.ceil(x0)) : int(np.floor(x1))] = 1.0
    out = explanation.cam_to_original(cam, w, h, policy)
    assert out.shape == (h, w)
    assert explanation.energy_in_boxes(out, [box]) > 0.9
    assert explanation.pointing_hit(out, [box], tolerance=0) is True
    other = (10.0, 10.0, 60.0, 60.0)
    assert explanation.energy_in_boxes(out, [other]) < 0.02


def test_summary_counts_images_without_boxes():
    import pandas as pd

    per = pd.DataFrame(
        [
            {"class": "a", "correct": True, "n_boxes": 1, "hit": True, "energy": 0.8, "box_fraction": 0.1},
            {"class": "a", "correct": False, "n_boxes": 2, "hit": False, "energy": 0.2, "box_fraction": 0.3},
            {"class": "b", "correct": True, "n_boxes": 0, "hit": None, "energy": None, "box_fraction": None},
        ]
    )
    s = explanation.localization_summary(per).set_index("class")
    assert s.loc["a", "pointing"] == 0.5 and s.loc["a", "energy"] == pytest.approx(0.5)
    assert s.loc["b", "no_boxes"] == 1 and np.isnan(s.loc["b", "pointing"])
    assert s.loc["overall", "images"] == 3 and s.loc["overall", "no_boxes"] == 1


@pytest.fixture(scope="module")
@trains
def trained(synth_root, tmp_path_factory):
    """MobileNet with real ImageNet weights, head trained on 12 synthetic images per class at 224 px."""
    import os

    from conftest import WEIGHTS

    from gc10lib import data
    from gc10lib.steps import train

    if not WEIGHTS.is_dir():
        pytest.skip(f"{WEIGHTS} is absent: a meaningful CAM needs real ImageNet weights (CI always has them)")
    os.environ["GC10_WEIGHTS_DIR"] = str(WEIGHTS)
    base = tmp_path_factory.mktemp("cam")
    ds = data.discover(synth_root)
    split = data.write_split(
        data.split_dataset(ds, (0.5, 0.25, 0.25), seed=0),
        base / "split.csv",
        synth_root,
        classes=ds.classes,
        seed=0,
        fractions=(0.5, 0.25, 0.25),
    )
    cfg = train.TrainConfig(
        backbone="mobilenet",
        img_size=224,
        weights="imagenet",
        epochs_head=30,
        epochs_finetune=0,
        augment=False,
        verbose=0,
        seed=0,
    )
    return train.run(cfg, synth_root, base / "m", split_csv=split)["model_path"], split


def test_trained_model_cams_point_into_the_planted_box(trained, synth_root):
    """Stated threshold: the CAM peak within 15 px of the box on at least half of the 30 test images,
    and more CAM energy in the boxes than a uniform map would put there."""
    model, split = trained
    per, cams = explanation.explain_split(model, synth_root, split, keep_cams=5)
    assert len(per) == 30 and (per.n_boxes > 0).all()
    for cam in cams.values():
        assert cam.shape == (125, 256) and cam.min() >= 0.0 and cam.max() == pytest.approx(1.0)  # scaled to its peak
    share = float(per.hit.astype(float).mean())
    print(
        f"pointing game on {len(per)} synthetic test images: {share:.2f}; "
        f"energy {per.energy.mean():.2f} vs box share {per.box_fraction.mean():.2f}"
    )
    assert share >= 0.5
    assert per.energy.mean() > 2 * per.box_fraction.mean()


def test_ensemble_cam_and_grid(smoke_models, smoke_data, tmp_path):
    from gc10lib import ensembles, plots
    from gc10lib.backbones import load_model

    out, _ = smoke_models
    root, split = smoke_data
    members = [load_model(out / n / "model.keras") for n in ("mobilenet", "vgg19")]
    path = tmp_path / "ens.keras"
    ensembles.build_ensemble(members, "mean").save(path)
    per, cams = explanation.explain_split(path, root, split, per_class=1, keep_cams=1, target="predicted")
    assert len(per) == 10 and set(per.columns) >= {"hit", "energy", "n_boxes", "correct"}
    assert all(c.shape == (125, 256) and 0.0 <= c.min() <= c.max() <= 1.0 for c in cams.values())
    fig = plots.cam_grid(per, cams)
    assert len(fig.axes) == 20
