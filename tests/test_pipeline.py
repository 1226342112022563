"""`gc10 run`: the demo pipeline at smoke size, run folder, parameters, resume, no overwrite."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import trains

from gc10lib import config as config_sections
from gc10lib import pipeline, records
from gc10lib.runfolder import RunFolder

SMOKE = [
    "-p",
    "backbones",
    "[mobilenet, vgg19]",
    "-p",
    "img_size",
    "48",
    "-p",
    "synthetic_per_class",
    "8",
    "-p",
    "epochs_head",
    "3",
    "-p",
    "epochs_finetune",
    "1",
    "-p",
    "quantize_variants",
    "[int8]",
    "-p",
    "quantize_models",
    "[mobilenet]",
    "-p",
    "n_representative",
    "16",
    "-p",
    "explain_per_class",
    "1",
    "-p",
    "student_epochs_finetune",
    "1",
]
# (VGG19 conversions cost minutes; ensemble export is tested in test_export.py)


def gc10_run(
    *args: str, runs_root: Path | str, timeout: int = 1800, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gc10lib.cli", "run", *args, "--runs-root", str(runs_root)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


@pytest.fixture(scope="module")
@trains
def demo_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("work")
    # a relative --runs-root, as `make run` uses: notebooks run with cwd=notebooks/, so paths must be absolute
    r = gc10_run("--config", "demo", *SMOKE, "--name", "smoke", runs_root="runs", cwd=base)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return base / "runs" / "smoke", r


def test_demo_pipeline_artefacts(demo_run):
    run, r = demo_run
    for name in (
        "01_eda.ipynb",
        "02_finetune_mobilenet.ipynb",
        "02_finetune_vgg19.ipynb",
        "03_ensemble.ipynb",
        "run.json",
        "summary.json",
        "summary.md",
        "split.csv",
        "split.json",
    ):
        assert (run / name).is_file(), name
    for step in ("02_finetune_mobilenet", "02_finetune_vgg19"):
        assert (run / "steps" / step / "model.keras").is_file()
        assert (run / "steps" / step / "curves.png").is_file()
    ens = run / "steps" / "03_ensemble" / "ensembles"
    for method in ("mean", "weighted", "stack", "select"):
        assert (ens / method / "recipe.json").is_file() and (ens / method / "metrics.json").is_file()
    chosen = json.loads((run / "steps" / "03_ensemble" / "summary_extra.json").read_text())["best_ensemble"]
    assert [p.parent.name for p in ens.glob("*/ensemble.keras")] == [chosen.removeprefix("ensemble_")]
    assert (run / "logs" / "02_finetune_mobilenet.log").stat().st_size > 0
    for f in ("quantization.csv", "quantization.md", "size_vs_accuracy.png"):
        assert (run / "steps" / "04_quantize" / f).is_file(), f
    assert (run / "steps" / "04_quantize" / "mobilenet_int8.tflite").is_file()
    assert (run / "steps" / "05_explain" / "localization.csv").is_file()
    assert len(list((run / "steps" / "05_explain").glob("cam_grid_*.png"))) == 2
    for f in ("model.keras", "metrics.json", "deployment.csv", "deployment.png", "student_int8.tflite"):
        assert (run / "steps" / "06_distill" / f).is_file(), f
    assert "[1/7] 01_eda" in r.stdout and "[7/7] 06_distill" in r.stdout and "min left" in r.stdout
    assert "log smoke/logs/02_finetune_mobilenet.log" in r.stdout  # each step line names its log
    assert "without encryption" not in r.stderr + r.stdout  # the ipykernel warning is silenced


def test_model_card(demo_run):
    run, _ = demo_run
    card = (run / "MODEL_CARD.md").read_text()
    s = json.loads((run / "summary.json").read_text())
    table = pd.DataFrame(s["models"])
    chosen = records.choose_by_validation(table, "ensemble")
    test = json.loads(next((run / "steps").glob(f"*/ensembles/{chosen.split('_', 1)[1]}/metrics.json")).read_text())[
        "test"
    ]
    assert f"**{chosen}** (ensemble)" in card and "Synthetic" in card and "Known limitations" in card
    assert f"| accuracy | {test['accuracy']:.4f} | [{test['ci95']['accuracy'][0]:.3f}" in card
    assert "| crease |" in card and "int8" in card  # per-class table and the quantized variant
    assert "## One small model (distilled)" in card and "| student " in card


def test_run_manifest(demo_run):
    run, _ = demo_run
    m = json.loads((run / "run.json").read_text())
    assert m["config"]["backbones"] == ["mobilenet", "vgg19"] and m["config"]["img_size"] == 48
    assert m["seed"] == 42 and m["versions"]["tensorflow"] and m["versions"]["keras"]
    assert m["machine"]["cpus"] >= 1 and "git_commit" in m and "git_dirty" in m
    for step in m["steps"].values():
        assert step["status"] == "done" and step["end"] >= step["start"]


def test_run_records_uncommitted_changes(tmp_path, monkeypatch):
    """A run started from an edited tree says so: ``git_commit`` alone would name other code."""
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(tmp_path)]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "code.py").write_text("a = 1\n")
    subprocess.run([*git, "add", "code.py"], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    monkeypatch.setattr(pipeline, "REPO_ROOT", tmp_path)
    commit = pipeline._git_commit()
    assert commit and len(commit) == 40 and pipeline._git_dirty() is False
    (tmp_path / "notes.txt").write_text("untracked files do not count\n")
    assert pipeline._git_dirty() is False
    (tmp_path / "code.py").write_text("a = 2\n")
    assert pipeline._git_dirty() is True
    manifest = {"git_commit": commit, "git_dirty": True}
    assert pipeline.commit_label(manifest) == f"{commit[:10]} + uncommitted changes"
    assert pipeline.commit_label({"git_commit": commit, "git_dirty": False}) == commit[:10]
    monkeypatch.setattr(pipeline, "REPO_ROOT", tmp_path / "gone")  # no such folder: unknown, not a crash
    assert pipeline._git_dirty() is None and pipeline._git_commit() is None


def test_summary_has_sane_metrics_for_every_model(demo_run):
    run, _ = demo_run
    s = json.loads((run / "summary.json").read_text())
    names = {row["model"] for row in s["models"]}
    assert names == {
        "mobilenet",
        "vgg19",
        "probe_mobilenet",
        "probe_vgg19",
        "ensemble_mean",
        "ensemble_weighted",
        "ensemble_stack",
        "ensemble_select",
        "student_mobilenet_v2",
    }
    rows = {row["model"]: row for row in s["models"]}
    for bb in ("mobilenet", "vgg19"):
        probe = rows[f"probe_{bb}"]
        assert probe["kind"] == "probe"
        below = [k for k in ("accuracy", "macro_f1") if rows[bb][f"val_{k}"] < probe[f"val_{k}"]]
        assert rows[bb]["vs_probe"] == (f"below: {', '.join(below)}" if below else "ok")
        assert rows[bb]["selected_phase"] in ("probe", "head", "finetune")
    y_test = pd.read_csv(run / "split.csv").query("subset == 'test'").label.to_numpy()
    found = {r.name: r for r in records.find_models(run / "steps")}
    for row in s["models"]:  # every row's figure is the one its saved test probabilities give
        saved = np.load(found[row["model"]].dir / "proba_test.npy")
        assert row["test_accuracy"] == pytest.approx(float(np.mean(saved.argmax(1) == y_test)))
        # a model file has its size; an ensemble kept as a recipe has none
        assert (row["size_mb"] is None) == found[row["model"]].is_recipe and (row["size_mb"] or 1) > 0
    md = (run / "summary.md").read_text()
    assert "ensemble_weighted" in md and "| 03_ensemble | done |" in md
    assert "Quantization (LiteRT" in md and "Localization against the boxes" in md and "Distillation" in md


def test_compare_aggregates_runs(demo_run, tmp_path):
    run, _ = demo_run
    table = pipeline.aggregate_runs([run, run])
    row = table.set_index("model").loc["mobilenet"]
    s = {r["model"]: r for r in json.loads((run / "summary.json").read_text())["models"]}
    assert row["n_runs"] == 2 and row["test_accuracy_mean"] == pytest.approx(s["mobilenet"]["test_accuracy"])
    assert row["test_accuracy_std"] == 0.0
    assert "ensemble_chosen" in set(table.model)
    with pytest.raises(FileNotFoundError, match="no summary.json"):
        pipeline.aggregate_runs([tmp_path])
    from gc10lib import cli

    out = tmp_path / "seeds.csv"
    assert cli.main(["compare", str(run), str(run), "--out", str(out)]) == 0
    assert len(pd.read_csv(out)) == len(table)
    assert cli.main(["compare", str(run), "--out", str(out)]) == 2  # never overwritten


def test_parameter_cells_match_what_the_pipeline_passes(demo_run):
    run, _ = demo_run
    m = json.loads((run / "run.json").read_text())
    for step_id, step in m["steps"].items():
        nb_name = step_id.split("_", 1)[1].split("_")[0]
        src = next(pipeline.NOTEBOOK_DIR.glob(f"*_{nb_name}.ipynb"))
        declared = pipeline.notebook_parameters(src)
        assert set(step["params"]) <= set(declared), (step_id, set(step["params"]) - set(declared))
        executed = nbformat.read(run / f"{step_id}.ipynb", as_version=4)
        injected = [c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])]
        assert len(injected) == 1
        for key in step["params"]:
            assert f"{key} = " in injected[0].source, (step_id, key)
    # every config value a notebook declares reaches it
    ft = m["steps"]["02_finetune_mobilenet"]["params"]
    assert ft["img_size"] == 48 and ft["epochs_head"] == 3 and ft["backbone"] == "mobilenet"


@pytest.mark.parametrize("config", sorted(p.name for p in pipeline.CONFIG_DIR.glob("*.yaml")))
def test_every_config_key_is_a_known_parameter(config):
    cfg = yaml.safe_load((pipeline.CONFIG_DIR / config).read_text())
    unknown = set(cfg) - pipeline.valid_keys(cfg) - {"name"} - set(config_sections.SECTIONS)
    assert not unknown, f"{config}: keys no notebook or the runner reads: {unknown}"
    for section in set(cfg) & set(config_sections.SECTIONS):  # each key of a step's section is that step's
        unknown = {f"{section}.{k}" for k in cfg[section]} - pipeline.valid_keys(cfg)
        assert not unknown, f"{config}: keys no notebook reads: {unknown}"


def test_unknown_parameter_is_rejected_before_anything_runs(tmp_path, capsys):
    from gc10lib import cli

    assert cli.main(["run", "--config", "demo", "-p", "epocs_head", "3", "--runs-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown parameter 'epocs_head'" in err and "epochs_head" in err
    assert not any(tmp_path.iterdir())


def test_existing_run_is_never_overwritten(demo_run):
    run, _ = demo_run
    before = (run / "summary.json").read_text()
    r = gc10_run("--config", "demo", *SMOKE, "--name", "smoke", runs_root=run.parent, timeout=120)
    assert r.returncode == 2 and "already exists" in r.stderr
    assert (run / "summary.json").read_text() == before


def test_default_names_never_collide(tmp_path):
    a = RunFolder.choose(tmp_path, None, "demo", resume=False).dir
    a.mkdir()
    b = RunFolder.choose(tmp_path, None, "demo", resume=False).dir
    assert a != b and not b.exists()


@pytest.mark.slow
def test_resume_after_planted_failure(tmp_path):
    """A step fails (its weights file is missing); after fixing that, --resume skips what finished."""
    import keras

    weights = tmp_path / "w" / "mobilenet_custom.weights.h5"
    args = [
        "--config",
        "demo",
        "-p",
        "notebooks",
        "[01_eda, 02_finetune]",
        "-p",
        "backbones",
        "[mobilenet]",
        "-p",
        "img_size",
        "48",
        "-p",
        "synthetic_per_class",
        "6",
        "-p",
        "epochs_head",
        "2",
        "-p",
        "epochs_finetune",
        "0",
        "-p",
        "weights",
        str(weights),
        "--name",
        "r",
    ]
    r = gc10_run(*args, runs_root=tmp_path / "runs")
    assert r.returncode == 2
    assert "step 02_finetune_mobilenet failed in cell" in r.stderr and "weights file not found" in r.stderr
    assert "02_finetune_mobilenet.ipynb" in r.stderr and "--resume --name r" in r.stderr
    run = tmp_path / "runs" / "r"
    m = json.loads((run / "run.json").read_text())
    assert m["steps"]["01_eda"]["status"] == "done" and m["steps"]["02_finetune_mobilenet"]["status"] == "failed"
    eda_time = m["steps"]["01_eda"]["end"]

    weights.parent.mkdir()
    keras.applications.MobileNet(include_top=False, weights=None, input_shape=(48, 48, 3)).save_weights(weights)
    r = gc10_run("--resume", "--name", "r", runs_root=tmp_path / "runs")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "01_eda: done earlier, skipped" in r.stdout
    m = json.loads((run / "run.json").read_text())
    assert m["steps"]["01_eda"]["end"] == eda_time
    assert m["steps"]["02_finetune_mobilenet"]["status"] == "done"
    assert (run / "steps" / "02_finetune_mobilenet" / "model.keras").is_file()


def test_step_verbs_on_a_finished_run(demo_run, tmp_path, capsys):
    """`gc10 ensemble | quantize | explain RUN` take data and split from the run folder, choose on
    validation and write what the notebooks' steps write."""
    from gc10lib import cli

    run, _ = demo_run
    assert cli.main(["ensemble", "--model", str(run), "--methods", "mean", "--out", str(tmp_path / "e")]) == 0
    assert "chosen on validation: ensemble_mean" in capsys.readouterr().out
    steps = run / "steps" / "03_ensemble"
    ours = json.loads((tmp_path / "e" / "ensembles" / "mean" / "metrics.json").read_text())
    theirs = json.loads((steps / "ensembles" / "mean" / "metrics.json").read_text())
    assert ours["test"]["accuracy"] == pytest.approx(theirs["test"]["accuracy"])  # the same step, the same figure
    assert (tmp_path / "e" / "summary_extra.json").is_file() and (tmp_path / "e" / "comparison.png").is_file()
    args = ["quantize", "--model", str(run), "--models", "mobilenet", "--variants", "dynamic", "--max-images", "8"]
    assert cli.main([*args, "--out", str(tmp_path / "q")]) == 0
    q = pd.read_csv(tmp_path / "q" / "quantization.csv")
    assert list(q.variant) == ["keras", "dynamic"] and set(q.policy) == {"stretch"}
    assert cli.main([*args, "--out", str(tmp_path / "q")]) == 2  # an output folder holding results is refused
    assert (
        cli.main(
            [
                "explain",
                "--model",
                str(run),
                "--models",
                "best_backbone",
                "--per-class",
                "1",
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 0
    )
    assert len(list((tmp_path / "x").glob("cam_grid_*.png"))) == 1 and (tmp_path / "x" / "localization.csv").is_file()
    assert (tmp_path / "x" / "localization.png").stat().st_size > 0
    assert cli.main(["explain", "--model", str(run), "--models", "nope", "--out", str(tmp_path / "y")]) == 2
    assert "no model named 'nope'" in capsys.readouterr().err


def test_run_json_records_gpus_from_nvidia_smi(monkeypatch):
    import subprocess as sp

    def fake_run(cmd, **_kw):
        if any(a.startswith("--query-gpu") for a in cmd):
            return sp.CompletedProcess(cmd, 0, stdout="NVIDIA H100 80GB HBM3, 550.54.15, 81559 MiB\n", stderr="")
        return sp.CompletedProcess(
            cmd, 0, stdout="| NVIDIA-SMI 550.54.15   Driver Version: 550.54.15   CUDA Version: 12.4 |\n", stderr=""
        )

    monkeypatch.setattr(pipeline.subprocess, "run", fake_run)
    assert pipeline._machine()["gpus"] == [
        {"name": "NVIDIA H100 80GB HBM3", "driver": "550.54.15", "memory": "81559 MiB", "cuda": "12.4"}
    ]

    def missing(cmd, **_kw):
        raise FileNotFoundError(2, "No such file or directory", cmd[0])

    monkeypatch.setattr(pipeline.subprocess, "run", missing)
    assert pipeline._machine()["gpus"] == []  # a CPU machine: nothing to record, no error


def test_the_example_notebook_runs_through_the_public_api_only(demo_run, tmp_path):
    """notebooks/examples/use_gc10lib.ipynb on the demo run: load, predict, evaluate, Grad-CAM; it
    imports nothing of gc10lib but the package itself, and its newest-run default finds the run."""
    import papermill as pm

    from gc10lib import resources

    run, _ = demo_run
    src = resources.notebooks_dir() / "examples" / "use_gc10lib.ipynb"
    code = "\n".join(c.source for c in nbformat.read(src, as_version=4).cells if c.cell_type == "code")
    assert "import gc10lib\n" in code and "from gc10lib" not in code and "gc10lib." in code
    imports = {line.split()[1] for line in code.splitlines() if line.startswith(("import ", "from "))}
    assert imports == {"gc10lib"}
    out = tmp_path / "executed.ipynb"
    pm.execute_notebook(
        str(src), str(out), parameters={"runs_root": str(run.parent)}, kernel_name="python3", cwd=str(tmp_path)
    )
    done = nbformat.read(out, as_version=4)
    text = "\n".join(o.get("text", "") for c in done.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert f"run {run.name}" in text and "test accuracy" in text
    images = [o for c in done.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert images, "the Grad-CAM cell drew nothing"


@pytest.mark.parametrize(
    "notebook", ["01_eda", "02_finetune", "03_ensemble", "04_quantize", "05_explain", "06_distill"]
)
def test_each_notebook_runs_top_to_bottom_with_no_parameters(demo_run, notebook, tmp_path):
    """As in Jupyter on a fresh clone after `make run`: no parameters, the notebooks folder as the
    working directory; 01 and 02 use the embedded synthetic data, 03-06 the newest run in ../runs."""
    import papermill as pm

    run, _ = demo_run
    work = tmp_path / "clone"
    (work / "notebooks").mkdir(parents=True)
    (work / "runs").symlink_to(run.parent, target_is_directory=True)
    src = pipeline.NOTEBOOK_DIR / f"{notebook}.ipynb"
    out = work / "notebooks" / f"{notebook}.executed.ipynb"
    pm.execute_notebook(str(src), str(out), kernel_name="python3", cwd=str(work / "notebooks"), progress_bar=False)
    done = nbformat.read(out, as_version=4)
    errors = [o for c in done.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    if notebook >= "03":
        params = next(c for c in done.cells if "parameters" in c.metadata.get("tags", []))
        assert "run_dir = None" in params.source  # the default found the run by itself
        text = "\n".join(o.get("text", "") for c in done.cells for o in c.get("outputs", []))
        assert "wrote" in text


def test_a_step_notebook_without_any_run_stops_with_one_line_saying_what_to_do(tmp_path):
    from gc10lib.runfolder import RunFolder, RunFolderError

    with pytest.raises(RunFolderError, match=r"no gc10 run here yet; make one with `gc10 run` \(or `make run`\)$"):
        RunFolder.for_step(None, None, None, tmp_path / "runs")


def test_the_run_says_where_to_look_and_warns_loudly_about_random_weights(demo_run):
    """The smoke run's VGG19 has no offline ImageNet file here; Keras cannot download it, so under
    ``weights: auto`` it trains from random init: said at the start, at the end, in the summary and
    in the model card. Where ../shared/weights is absent, MobileNet is in the same case."""
    run, r = demo_run
    assert "note: no offline ImageNet weights for" in r.stdout and "vgg19" in r.stdout.split("note:")[1]
    assert "open first: " in r.stdout and "summary.md" in r.stdout.split("open first:")[1]
    for page in ("summary.md", "MODEL_CARD.md"):
        text = (run / page).read_text()
        assert "**Warning: " in text and "vgg19" in text.split("**Warning: ")[1].split("**")[0], page


def test_a_results_page_is_generated_from_the_run_and_its_numbers_are_the_summarys(demo_run, tmp_path, capsys):
    from gc10lib import cli

    run, _ = demo_run
    page = tmp_path / "results" / "demo.md"
    assert cli.main(["report", str(run), str(run), "--out", str(page), "--title", "Demo"]) == 0
    text = page.read_text()
    summary = json.loads((run / "summary.json").read_text())
    for row in summary["models"]:
        line = next(x for x in text.splitlines() if x.startswith(f"| {row['model']} | {row['kind']} |"))
        assert f"{row['test_accuracy']:.4f} ± 0.0000" in line and f"{row['test_macro_f1']:.4f} ± 0.0000" in line
    chosen = records.choose_by_validation(pd.DataFrame(summary["models"]), "ensemble")
    assert f"| {run.name} | {chosen} |" in text
    assert (tmp_path / "results" / "demo_files" / "comparison.png").is_file()
    assert cli.main(["report", str(run), "--out", str(page)]) == 2  # never overwritten
    # the headline (the README table's row) holds the same numbers: the chosen ensemble's test
    # accuracy, and the deployable model's, which the page's deploy section shows with its evidence
    head = json.loads((tmp_path / "results" / "demo_files" / "headline.json").read_text())
    models = {r["model"]: r for r in summary["models"]}
    assert head["ensemble"] == f"{chosen.removeprefix('ensemble_')}: {models[chosen]['test_accuracy']:.4f} ± 0.0000"
    dep = summary["deployable"]
    picked = next(c for c in dep["candidates"] if c["name"] == dep["chosen"])
    assert head["deployable"].startswith(f"{dep['chosen']}: {picked['test_accuracy']:.4f}")
    assert f"Deployable model: `{dep['chosen']}`" in text and head["runs"] == 2
    capsys.readouterr()
    assert cli.main(["report", "--table", str(page)]) == 0
    rows = capsys.readouterr().out.strip().splitlines()
    assert rows[0].startswith("| dataset |") and rows[2].startswith("| Demo | 2 |") and "(" in rows[2]


def test_the_run_names_one_deployable_model_chosen_on_validation(demo_run):
    from gc10lib.inference import load_predictor

    run, r = demo_run
    choice = json.loads((run / "deploy" / "choice.json").read_text())
    names = {c["name"] for c in choice["candidates"]}
    assert "student_mobilenet_v2 int8" in names and "student_mobilenet_v2" in names
    assert all(c["val_accuracy"] is not None and c["val_agreement"] is not None for c in choice["candidates"])
    assert choice["checks"]  # the student check always says what it found
    eligible = [c for c in choice["candidates"] if not c["left_out"]]
    ok = [c for c in eligible if c["val_accuracy"] >= choice["reference"]["val_accuracy"] - choice["margin"]]
    smallest = min(ok, key=lambda c: (c["size_mib"], -c["val_accuracy"], c["name"]))["name"] if ok else None
    best = max(eligible, key=lambda c: (c["val_accuracy"], -c["size_mib"]))["name"]  # ties: the smaller file
    assert choice["chosen"] == (smallest or best)
    for c in choice["candidates"]:
        assert Path(c["path"]).is_file()  # offered files are kept under deploy/, where the record says
    assert load_predictor(choice["path"]).classes  # the copied file loads with its sidecar
    assert json.loads((run / "summary.json").read_text())["deployable"]["chosen"] == choice["chosen"]
    for page in ("summary.md", "MODEL_CARD.md"):
        assert f"Deployable model: `{choice['chosen']}`" in (run / page).read_text()
    assert f"deployable model: {choice['chosen']}" in r.stdout


def test_executed_notebooks_are_copied_for_reading_with_their_provenance(demo_run, tmp_path):
    from gc10lib.report import MAX_NOTEBOOK_BYTES, copy_notebooks

    run, _ = demo_run
    files = copy_notebooks(run, tmp_path / "nb", about="Data: synthetic (no licence needed).")
    assert {f.name for f in files} == {p.name for p in run.glob("[0-9][0-9]_*.ipynb")}
    for f in files:
        nb = nbformat.read(f, as_version=4)
        assert f"run `{run.name}`" in nb.cells[0].source and "synthetic (no licence needed)" in nb.cells[0].source
        assert not [o for c in nb.cells for o in c.get("outputs", []) if o.get("name") == "stderr"]
        assert f.stat().st_size <= MAX_NOTEBOOK_BYTES
    with pytest.raises(Exception, match="already exists"):
        copy_notebooks(run, tmp_path / "nb")
