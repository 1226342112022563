"""RunFolder: one reader and writer of run folders; a folder that is not a run is one clear line."""

from __future__ import annotations

import json
import re

import pytest

from gc10lib import cli
from gc10lib.runfolder import RunFolder, RunFolderError


def _run(tmp_path, manifest) -> RunFolder:
    run = RunFolder(tmp_path / "runs" / "r")
    run.dir.mkdir(parents=True)
    if manifest is not None:
        run.manifest_path.write_text(manifest if isinstance(manifest, str) else json.dumps(manifest))
    return run


def test_paths_inputs_and_manifest_round_trip(tmp_path):
    run = _run(tmp_path, {"config": {"data_dir": "/data", "seed": 3}, "steps": {}})
    assert run.split_csv == run.dir / "split.csv" and run.step_dir("03_ensemble") == run.dir / "steps" / "03_ensemble"
    assert run.inputs() == ("/data", str(run.split_csv))
    assert run.inputs("/other", "s.csv") == ("/other", "s.csv")
    run.manifest["steps"]["01_eda"] = {"status": "done"}
    run.save()
    assert RunFolder(run.dir).manifest["steps"]["01_eda"]["status"] == "done"
    assert RunFolder(run.dir).models() == []  # no step has saved a model yet
    with pytest.raises(Exception, match="not a gc10 run folder with run.json"):
        RunFolder(tmp_path / "nowhere").inputs()


def test_earlier_attempts_are_kept_aside_with_one_number(tmp_path):
    run = _run(tmp_path, {"config": {}})
    run.step_dir("02_x").mkdir(parents=True)
    run.log("02_x").parent.mkdir()
    run.log("02_x").write_text("first")
    run.keep_aside("02_x")
    run.log("02_x").write_text("second")
    run.keep_aside("02_x")
    assert (run.dir / "logs" / "02_x.failed-1.log").read_text() == "first"
    assert (run.dir / "logs" / "02_x.failed-2.log").read_text() == "second"
    assert (run.dir / "steps" / "02_x.failed-1").is_dir() and not run.step_dir("02_x").exists()


@pytest.mark.parametrize(
    ("manifest", "problem"),
    [
        ("{}", "has no 'config' mapping"),
        ("{not json", "cannot be read (JSONDecodeError)"),
        ("[1, 2]", "holds a list, not a JSON object"),
        ('{"config": {}, "steps": []}', "'steps' is not a mapping"),
    ],
)
def test_a_run_json_that_is_not_a_run_is_one_line(tmp_path, capsys, manifest, problem):
    run = _run(tmp_path, manifest)
    with pytest.raises(RunFolderError, match=re.escape(problem)):
        _ = run.manifest
    assert cli.main(["run", "--resume", "--name", "r", "--runs-root", str(run.dir.parent)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and problem in err[0] and "start a new one with another --name" in err[0], err
    assert cli.main(["ensemble", "--model", str(run.dir)]) == 2
    assert problem in capsys.readouterr().err
    assert run.manifest_path.read_text() == manifest  # never rewritten
