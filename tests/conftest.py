"""Shared fixtures. Tests that need ../shared skip only when that folder is absent, and say so."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GC10_SHARED", REPO.parent / "shared"))
SAMPLE = SHARED / "data" / "gc10-sample"
LABELS = SHARED / "data" / "gc10-labels"
NEU = SHARED / "data" / "neu-det"
XSDD = SHARED / "data" / "x-sdd"
WEIGHTS = SHARED / "weights"

_skip_shared = pytest.mark.skipif(
    not (SHARED / "data").is_dir(),
    reason=f"{SHARED} is absent: real-data tests need the ../shared folder (CI always has it)",
)
_skip_weights = pytest.mark.skipif(
    not WEIGHTS.is_dir(),
    reason=f"{WEIGHTS} is absent: real ImageNet weights come from ../shared/weights (CI always has it)",
)


def fresh_process_gap(model_path: Path, paths: list[str], expected: Path) -> float:
    """Reload ``model_path`` with ``keras.saving.load_model`` in safe mode in a new Python process,
    predict ``paths`` there and return the largest difference from the probabilities in ``expected``."""
    code = (
        "import json, keras, numpy as np\n"
        "from gc10lib.predict import predict_proba\n"
        f"m = keras.saving.load_model({str(model_path)!r}, safe_mode=True)\n"
        f"p = predict_proba(m, {list(paths)!r})\n"
        f"print(json.dumps(float(np.abs(p - np.load({str(expected)!r})).max())))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def needs_shared(test):
    """Marks a test ``shared`` and skips it, saying so, only where ../shared/data is absent."""
    return pytest.mark.shared(_skip_shared(test))


def needs_weights(test):
    """Marks a test ``shared`` and skips it, saying so, only where ../shared/weights is absent."""
    return pytest.mark.shared(_skip_weights(test))


#: Fixtures that train or export models: every test using one is in the ``slow`` tier. Under
#: pytest-xdist (``make test`` runs two workers with ``--dist loadgroup``) the tests sharing one
#: such fixture run on one worker, so each expensive fixture is built once.
SLOW_FIXTURES = {
    "smoke_models": "smoke_models",
    "members": "smoke_models",
    "demo_run": "demo_run",
    "exported": "exported",
    "pad_model": "pad_model",
    "trained": "trained",
    "distilled": "distilled",
}


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the xdist_group marks
def pytest_collection_modifyitems(config, items):
    for item in items:
        used = [SLOW_FIXTURES[f] for f in getattr(item, "fixturenames", ()) if f in SLOW_FIXTURES]
        if used:
            item.add_marker(pytest.mark.slow)
            item.add_marker(pytest.mark.xdist_group(sorted(used)[0]))


os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Every test session gets its own gc10lib cache unless CI points GC10_CACHE_DIR elsewhere."""
    if "GC10_CACHE_DIR" not in os.environ:
        os.environ["GC10_CACHE_DIR"] = str(tmp_path_factory.mktemp("gc10cache"))
    yield


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """A small synthetic dataset in the Kaggle layout (12 images per class)."""
    from gc10lib.synth import make_synthetic

    return make_synthetic(tmp_path_factory.mktemp("synth") / "kaggle", per_class=12, seed=3)


@pytest.fixture()
def synth_copy(synth_root, tmp_path) -> Path:
    """A writable copy of the synthetic dataset, for tests that plant bad files."""
    dst = tmp_path / "data"
    shutil.copytree(synth_root, dst)
    return dst


@pytest.fixture(scope="session")
def smoke_data(tmp_path_factory):
    """A tiny synthetic dataset (6 per class) and its split manifest."""
    from gc10lib import data
    from gc10lib.synth import make_synthetic

    base = tmp_path_factory.mktemp("smoke")
    root = make_synthetic(base / "data", per_class=6, seed=11)
    ds = data.discover(root)
    man = data.split_dataset(ds, (0.5, 0.25, 0.25), seed=0)
    split = data.write_split(man, base / "split.csv", root, classes=ds.classes, seed=0, fractions=(0.5, 0.25, 0.25))
    return root, split


@pytest.fixture(scope="session")
def smoke_models(smoke_data, tmp_path_factory):
    """All six backbones trained at smoke size (75 px, random init, 1+1 epochs)."""
    from gc10lib import training
    from gc10lib.backbones import ORIGINAL

    root, split = smoke_data
    out = tmp_path_factory.mktemp("smoke_models")
    results = {}
    for name in ORIGINAL:  # the newer registry entries are trained in test_backbones.py
        cfg = training.TrainConfig(
            backbone=name,
            img_size=75,
            weights=None,
            epochs_head=2,
            epochs_finetune=1,
            finetune_fraction=0.05,
            batch_size=16,
            aug_views=2,
            verbose=0,
            seed=3,
        )
        results[name] = training.train_backbone(cfg, root, out / name, split_csv=split)
    return out, results
