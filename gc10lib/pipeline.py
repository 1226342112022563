"""The papermill pipeline behind ``gc10 run``: configs, run folders, resume and summaries.

A run executes the numbered notebooks headless, in order: ``01_eda``, ``02_finetune`` once per
backbone, ``03_ensemble`` and any later notebooks, each with only the parameters its tagged
``parameters`` cell declares. Everything lands in ``runs/<name>/``:

* ``NN_<step>.ipynb`` – the executed notebooks;
* ``steps/<step>/`` – each step's outputs (models, metrics, plots);
* ``logs/<step>.log`` – streamed cell output;
* ``split.csv`` – the split manifest every step uses;
* ``run.json`` – resolved config, git commit, package versions, seed, machine, step timings;
* ``summary.json`` / ``summary.md`` – every model's and ensemble's metrics in one table.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import json
import logging
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pandas as pd
import papermill as pm
import yaml
from jupyter_client.manager import AsyncKernelManager

from gc10lib import data, resources, synth
from gc10lib.config import SECTIONS, check_run_config, fold_sections, section_of, section_values
from gc10lib.config import apply_overrides as apply_parameter_overrides
from gc10lib.errors import Gc10Error, NotFoundError
from gc10lib.modelcard import commit_label, deploy_lines, random_init_warning, write_model_card
from gc10lib.records import choose_by_validation, read_step_summaries
from gc10lib.registry import get_spec, resolve_weights
from gc10lib.runfolder import RunFolder
from gc10lib.settings import writable_dir

log = logging.getLogger(__name__)

NOTEBOOK_DIR = resources.notebooks_dir()
CONFIG_DIR = resources.configs_dir()
REPO_ROOT = resources.REPO_ROOT  # where git is asked for the commit (a clone; elsewhere git says nothing)

#: Keys that only the runner reads (not forwarded to notebooks).
RUNNER_DEFAULTS = {
    "name": "",
    "description": "",
    "backbones": [],
    "notebooks": [],
    "synthetic_per_class": 30,
    "fractions": [0.7, 0.15, 0.15],
    "img_sizes": {},
    "notebooks_dir": "",  # a folder of your own numbered notebooks (default: gc10lib's own)
}
RUNNER_KEYS = set(RUNNER_DEFAULTS)
#: Kernel start-up arguments: no "Kernel is running over TCP without encryption" warning per step.
KERNEL_ARGS = ["--IPKernelApp.log_level=ERROR"]


class _StepKernelManager(AsyncKernelManager):
    """A kernel whose own stderr goes to the step's log, not the terminal: TensorFlow's start-up
    lines, and the ZMQ traceback a kernel prints when Ctrl-C stops the run under it."""

    log_file = None  # set on a per-step subclass (:func:`_kernel_manager_for`)

    async def start_kernel(self, **kw):
        if self.log_file is not None:
            kw.setdefault("stderr", self.log_file)
        return await super().start_kernel(**kw)


def _kernel_manager_for(log_file) -> type[AsyncKernelManager]:
    return type("StepKernelManager", (_StepKernelManager,), {"log_file": log_file})


class PipelineError(Gc10Error, RuntimeError):
    """A run that cannot start or continue; the message says why."""


@dataclass
class Step:
    """One notebook execution."""

    id: str
    notebook: str
    params: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- configuration


def load_config(path: str | Path) -> dict:
    """Read a YAML config (a bare name like ``demo`` means ``configs/demo.yaml``)."""
    p = Path(path)
    if not p.is_file() and (CONFIG_DIR / f"{path}.yaml").is_file():
        p = CONFIG_DIR / f"{path}.yaml"
    if not p.is_file():
        raise NotFoundError(f"{path}: config not found (looked in {CONFIG_DIR} too).")
    try:
        cfg = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        hint = " (quote values that contain ': ')" if "mapping values" in str(problem) else ""
        raise PipelineError(f"{p}: not valid YAML{where}: {problem}{hint}") from None
    if not isinstance(cfg, dict):
        raise PipelineError(f"{p}: a config must be a YAML mapping of parameter names to values.")
    cfg.setdefault("name", p.stem)
    return cfg


def _literal(source: str | None):
    """A notebook parameter's default value, when its source is a plain literal (else ``None``)."""
    try:
        return ast.literal_eval(source) if source is not None else None
    except (ValueError, SyntaxError):
        return None


def notebook_parameters(notebook: str | Path) -> dict[str, str]:
    """Names and default source of a notebook's tagged ``parameters`` cell."""
    params = pm.inspect_notebook(str(notebook))
    return {k: v.get("default") for k, v in params.items()}


def notebooks_for(cfg: dict) -> list[str]:
    """The notebooks a config runs, in order (default: every numbered notebook in notebooks/)."""
    return list(cfg.get("notebooks") or sorted(p.stem for p in notebook_folder(cfg).glob("[0-9][0-9]_*.ipynb")))


def notebook_folder(cfg: dict) -> Path:
    """Where a config's notebooks are: its ``notebooks_dir``, else gc10lib's own."""
    return resources.notebooks_dir(cfg.get("notebooks_dir")) if cfg.get("notebooks_dir") else NOTEBOOK_DIR


def parameter_defaults(cfg: dict) -> dict:
    """Every name a ``-p`` override may use, with the value it has without one: the config's own
    value, else the notebook parameter's default (``None`` where neither says)."""
    defaults: dict = copy.deepcopy(RUNNER_DEFAULTS)
    for nb in notebooks_for(cfg):
        path = notebook_folder(cfg) / f"{nb}.ipynb"
        if path.is_file():
            for k, source in notebook_parameters(path).items():
                defaults.setdefault(k, _literal(source))
    for nb in notebooks_for(cfg):  # a step's own setting, e.g. -p distill.epochs_finetune 0
        section, path = section_of(nb), notebook_folder(cfg) / f"{nb}.ipynb"
        if section and path.is_file():
            prefix = SECTIONS[section][1]
            mine = section_values(cfg, section, notebook_parameters(path))
            for k, source in notebook_parameters(path).items():
                value = mine.get(k, cfg.get(k, _literal(source)))
                defaults[f"{section}.{k.removeprefix(prefix)}"] = value
    defaults.update({k: v for k, v in cfg.items() if k not in SECTIONS})
    for k in ("out_dir", "split_csv", "run_dir"):
        defaults.pop(k, None)
    for section in SECTIONS:
        for k in ("out_dir", "split_csv", "run_dir"):
            defaults.pop(f"{section}.{k}", None)
    return defaults


def valid_keys(cfg: dict) -> set[str]:
    """Every name a ``-p`` override may use: the config's keys, runner keys and notebook parameters."""
    return set(parameter_defaults(cfg))


def apply_overrides(cfg: dict, overrides: Sequence[tuple[str, str]]) -> dict:
    """Apply ``-p KEY VALUE`` pairs (:func:`gc10lib.config.apply_overrides`), rejecting unknown names
    before anything runs."""
    routed = [pair for key, raw in overrides for pair in _into_sections(cfg, key, raw)]
    return fold_sections(apply_parameter_overrides(copy.deepcopy(cfg), routed, parameter_defaults(cfg)))


def _into_sections(cfg: dict, key: str, raw: str) -> list[tuple[str, str]]:
    """A flat ``-p`` key that a section of ``cfg`` also sets goes to that section too, so that
    ``-p student_epochs_finetune 2`` is not outvoted by ``distill: {epochs_finetune: 0}``."""
    pairs = [(key, raw)]
    for section, (_, prefix) in SECTIONS.items():
        for k in cfg.get(section) or {}:
            if key == (k if str(k).startswith(prefix) else f"{prefix}{k}"):
                pairs.append((f"{section}.{k}", raw))
    return pairs


def plan_steps(cfg: dict, run_dir: Path) -> list[Step]:
    """The ordered steps of a run with their notebook parameters."""
    planned: list[tuple[str, str, dict]] = []
    for nb in notebooks_for(cfg):
        if not (notebook_folder(cfg) / f"{nb}.ipynb").is_file():
            raise PipelineError(f"notebook {nb!r} not found in {notebook_folder(cfg)}")
        stem = nb.split("_", 1)[1] if nb[:2].isdigit() else nb
        if nb.startswith("02_"):
            for bb in cfg.get("backbones") or []:
                params = {"backbone": bb}
                size = (cfg.get("img_sizes") or {}).get(bb)
                if size is not None:
                    params["img_size"] = size
                planned.append((f"{stem}_{bb}", nb, params))
        else:
            planned.append((stem, nb, {}))
    return [Step(f"{nb[:2]}_{sid}" if nb[:2].isdigit() else sid, nb, p) for sid, nb, p in planned]


def step_parameters(step: Step, cfg: dict, run_dir: Path) -> dict:
    """Only the parameters the step's notebook declares, from config, run and step."""
    declared = notebook_parameters(notebook_folder(cfg) / f"{step.notebook}.ipynb")
    values = {k: v for k, v in cfg.items() if k not in RUNNER_KEYS}
    section = section_of(step.notebook)
    if section:  # the step's own settings, over the top-level ones
        values.update(section_values(cfg, section, declared))
    run = RunFolder(run_dir)
    values.update(
        {
            "out_dir": str(run.step_dir(step.id)),
            "split_csv": str(run.split_csv),
            "run_dir": str(run_dir),
            "data_dir": cfg.get("data_dir"),
        }
    )
    values.update(step.params)
    return {k: v for k, v in values.items() if k in declared}


# --------------------------------------------------------------------------- run folder


def _git(*args: str) -> str | None:
    """``git ARGS`` in the repository, stripped; ``None`` outside a git checkout or without git."""
    try:
        done = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _git_commit() -> str | None:
    return _git("rev-parse", "HEAD") or None


def _git_dirty() -> bool | None:
    """Whether tracked files differ from the commit (so ``git_commit`` alone does not name the code
    that ran); ``None`` when unknown."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    return None if status is None else bool(status)


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("gc10lib", "tensorflow", "keras", "numpy", "pandas", "scikit-learn", "papermill", "ai-edge-litert"):
        with contextlib.suppress(PackageNotFoundError):
            out[pkg] = version(pkg)
    return out


def _gpus() -> list[dict]:
    """NVIDIA GPUs with driver and CUDA versions, from ``nvidia-smi`` (empty where there is none).

    Asked of ``nvidia-smi`` rather than TensorFlow, so the runner never imports TensorFlow."""
    fields = "name,driver_version,memory.total"
    try:
        r = subprocess.run(
            ["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader"], capture_output=True, text=True, timeout=20
        )
        head = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    cuda = next(
        (line.split("CUDA Version:")[1].split()[0] for line in head.splitlines() if "CUDA Version:" in line), None
    )
    return (
        [
            dict(zip(("name", "driver", "memory"), (x.strip() for x in line.split(",")), strict=False), cuda=cuda)
            for line in r.stdout.splitlines()
            if line.strip()
        ]
        if r.returncode == 0
        else []
    )


def _machine() -> dict:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "hostname": platform.node(),
        "gpus": _gpus(),
    }


def _prepare_data(cfg: dict):
    """Resolve ``data_dir`` (generating synthetic data), read the dataset and split it, in memory.

    Runs before the run folder exists, so a bad ``data_dir`` leaves nothing behind. Returns a
    function that writes the split manifest into a run folder.
    """
    seed = int(cfg.get("seed", 42))
    root = synth.resolve_data_dir(
        cfg["data_dir"], per_class=int(cfg.get("synthetic_per_class", synth.SYNTHETIC_PER_CLASS)), seed=0
    )
    cfg["data_dir"] = str(root.resolve())
    ds = data.discover(root)
    fractions = cfg.get("fractions") or (0.7, 0.15, 0.15)
    man = data.split_dataset(ds, fractions, seed)
    return lambda run_dir: data.write_split(
        man, RunFolder(run_dir).split_csv, ds.root, classes=ds.classes, seed=seed, fractions=fractions
    )


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run; the message says how to resume it."""


def execute_run(
    cfg: dict, *, name: str | None = None, resume: bool = False, runs_root: str | Path = "runs", echo=log.info
) -> Path:
    """Run (or resume) a pipeline and return its run folder; ``echo`` receives the progress lines."""
    runs_root = Path(runs_root).resolve()  # notebooks run with cwd=notebooks/: pass absolute paths
    run = RunFolder.choose(runs_root, name, str(cfg.get("name", "run")), resume)
    if resume:
        cfg = run.config
    steps = plan_steps(cfg, run.dir)  # before the folder exists: a missing notebook leaves nothing behind
    if not steps:
        raise PipelineError(f"no notebooks found to run in {notebook_folder(cfg)}")
    if not resume:
        _start(run, cfg, runs_root)
        for line in _weights_notes(cfg):
            echo(line)
    env_keep = {k: os.environ.get(k) for k in ("GC10_VERBOSE", "TF_CPP_MIN_LOG_LEVEL")}
    os.environ["GC10_VERBOSE"] = "2"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    t_start = time.time()
    durations: list[float] = []
    try:
        for i, step in enumerate(steps, start=1):
            if run.manifest["steps"].get(step.id, {}).get("status") == "done":
                echo(f"[{i}/{len(steps)}] {step.id}: done earlier, skipped")
                continue
            left = sum(1 for s in steps[i - 1 :] if run.manifest["steps"].get(s.id, {}).get("status") != "done")
            eta = f", about {sum(durations) / len(durations) * left / 60:.1f} min left" if durations else ""
            echo(
                f"[{i}/{len(steps)}] {step.id} ({step.notebook}) — elapsed {(time.time() - t_start) / 60:.1f} min{eta}"
                f" — log {run.log(step.id).relative_to(run.dir.parent)}"
            )
            durations.append(_run_step(run, step, cfg))
    finally:
        for k, v in env_keep.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    if any(s.id.startswith(("04_", "06_")) for s in steps):
        _choose_deployable(run, echo)
    run.manifest["ended"] = time.time()
    run.save()
    write_summary(run.dir)
    echo(f"run complete in {(time.time() - t_start) / 60:.1f} min: {run.dir}")
    warning = random_init_warning(run.models())
    if warning:
        echo(warning.replace("**", ""))
    where = run.dir.relative_to(Path.cwd()) if run.dir.is_relative_to(Path.cwd()) else run.dir
    echo(
        f"open first: {where}/summary.md (every model's scores) and {where}/MODEL_CARD.md (the chosen model); "
        "then `jupyter lab notebooks/` (03-06 open this run), or `gc10 predict --model FILE images/`"
    )
    return run.dir


def _weights_notes(cfg: dict) -> list[str]:
    """At the start of a run: which backbones have no offline ImageNet file and will need Keras'
    download (and, under ``weights: auto``, train from random initialisation without it)."""
    if cfg.get("weights") not in ("imagenet", "auto"):
        return [] if cfg.get("weights") not in (None, "random") else ["note: weights: random init for every backbone"]
    need = []
    for bb in cfg.get("backbones") or []:
        _, source = resolve_weights(get_spec(bb), cfg["weights"], cfg.get("weights_dir"))
        if source == "imagenet-download":
            need.append(bb)
    if not need:
        return []
    then = "fall back to random initialisation (said again at the end)" if cfg["weights"] == "auto" else "stop"
    return [
        f"note: no offline ImageNet weights for {', '.join(need)} (GC10_WEIGHTS_DIR); Keras will download them, "
        f"and where it cannot they {then}"
    ]


def _choose_deployable(run: RunFolder, echo) -> None:
    """The run's deployable model (:mod:`gc10lib.steps.deploy`), chosen in a process of its own whose
    stderr goes to ``logs/deploy.log``."""
    log_path = run.log("deploy")
    with open(log_path, "a") as fh:
        done = subprocess.run(
            [sys.executable, "-m", "gc10lib.steps.deploy", str(run.dir)], stdout=subprocess.PIPE, stderr=fh, text=True
        )
    if done.returncode != 0:
        raise PipelineError(f"choosing the deployable model failed; see {log_path}")
    for line in done.stdout.splitlines():
        echo(line)


def _start(run: RunFolder, cfg: dict, runs_root: Path) -> None:
    """A new run: the data read and split (a bad ``data_dir`` leaves nothing behind), then the folder,
    its ``split.csv`` and ``run.json``."""
    if cfg.get("data_dir") in (None, ""):
        raise PipelineError("data_dir is not set: pass -p data_dir PATH (or set GC10_DATA for gc10.yaml).")
    write_split = _prepare_data(cfg)
    writable_dir(runs_root, "runs (--runs-root)")
    writable_dir(run.dir / "logs", "the run")
    write_split(run.dir)
    run.manifest = {
        "name": run.name,
        "config": cfg,
        "git_commit": _git_commit(),
        "git_dirty": _git_dirty(),
        "versions": _versions(),
        "machine": _machine(),
        "seed": cfg.get("seed", 42),
        "started": time.time(),
        "steps": {},
    }
    run.save()


def _run_step(run: RunFolder, step: Step, cfg: dict) -> float:
    """Execute one step's notebook with papermill into the run folder, recording it in ``run.json``;
    an earlier attempt is kept aside first. Returns the step's seconds."""
    run.keep_aside(step.id)  # a failed or interrupted attempt: kept, never overwritten
    nb_out, log_path = run.notebook(step.id), run.log(step.id)
    rec = {"status": "running", "notebook": str(nb_out), "params": step_parameters(step, cfg, run.dir)}
    rec["start"] = time.time()
    run.manifest["steps"][step.id] = rec
    run.save()
    resume = f"resume with: gc10 run --resume --name {run.name}"
    try:
        with open(log_path, "a") as fh:
            pm.execute_notebook(
                str(notebook_folder(cfg) / f"{step.notebook}.ipynb"),
                str(nb_out),
                parameters=rec["params"],
                kernel_name="python3",
                cwd=str(notebook_folder(cfg)),
                progress_bar=False,
                stdout_file=fh,
                stderr_file=fh,
                log_output=False,
                extra_arguments=KERNEL_ARGS,
                kernel_manager_class=_kernel_manager_for(fh),
            )
    except pm.PapermillExecutionError as exc:
        rec.update(status="failed", end=time.time(), error=f"{exc.ename}: {exc.evalue}", cell=exc.exec_count)
        run.save()
        raise PipelineError(
            f"step {step.id} failed in cell {exc.exec_count} ({exc.ename}: {exc.evalue}).\n"
            f"  executed notebook: {nb_out}\n  log: {log_path}\n  {resume}"
        ) from None
    except KeyboardInterrupt:
        rec.update(status="failed", end=time.time(), error="interrupted")
        run.save()
        raise RunInterrupted(f"interrupted in step {step.id}; {resume}") from None
    except BaseException:
        rec.update(status="failed", end=time.time(), error="interrupted")
        run.save()
        raise
    rec.update(status="done", end=time.time(), seconds=round(time.time() - rec["start"], 1))
    run.save()
    return rec["seconds"]


# --------------------------------------------------------------------------- summary


def collect_rows(run_dir: Path) -> list[dict]:
    """One row per model, probe and ensemble of a run (:meth:`ModelRecord.row` with test metrics).

    A trained backbone whose validation accuracy or macro-F1 is below its own probe's is flagged in
    ``vs_probe`` (``below: accuracy, macro_f1``); ``ok`` otherwise.
    """
    records = [r for r in RunFolder(run_dir).models() if r.test]
    probes = {r.backbone: r for r in records if r.kind == "probe"}
    rows = []
    for r in records:
        row = r.row()
        probe = probes.get(r.backbone) if r.kind == "backbone" else None
        if probe is not None:
            below = [k for k in ("accuracy", "macro_f1") if r.val.get(k, 0) < probe.val.get(k, 0) - 1e-9]
            row["vs_probe"] = f"below: {', '.join(below)}" if below else "ok"
        rows.append(row)
    return rows


def write_summary(run_dir: Path) -> dict:
    """Write ``summary.json`` and ``summary.md`` for a run folder."""
    run = RunFolder(run_dir)
    rows = collect_rows(run_dir)
    extra = read_step_summaries(run_dir)
    summary = {
        "run": run_dir.name,
        "config": run.manifest.get("config"),
        "steps": {k: {kk: v.get(kk) for kk in ("status", "seconds")} for k, v in run.manifest.get("steps", {}).items()},
        "models": rows,
        "extra": extra,
        "deployable": _deployable(run_dir),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    lines = [f"# Run `{run_dir.name}`", ""]
    warning = random_init_warning(run.models())
    if warning:
        lines += [warning, ""]
    cfg = run.manifest.get("config") or {}
    lines.append(f"Data: `{cfg.get('data_dir')}` · seed {cfg.get('seed')} · commit `{commit_label(run.manifest)}`")
    lines.append("")
    if rows:
        df = pd.DataFrame(rows)
        lines.append(df.to_markdown(index=False, floatfmt=".4f"))
        flagged = [r["model"] for r in rows if str(r.get("vs_probe", "ok")).startswith("below")]
        if flagged:
            lines += ["", f"**Below their own probe on validation:** {', '.join(flagged)} (see `vs_probe`)."]
    else:
        lines.append("_no model metrics yet_")
    if summary["deployable"]:
        lines += ["", *deploy_lines(run_dir)]
    lines += ["", "| step | status | seconds |", "|---|---|---|"]
    for k, v in summary["steps"].items():
        lines.append(f"| {k} | {v['status']} | {v.get('seconds')} |")
    for k, v in extra.items():
        if isinstance(v, dict) and v.get("markdown"):
            lines += ["", f"## {v.get('title', k)}", "", v["markdown"]]
    (run_dir / "summary.md").write_text("\n".join(lines) + "\n")
    write_model_card(run_dir)
    return summary


def _deployable(run_dir: Path) -> dict | None:
    f = run_dir / "deploy" / "choice.json"
    return json.loads(f.read_text()) if f.is_file() else None


def aggregate_runs(run_dirs: Sequence[str | Path]) -> pd.DataFrame:
    """Mean and standard deviation per model over several runs of one config (e.g. one per seed).

    Reads each run's ``summary.json``; a model missing from some runs is averaged over those that
    have it (``n_runs`` says how many). The validation-chosen ensemble of each run is also
    aggregated, as ``ensemble_chosen`` (chosen by :func:`gc10lib.records.choose_by_validation`).
    """
    frames = []
    for rd in run_dirs:
        f = Path(rd) / "summary.json"
        if not f.is_file():
            raise NotFoundError(f"{rd}: no summary.json (is it a finished gc10 run folder?)")
        df = pd.DataFrame(json.loads(f.read_text())["models"])
        if (df.kind == "ensemble").any() and "val_log_loss" in df:
            chosen = df[df.model == choose_by_validation(df)].assign(model="ensemble_chosen", kind="chosen")
            df = pd.concat([df, chosen], ignore_index=True)
        frames.append(df.assign(run=Path(rd).name))
    all_rows = pd.concat(frames, ignore_index=True)
    cols = [
        c
        for c in ("test_accuracy", "test_balanced_accuracy", "test_macro_f1", "val_accuracy", "val_macro_f1")
        if c in all_rows
    ]
    g = all_rows.groupby(["model", "kind"], sort=False)[cols]
    out = g.mean().add_suffix("_mean").join(g.std(ddof=0).add_suffix("_std")).join(g.size().rename("n_runs"))
    return out.reset_index()


def list_configs() -> dict[str, str]:
    """Each config in ``configs/`` with its one-line ``description`` (or what is wrong with the file)."""
    out = {}
    for p in sorted(CONFIG_DIR.glob("*.yaml")):
        try:
            out[p.stem] = str(load_config(p).get("description", "")).strip()
        except PipelineError as exc:
            out[p.stem] = f"(unreadable: {exc})"
    return out


def dry_run(config: str, overrides: Sequence[tuple[str, str]], runs_root: str | Path = "runs") -> list[Step]:
    """The steps a run would execute, each with the parameters its notebook would get; runs nothing."""
    cfg = _resolve_config(config, overrides)
    run_dir = Path(runs_root).resolve() / f"{cfg.get('name', 'run')}-<time>"
    return [Step(s.id, s.notebook, step_parameters(s, cfg, run_dir)) for s in plan_steps(cfg, run_dir)]


def _resolve_config(config: str, overrides: Sequence[tuple[str, str]]) -> dict:
    """The config file with its overrides, checked (:func:`gc10lib.config.check_run_config`)
    before any run folder exists."""
    cfg = apply_overrides(load_config(config), overrides)
    if cfg.get("data_dir") and isinstance(cfg["data_dir"], str) and cfg["data_dir"].startswith("$"):
        cfg["data_dir"] = os.environ.get(cfg["data_dir"][1:])
    steps = notebooks_for(cfg)
    for section in (s for s in SECTIONS if s in cfg):
        if not any(section_of(nb) == section for nb in steps):
            raise PipelineError(f"{section}: this config runs no {SECTIONS[section][0]}_ notebook, so nothing reads it")
    check_run_config(cfg, steps)
    return cfg


def main_run(
    config: str,
    overrides: Sequence[tuple[str, str]],
    name: str | None,
    resume: bool,
    runs_root: str = "runs",
    echo=log.info,
) -> int:
    if resume and overrides:
        raise PipelineError("--resume continues a run with its recorded config; -p overrides are not allowed.")
    cfg = {} if resume else _resolve_config(config, overrides)
    execute_run(cfg, name=name, resume=resume, runs_root=runs_root, echo=echo)
    return 0
