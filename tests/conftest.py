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


def fresh_process_gaps(model_paths: list[Path], paths: list[str], expected: list[Path]) -> list[float]:
    """Reload each of ``model_paths`` with ``keras.saving.load_model`` in safe mode in one new Python
    process, predict ``paths`` there and return, per model, the largest difference from the
    probabilities saved in the matching ``expected`` file."""
    code = (
        "import json, keras, numpy as np\n"
        "from gc10lib.inference import predict_proba\n"
        "gaps = []\n"
        f"for path, ref in zip({[str(m) for m in model_paths]!r}, {[str(e) for e in expected]!r}):\n"
        "    m = keras.saving.load_model(path, safe_mode=True)\n"
        f"    p = predict_proba(m, {list(map(str, paths))!r})\n"
        "    gaps.append(float(np.abs(p - np.load(ref)).max()))\n"
        "print(json.dumps(gaps))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def fresh_process_gap(model_path: Path, paths: list[str], expected: Path) -> float:
    """:func:`fresh_process_gaps` for one model."""
    return fresh_process_gaps([model_path], paths, [expected])[0]


def needs_shared(test):
    """Marks a test ``shared`` and skips it, saying so, only where ../shared/data is absent."""
    return pytest.mark.shared(_skip_shared(test))


def needs_weights(test):
    """Marks a test ``shared`` and skips it, saying so, only where ../shared/weights is absent."""
    return pytest.mark.shared(_skip_weights(test))


def trains(fixture_function):
    """Declares that a fixture trains, exports or runs a notebook: every test using it, directly or
    through another fixture, is in the ``slow`` tier. Put it under ``@pytest.fixture``."""
    fixture_function.gc10_slow = True
    return fixture_function


def _slow_fixtures(item) -> list[str]:
    """The fixtures an item uses (its whole closure) that are declared with :func:`trains`."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return []
    found = []
    for name in info.names_closure:
        for fdef in info.name2fixturedefs.get(name, ()):
            func = getattr(fdef, "func", None)
            if getattr(func, "gc10_slow", False) or getattr(getattr(func, "__wrapped__", None), "gc10_slow", False):
                found.append(name)
                break
    return found


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the xdist_group marks
def pytest_collection_modifyitems(config, items):
    """Tests using a fixture that trains are ``slow``; under pytest-xdist (``make test`` runs two workers
    with ``--dist loadgroup``) the tests sharing such a fixture run on one worker, so it is built once."""
    for item in items:
        used = _slow_fixtures(item)
        if used:
            item.add_marker(pytest.mark.slow)
            item.add_marker(pytest.mark.xdist_group(sorted(used)[0]))


class TrainedInFastTier(AssertionError):
    """A test outside the ``slow`` tier trained, exported or ran a notebook."""


@pytest.fixture(autouse=True)
def _fast_tests_do_not_train(request, monkeypatch):
    """The tiers cannot drift: a test that is not ``slow`` fails the moment it fits a model, converts one
    to LiteRT, executes a notebook or starts a whole ``gc10 run``. Mark it ``slow`` (or use a
    fixture declared with :func:`trains`)."""
    if request.node.get_closest_marker("slow") is not None:
        yield
        return
    import keras
    import papermill
    import tensorflow as tf

    def refuse(what):
        def guard(*args, **kwargs):
            raise TrainedInFastTier(f"{request.node.nodeid} {what} but is not marked slow")

        return guard

    monkeypatch.setattr(keras.Model, "fit", refuse("fits a model"))
    monkeypatch.setattr(keras.Model, "export", refuse("exports a model"))
    for make in ("from_saved_model", "from_keras_model", "from_concrete_functions"):
        monkeypatch.setattr(tf.lite.TFLiteConverter, make, refuse("converts a model to LiteRT"))
    monkeypatch.setattr(papermill, "execute_notebook", refuse("executes a notebook"))
    real_run = subprocess.run

    def whole_run(cmd) -> bool:
        words = [str(w) for w in (cmd if isinstance(cmd, (list, tuple)) else str(cmd).split())]
        return "gc10lib.cli" in words and "run" in words and "--dry-run" not in words and "--list-configs" not in words

    def run(cmd, *a, **k):
        if whole_run(cmd):
            refuse("starts a whole gc10 run")()
        return real_run(cmd, *a, **k)

    monkeypatch.setattr(subprocess, "run", run)
    yield


os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Under pytest-xdist each worker is its own TensorFlow process, and each would size its thread pools
# for every core: two workers on two cores then run four busy pools that spin against each other.
# Give each worker its share of the cores (kernels and ``gc10 run`` subprocesses inherit it).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    _share = str(max(1, (os.cpu_count() or 1) // _WORKERS))
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", _share)
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", _share)
    os.environ.setdefault("OMP_NUM_THREADS", _share)


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
@trains
def smoke_models(smoke_data, tmp_path_factory):
    """All six backbones trained at smoke size (75 px, random init, 1+1 epochs)."""
    from gc10lib.backbones import ORIGINAL
    from gc10lib.steps import train

    root, split = smoke_data
    out = tmp_path_factory.mktemp("smoke_models")
    results = {}
    for name in ORIGINAL:  # the newer registry entries are trained in test_backbones.py
        cfg = train.TrainConfig(
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
        results[name] = train.run(cfg, root, out / name, split_csv=split)
    return out, results
