"""The gc10 command line on real and synthetic data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import NEU, REPO, SAMPLE, needs_shared

from gc10lib.cli import main

GC10 = [sys.executable, "-m", "gc10lib.cli"]


def run_cli(*args: str, env: dict | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*GC10, *args], capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=timeout
    )


@needs_shared
def test_summary_json_real_sample(capsys):
    assert main(["data", "summary", "--data", str(SAMPLE), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["layout"] == "kaggle" and s["n_images"] == 18 and s["n_classes"] == 7
    assert s["boxes"]["n_boxes"] > 0


@needs_shared
def test_summary_json_neu(capsys):
    assert main(["data", "summary", "--data", str(NEU), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["n_images"] == 1499 and s["n_classes"] == 6


def test_summary_text_and_quality(synth_copy, capsys):
    (synth_copy / "label" / "label" / "syn_01_00001.xml").unlink()
    assert main(["data", "summary", "--data", str(synth_copy)]) == 0
    out = capsys.readouterr().out
    assert "120 in 10 classes" in out and "no_xml" in out and "syn_01_00001.jpg" in out


def test_split_and_synth_cli(tmp_path, capsys):
    assert main(["data", "synth", str(tmp_path / "s"), "--per-class", "5", "--seed", "1"]) == 0
    assert (
        main(["data", "split", "--data", str(tmp_path / "s"), "--out", str(tmp_path / "split.csv"), "--seed", "3"]) == 0
    )
    m = pd.read_csv(tmp_path / "split.csv")
    assert len(m) == 50 and set(m.subset) == {"train", "val", "test"}
    assert main(["data", "split", "--data", str(tmp_path / "s"), "--out", str(tmp_path / "split.csv")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["data", "synth", str(tmp_path / "s")]) == 2  # never writes into a non-empty folder


def test_bad_path_is_clear_error():
    r = run_cli("data", "summary", "--data", "/definitely/not/here")
    assert r.returncode == 2
    assert "no such folder" in r.stderr and "Traceback" not in r.stderr


def test_download_offline_is_one_clear_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    """No route to Kaggle: the error says so at once, with the manual steps, before anything is written."""
    from gc10lib import download

    monkeypatch.setattr(download, "_reachable", lambda *a, **k: "gaierror: Name or service not known")
    assert main(["data", "download", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "Kaggle is not reachable" in err and "download the zip by hand" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
    assert download._reachable("127.0.0.1", 9, timeout=2) is not None  # the real check answers quickly


def test_download_uses_kagglehub_without_a_token(tmp_path, monkeypatch):
    """GC10 is public: kagglehub fetches it with no login, and the kaggle package is not needed."""
    import kagglehub

    from gc10lib import download

    seen = {}

    def fake_download(handle, output_dir=None, **_kw):
        seen.update(handle=handle, output_dir=output_dir)
        (Path(output_dir) / "images" / "images").mkdir(parents=True)
        return output_dir

    monkeypatch.setattr(download, "_reachable", lambda *a, **k: None)
    monkeypatch.setattr(kagglehub, "dataset_download", fake_download)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "no-token"))
    for var in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    out = download.download_gc10(tmp_path / "gc10")
    assert seen == {"handle": download.KAGGLE_DATASET, "output_dir": str(tmp_path / "gc10")}
    assert (out / "images" / "images").is_dir()


def test_download_without_kagglehub_or_token_says_what_to_do(tmp_path, monkeypatch):
    from gc10lib import download

    monkeypatch.setattr(download, "_reachable", lambda *a, **k: None)
    monkeypatch.setattr(download, "_with_kagglehub", lambda *a: "kagglehub failed (HTTPError: 503)")
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "no-token"))
    for var in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(download.DownloadError, match=r"kaggle.json.*kagglehub failed \(HTTPError: 503\)"):
        download.download_gc10(tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_download_refuses_non_empty(tmp_path):
    from gc10lib import download

    (tmp_path / "x").write_text("keep me")
    with pytest.raises(download.DownloadError, match="not empty"):
        download.download_gc10(tmp_path)
    assert (tmp_path / "x").read_text() == "keep me"


def test_entry_point_installed():
    exe = Path(sys.executable).with_name("gc10")
    assert exe.is_file(), "the gc10 console script is installed with the package"


@pytest.mark.slow
def test_train_verb_and_its_parameters(smoke_data, tmp_path, capsys):
    root, split = smoke_data
    args = ["train", "--backbone", "mobilenet", "--data", str(root), "--split-csv", str(split)]
    small = ["-p", "img_size", "48", "-p", "weights", "null", "-p", "epochs_head", "1", "-p", "epochs_finetune", "0"]
    assert main([*args, "--out", str(tmp_path / "m"), *small]) == 0
    m = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert m["img_size"] == 48 and m["weights_source"] == "random" and m["config"]["epochs_finetune"] == 0
    assert main([*args, "--out", str(tmp_path / "n"), "-p", "epochs", "3"]) == 2
    assert "unknown training parameter 'epochs'" in capsys.readouterr().err
    assert not (tmp_path / "n").exists()


def test_a_bug_shows_its_traceback_bad_input_does_not(monkeypatch, capsys):
    """Only gc10lib's own errors become one line; anything else is a bug and propagates."""
    import gc10lib.data

    def broken(*_a, **_k):
        raise KeyError("a bug")

    monkeypatch.setattr(gc10lib.data, "discover", broken)
    with pytest.raises(KeyError):
        main(["data", "summary", "--data", "."])
    monkeypatch.undo()
    assert main(["data", "summary", "--data", "/no/such/folder"]) == 2
    assert "no such folder" in capsys.readouterr().err


def _subparsers(parser):
    for action in parser._actions:
        if isinstance(action, __import__("argparse")._SubParsersAction):
            for name, sub in action.choices.items():
                yield name, sub
                yield from ((f"{name} {n}", s) for n, s in _subparsers(sub))


def test_every_argument_has_help_and_every_command_an_example():
    from gc10lib.cli import build_parser

    commands = dict(_subparsers(build_parser()))
    assert {"run", "train", "ensemble", "quantize", "explain", "data split", "export"} <= set(commands)
    for name, sub in commands.items():
        if name == "data":
            continue
        assert sub.epilog and "examples:" in sub.epilog, name
        missing = [a.dest for a in sub._actions if a.dest != "help" and not a.help]
        assert not missing, (name, missing)


def test_version_list_configs_and_dry_run(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("gc10lib ")
    assert main(["run", "--list-configs"]) == 0
    out = capsys.readouterr().out
    assert "demo" in out and "elpv" in out and "Synthetic GC10-like data" in out
    listed = dict(line.split(None, 1) for line in out.strip().splitlines() if len(line.split(None, 1)) == 2)
    configs = sorted(p.stem for p in (REPO / "configs").glob("*.yaml"))
    assert sorted(listed) == configs, "every config needs a one-line description"
    assert main(["run", "--dry-run", "-p", "backbones", "[mobilenet]", "--runs-root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "02_finetune_mobilenet (02_finetune.ipynb)" in out and "    backbone = 'mobilenet'" in out
    assert "05_explain (05_explain.ipynb)" in out and not any(tmp_path.iterdir())  # nothing ran, nothing written


def test_one_vocabulary_model_data_and_variants_from_the_registries():
    """A model is --model, data is --data, LiteRT variants are --variant(s); the choices come from the
    registries, so the help cannot go stale."""
    from gc10lib.backbones import REGISTRY
    from gc10lib.cli import build_parser
    from gc10lib.config import VARIANTS

    commands = dict(_subparsers(build_parser()))
    for name in ("ensemble", "quantize", "distill", "explain", "evaluate", "predict", "export"):
        assert "--model" in commands[name]._option_string_actions, name
    for name in (
        "ensemble",
        "quantize",
        "distill",
        "explain",
        "evaluate",
        "train",
        "run",
        "data summary",
        "data split",
    ):
        assert "--data" in commands[name]._option_string_actions, name
    backbone = commands["train"]._option_string_actions["--backbone"]
    assert set(backbone.choices) == set(REGISTRY) and all(b in backbone.help for b in REGISTRY)
    assert tuple(commands["export"]._option_string_actions["--variant"].choices) == VARIANTS
    assert tuple(commands["quantize"]._option_string_actions["--variants"].choices) == VARIANTS
    assert "no login" in commands["data download"].description


def test_old_spellings_still_work_with_a_note(synth_root, tmp_path, capsys):
    assert main(["data", "summary", str(synth_root), "--json"]) == 0  # the positional dataset
    captured = capsys.readouterr()
    assert '"n_images"' in captured.out and "deprecated; use --data PATH" in captured.err
    run = tmp_path / "not-a-run"
    run.mkdir()
    assert main(["ensemble", str(run)]) == 2  # the positional run folder is still read
    err = capsys.readouterr().err
    assert "deprecated; use --model RUN" in err and "not a gc10 run folder" in err
    assert main(["ensemble"]) == 2
    assert "ensemble: --model RUN is required" in capsys.readouterr().err


def test_predict_on_an_empty_folder_is_one_line_and_fails(tmp_path, capsys):
    from gc10lib.backbones import build_classifier, save_model

    model, _ = build_classifier("mobilenet", ["a", "b"], 32, None, seed=0)
    path = save_model(model, tmp_path / "m.keras")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    assert main(["predict", "--model", str(path), str(empty)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no image files found" in err[0]


def test_predict_writes_nothing_to_the_cache_and_cache_reports_and_clears(synth_root, tmp_path, monkeypatch, capsys):
    from gc10lib import cache
    from gc10lib.backbones import build_classifier, save_model

    monkeypatch.setenv("GC10_CACHE_DIR", str(tmp_path / "cache"))
    model, _ = build_classifier("mobilenet", ["a", "b"], 32, None, seed=0)
    path = save_model(model, tmp_path / "m.keras")
    images = synth_root / "images" / "images"
    assert main(["predict", "--model", str(path), str(images), "--batch-size", "7", "--top-k", "1"]) == 0
    rows = capsys.readouterr().out.strip().splitlines()
    assert len(rows) == 1 + len(list(images.rglob("*.jpg")))  # header + one row per image, across batches
    assert cache.info()["bytes"] == 0  # loose images are decoded in memory
    (tmp_path / "cache" / "images" / "stretch_32").mkdir(parents=True)
    (tmp_path / "cache" / "images" / "stretch_32" / "x.png").write_bytes(b"\0" * 2048)
    assert main(["cache", "info"]) == 0
    out = capsys.readouterr().out
    assert "2.0 KiB in 1 files" in out and "images" in out
    assert main(["cache", "clear", "--part", "maps"]) == 2
    assert "no such part of the cache; present: images" in capsys.readouterr().err
    assert main(["cache", "clear"]) == 0 and "removed 2.0 KiB" in capsys.readouterr().out
    assert cache.info()["bytes"] == 0


def test_predict_names_broken_and_looping_links_instead_of_dropping_them(synth_root, tmp_path, capsys):
    from gc10lib.backbones import build_classifier, save_model

    model, _ = build_classifier("mobilenet", ["a", "b"], 32, None, seed=0)
    path = save_model(model, tmp_path / "m.keras")
    folder = tmp_path / "imgs"
    folder.mkdir()
    good = next((synth_root / "images" / "images" / "crease").glob("*.jpg"))
    (folder / "good.jpg").symlink_to(good)
    (folder / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (folder / "loop.jpg").symlink_to(folder / "loop.jpg")
    assert main(["predict", "--model", str(path), str(folder)]) == 0
    captured = capsys.readouterr()
    assert captured.out.count("good.jpg") == 1 and "gone.jpg" not in captured.out
    assert "gone.jpg: a broken or looping link" in captured.err and "loop.jpg: a broken or looping link" in captured.err
    assert main(["predict", "--model", str(path), str(folder / "gone.jpg")]) == 2
    assert "gone.jpg: a broken or looping link, not an image" in capsys.readouterr().err
