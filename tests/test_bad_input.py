"""Bad input never loses data, never shows a traceback, never passes silently (one test per case)."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from gc10lib import cli, data, pipeline
from gc10lib.backbones import build_classifier
from gc10lib.classes import GC10_CLASSES
from gc10lib.errors import Gc10Error, InputError, SkippedImageWarning
from gc10lib.inference import KerasPredictor, evaluate_model
from gc10lib.inputs import ImageCache, load_rgb
from gc10lib.settings import new_output_dir


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A GC10-class classifier at 32 px (random weights): enough to run evaluate and predict."""
    model, _ = build_classifier("mobilenet", GC10_CLASSES, img_size=32, weights=None, seed=0)
    path = tmp_path_factory.mktemp("tiny") / "tiny.keras"
    model.save(path)
    return path


def _png_claiming(path: Path, width: int, height: int) -> None:
    """A 1x1 PNG whose header claims ``width x height`` pixels (CRC fixed, so only the size is wrong)."""
    Image.new("L", (1, 1)).save(path)
    raw = bytearray(path.read_bytes())
    ihdr = raw[12:29]  # b"IHDR" + 13 bytes of fields
    ihdr[4:12] = struct.pack(">II", width, height)
    raw[12:29] = ihdr
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    path.write_bytes(bytes(raw))


# --------------------------------------------------------------------------- 1. data loss


def test_split_never_overwrites_its_sidecar_or_writes_the_manifest_over_it(synth_root, tmp_path, capsys):
    (tmp_path / "keep.json").write_text('{"mine": 1}')
    assert cli.main(["data", "split", "--data", str(synth_root), "--out", str(tmp_path / "keep.csv")]) == 2
    assert "keep.json: already exists" in capsys.readouterr().err
    assert (tmp_path / "keep.json").read_text() == '{"mine": 1}' and not (tmp_path / "keep.csv").exists()
    assert cli.main(["data", "split", "--data", str(synth_root), "--out", str(tmp_path / "man.json")]) == 2
    assert "choose a .csv name" in capsys.readouterr().err and not (tmp_path / "man.json").exists()


# --------------------------------------------------------------------------- 2. Ctrl-C and --resume


def test_ctrl_c_says_how_to_resume_and_resume_keeps_the_interrupted_attempt(tmp_path, monkeypatch, capsys):
    calls = []

    def fake_execute(src, out, parameters, stdout_file, **_kw):
        calls.append(Path(out).stem)
        stdout_file.write(f"attempt {len(calls)} of {Path(out).stem}\n")
        Path(out).write_text("{}")
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(pipeline.pm, "execute_notebook", fake_execute)
    base = ["--config", "demo", "-p", "backbones", "[mobilenet]", "-p", "synthetic_per_class", "6"]
    args = ["run", *base, "--name", "r", "--runs-root", str(tmp_path)]
    assert cli.main(args) == 130
    err = capsys.readouterr().err
    assert "interrupted in step 02_finetune_mobilenet; resume with: gc10 run --resume --name r" in err
    assert "Traceback" not in err
    run = tmp_path / "r"
    assert json.loads((run / "run.json").read_text())["steps"]["02_finetune_mobilenet"]["error"] == "interrupted"
    assert cli.main(["run", "--resume", "--name", "r", "--runs-root", str(tmp_path)]) == 0
    kept = run / "logs" / "02_finetune_mobilenet.failed-1.log"
    assert kept.read_text() == "attempt 2 of 02_finetune_mobilenet\n"  # the interrupted attempt's log, untouched
    assert (run / "02_finetune_mobilenet.failed-1.ipynb").is_file()
    assert (run / "logs" / "02_finetune_mobilenet.log").read_text().startswith("attempt 3")
    assert calls.count("01_eda") == 1  # finished steps are not run again


# --------------------------------------------------------------------------- silent wrong results


def test_16_bit_grayscale_is_scaled_not_saturated(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 256).round().astype(np.uint16), (8, 1))
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    assert Image.open(tmp_path / "ramp.png").mode.startswith("I")  # really 16 bit on disk
    rgb = load_rgb(tmp_path / "ramp.png")
    assert rgb.dtype == np.uint8 and rgb.shape == (8, 256, 3)
    np.testing.assert_allclose(rgb[..., 0], ramp / 257.0, atol=0.51)
    assert (rgb == 255).mean() < 0.01  # convert("RGB") made 99.5% of these pixels 255


def test_evaluate_counts_the_images_discovery_left_out(tiny_model, synth_copy, capsys):
    (synth_copy / "images" / "images" / "crease" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.warns(SkippedImageWarning, match="broken.jpg"):
        m = evaluate_model(tiny_model, synth_copy, n_boot=0)
    assert m["n_skipped"] == 1 and m["n"] == 120
    assert cli.main(["evaluate", "--model", str(tiny_model), "--data", str(synth_copy), "--json"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["n_skipped"] == 1 and "broken.jpg" in out.err


def test_symlink_loops_are_reported_not_dropped(synth_copy):
    folder = synth_copy / "images" / "images" / "crease"
    (folder / "a.jpg").symlink_to(folder / "b.jpg")
    (folder / "b.jpg").symlink_to(folder / "a.jpg")
    with pytest.warns(SkippedImageWarning, match="symlink loop"):
        ds = data.discover(synth_copy)
    q = ds.quality[ds.quality.problem == "broken_link"]
    assert sorted(Path(f).name for f in q.file) == ["a.jpg", "b.jpg"]


def test_p_values_are_checked_against_their_type_before_anything_runs(tmp_path, capsys):
    assert cli.main(["run", "-p", "backbones", "mobilenet", "--runs-root", str(tmp_path)]) == 2
    assert "expected a list, e.g. -p backbones '[mobilenet]'" in capsys.readouterr().err
    assert cli.main(["run", "-p", "epochs_head", "[1,", "--runs-root", str(tmp_path)]) == 2
    assert "-p epochs_head '[1,': not a valid value" in capsys.readouterr().err
    assert cli.main(["run", "-p", "epochs_head", "three", "--runs-root", str(tmp_path)]) == 2
    assert "expected a number" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
    cfg = pipeline.apply_overrides(pipeline.load_config("demo"), [("data_dir", "2024"), ("seed", "7")])
    assert cfg["data_dir"] == "2024" and cfg["seed"] == 7  # a folder named 2024 stays a name


def test_a_malformed_config_file_is_named_with_the_line(tmp_path, capsys, monkeypatch):
    bad = tmp_path / "mine.yaml"
    bad.write_text("name: mine\ndescription: GC10 on a CPU: fast\nseed: 1\n")  # an unquoted ': ' in a value
    assert cli.main(["run", "--config", str(bad), "--runs-root", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: not valid YAML at line 2" in err and "quote values" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()
    monkeypatch.setattr(pipeline, "CONFIG_DIR", tmp_path)  # --list-configs still lists, and says which is broken
    assert pipeline.list_configs() == {
        "mine": f"(unreadable: {bad}: not valid YAML at line 2, column 27: "
        "mapping values are not allowed here (quote values that contain ': '))"
    }


# --------------------------------------------------------------------------- tracebacks instead of messages


def test_decompression_bomb_header_is_excluded_and_named(synth_copy, tmp_path):
    bomb = synth_copy / "images" / "images" / "crease" / "bomb.png"
    _png_claiming(bomb, 50000, 50000)
    with pytest.warns(SkippedImageWarning, match="bomb.png"):
        ds = data.discover(synth_copy)
    row = ds.quality[ds.quality.file.str.endswith("bomb.png")].iloc[0]
    assert row.problem == "unreadable" and "DecompressionBomb" in row.detail
    with pytest.raises(InputError, match="bomb.png"):
        load_rgb(bomb)


def test_a_header_claiming_a_huge_image_under_the_bomb_limit_must_decode(synth_copy):
    """12000x12000 is under Pillow's bomb limit: the header alone would list it at that size."""
    fake = synth_copy / "images" / "images" / "crease" / "huge.png"
    _png_claiming(fake, 12000, 12000)
    with pytest.warns(SkippedImageWarning, match="huge.png"):
        ds = data.discover(synth_copy)
    assert str(fake) not in set(ds.table.path)
    assert set(ds.quality[ds.quality.file == str(fake)].problem) == {"unreadable"}
    assert not (ds.table.width >= 12000).any()


def test_cache_dir_that_is_a_file_is_one_line(tiny_model, synth_root, tmp_path, monkeypatch, capsys):
    (tmp_path / "cache").write_text("a file")
    monkeypatch.setenv("GC10_CACHE_DIR", str(tmp_path / "cache"))
    assert cli.main(["evaluate", "--model", str(tiny_model), "--data", str(synth_root)]) == 2  # predict caches nothing
    err = capsys.readouterr().err
    assert "cache" in err and "is a file, expected a folder" in err and "Traceback" not in err


def test_runs_root_that_is_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "runs").write_text("a file")
    args = ["run", "-p", "synthetic_per_class", "6", "--runs-root", str(tmp_path / "runs")]
    assert cli.main(args) == 2
    assert f"{tmp_path / 'runs'}: is a file, expected a folder" in capsys.readouterr().err


def test_permission_errors_name_the_path(tmp_path, monkeypatch, capsys):
    """Read-only folders cannot be made here (the tests may run as root), so the OS error is planted."""

    def denied(self, *a, **k):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", denied)
    with pytest.raises(Gc10Error, match="cannot create the folder for the results .Permission denied"):
        new_output_dir(tmp_path / "out")
    monkeypatch.undo()

    def unreadable(*_a, **_k):
        raise PermissionError(13, "Permission denied", "/data/locked")

    monkeypatch.setattr(data, "discover", unreadable)
    assert cli.main(["data", "summary", "--data", "/data/locked"]) == 2
    assert capsys.readouterr().err.strip() == "gc10: error: /data/locked: Permission denied"


def test_corrupt_cache_entries_are_rebuilt_not_trusted(synth_root, tmp_path):
    image = next((synth_root / "images" / "images" / "crease").iterdir())
    cache = ImageCache(32, cache_dir=tmp_path)
    entry = Path(cache.ensure_one(image))
    expected = entry.read_bytes()
    for damage in (b"", expected[: len(expected) // 2]):  # zero bytes; cut off half-way
        entry.write_bytes(damage)
        assert cache.ensure_one(image) == str(entry)
        assert entry.read_bytes() == expected
    assert cache.misses == 3 and cache.load([image]).shape == (1, 32, 32, 3)


def test_non_numeric_voc_box_goes_to_the_quality_table(synth_copy):
    xml = synth_copy / "label" / "label" / "syn_04_00004.xml"
    xml.write_text(xml.read_text().replace("<xmin>", "<xmin>abc", 1))
    ds = data.discover(synth_copy)
    row = ds.quality[ds.quality.file == str(xml)].iloc[0]
    assert row.problem == "bad_xml" and "syn_04_00004.xml: <xmin> is not a number" in row.detail
    assert len(ds.table) == 120  # the image stays; only its boxes are unknown


@pytest.mark.parametrize(
    ("box", "problem"),
    [
        ((30, 10, 20, 40), "has no positive width and height"),  # xmax < xmin
        ((10, 30, 40, 30), "has no positive width and height"),
        ((-50, 10, 40, 40), "lies outside"),
        ((10, 10, 5000, 40), "lies outside"),
    ],
)
def test_impossible_voc_boxes_are_quality_rows_and_dropped(synth_copy, box, problem):
    import re

    xml = synth_copy / "label" / "label" / "syn_04_00004.xml"
    text = xml.read_text()
    for key, value in zip(("xmin", "ymin", "xmax", "ymax"), box, strict=True):
        text = re.sub(rf"<{key}>\d+</{key}>", f"<{key}>{value}</{key}>", text, count=1)
    xml.write_text(text)
    ds = data.discover(synth_copy)
    rows = ds.quality[(ds.quality.file == str(xml)) & (ds.quality.problem == "bad_box")]
    assert len(rows) == 1 and problem in rows.detail.iloc[0]
    boxes = data.box_table(ds)
    assert boxes.rel_area.between(0, 1).all() and (boxes.box_w > 0).all()


# --------------------------------------------------------------------------- stuck state


def test_a_run_that_fails_in_data_preparation_leaves_no_folder(tmp_path, capsys):
    args = ["run", "-p", "data_dir", str(tmp_path / "missing"), "--name", "s", "--runs-root", str(tmp_path / "runs")]
    assert cli.main(args) == 2
    assert "no such folder" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "s").exists()
    (tmp_path / "runs" / "t").mkdir(parents=True)  # what older versions left behind
    assert cli.main([*args[:-4], "--name", "t", "--runs-root", str(tmp_path / "runs")]) == 2
    assert "holds no run.json" in capsys.readouterr().err


# --------------------------------------------------------------------------- smaller


def test_predict_checks_out_before_inference(tiny_model, synth_root, tmp_path, monkeypatch, capsys):
    import gc10lib.inference

    (tmp_path / "p.csv").write_text("mine")
    monkeypatch.setattr(gc10lib.inference, "predict_files", lambda *a, **k: pytest.fail("inference ran"))
    assert cli.main(["predict", "--model", str(tiny_model), str(synth_root), "--out", str(tmp_path / "p.csv")]) == 2
    assert "p.csv: already exists" in capsys.readouterr().err and (tmp_path / "p.csv").read_text() == "mine"


def test_corrupt_keras_file_and_foreign_model_are_named(tmp_path):
    (tmp_path / "cut.keras").write_bytes(b"PK\x03\x04 cut off")
    with pytest.raises(InputError, match="cut.keras: not a .keras archive"):
        KerasPredictor(tmp_path / "cut.keras")
    plain = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(), keras.layers.Dense(2)])
    plain.save(tmp_path / "plain.keras")
    with pytest.raises(InputError, match=r"plain.keras: .*carries no class names"):
        KerasPredictor(tmp_path / "plain.keras")


def test_alpha_channel_is_noted_in_the_quality_table(synth_copy):
    rgba = synth_copy / "images" / "images" / "crease" / "rgba.png"
    Image.new("RGBA", (64, 32), (10, 20, 30, 128)).save(rgba)
    ds = data.discover(synth_copy)
    row = ds.quality[ds.quality.file == str(rgba)].iloc[0]
    assert row.problem == "alpha_dropped" and str(rgba) in set(ds.table.path)


@pytest.mark.slow
def test_a_real_ctrl_c_prints_one_line_and_no_kernel_traceback(tmp_path):
    """SIGINT to the whole process group, as a terminal's Ctrl-C does: the kernel's own ZMQ
    traceback and TensorFlow's start-up lines go to the step log, the terminal gets one line."""
    import os
    import signal
    import subprocess
    import sys
    import time

    args = ["run", "--config", "demo", "-p", "backbones", "[mobilenet]", "-p", "synthetic_per_class", "6"]
    args += ["-p", "img_size", "48", "--name", "c", "--runs-root", str(tmp_path)]
    p = subprocess.Popen(
        [sys.executable, "-m", "gc10lib.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    log = tmp_path / "c" / "logs" / "02_finetune_mobilenet.log"
    deadline = time.time() + 240
    while not (log.is_file() and log.stat().st_size > 0) and time.time() < deadline:  # the training step runs
        time.sleep(1)
    time.sleep(3)
    os.killpg(p.pid, signal.SIGINT)
    _, err = p.communicate(timeout=240)
    assert p.returncode == 130, err[-2000:]
    assert err.strip() == "gc10: interrupted in step 02_finetune_mobilenet; resume with: gc10 run --resume --name c"


def test_a_truncated_jpeg_and_png_are_quality_rows_and_left_out(synth_copy):
    """The data check finds what training would stop on: a file cut off before its end marker."""
    folder = synth_copy / "images" / "images" / "crease"
    jpg = sorted(folder.glob("*.jpg"))[0]
    jpg.write_bytes(jpg.read_bytes()[: len(jpg.read_bytes()) // 2])
    png = folder / "cut.png"
    Image.new("RGB", (64, 64), (90, 90, 90)).save(png)
    png.write_bytes(png.read_bytes()[:-12])
    with pytest.warns(SkippedImageWarning):
        ds = data.discover(synth_copy)
    bad = ds.quality[ds.quality.problem == "unreadable"]
    assert set(bad.file) == {str(jpg), str(png)} and bad.detail.str.contains("truncated").all()
    assert str(jpg) not in set(ds.table.path) and str(png) not in set(ds.table.path)


def test_a_float_tiff_is_scaled_and_noted_not_black(synth_copy, tmp_path):
    folder = synth_copy / "images" / "images" / "crease"
    tif = folder / "float.tif"
    ramp = np.tile(np.linspace(0.0, 1.0, 32, dtype=np.float32), (32, 1))
    Image.fromarray(ramp, mode="F").save(tif)
    rgb = load_rgb(tif)
    assert rgb.dtype == np.uint8 and rgb.max() == 255 and rgb.min() == 0 and rgb[0, 16, 0] in (131, 132)
    ds = data.discover(synth_copy)
    assert "float_pixels" in set(ds.quality[ds.quality.file == str(tif)].problem)


def test_cli_numbers_that_cannot_work_are_one_line(synth_root, tmp_path, capsys, tiny_model):
    assert cli.main(["data", "synth", str(tmp_path / "s"), "--per-class", "0"]) == 2
    assert "--per-class: must be >= 3, got 0" in capsys.readouterr().err and not (tmp_path / "s").exists()
    assert cli.main(["data", "split", "--data", str(synth_root), "--out", str(tmp_path / "x.csv"), "--seed", "-1"]) == 2
    assert "--seed: must be >= 0, got -1" in capsys.readouterr().err and not (tmp_path / "x.csv").exists()
    assert (
        cli.main(
            [
                "export",
                "--model",
                str(tiny_model),
                "--variant",
                "int8",
                "--calibration",
                "-5",
                "--out",
                str(tmp_path / "m.tflite"),
            ]
        )
        == 2
    )
    assert "--calibration -5: the number of calibration images must be at least 1" in capsys.readouterr().err
    image = next((synth_root / "images" / "images" / "crease").iterdir())
    out = tmp_path / "no" / "such" / "p.csv"
    assert cli.main(["predict", "--model", str(tiny_model), str(image), "--out", str(out)]) == 2
    assert "does not exist; create it first" in capsys.readouterr().err


def test_a_folder_named_like_a_model_and_a_broken_tflite_sidecar_are_named(tmp_path, capsys, synth_root, tiny_model):
    folder = tmp_path / "x.keras"
    folder.mkdir()
    image = next((synth_root / "images" / "images" / "crease").iterdir())
    assert cli.main(["predict", "--model", str(folder), str(image)]) == 2
    assert "x.keras: is a folder, not a model file" in capsys.readouterr().err
    lite = tmp_path / "m.tflite"
    lite.write_bytes(b"\0" * 64)
    for text, problem in (
        ("{oops", "sidecar is not valid JSON"),
        ("", "sidecar is not valid JSON"),
        ('{"size": 3}', "no 'classes' list"),
    ):
        (tmp_path / "m.tflite.json").write_text(text)
        assert cli.main(["predict", "--model", str(lite), str(image)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and problem in err[0], err
