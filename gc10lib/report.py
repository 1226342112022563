"""A dataset's results page, generated from run folders (``gc10 report``): never typed by hand.

One page per dataset, from one or more finished runs of one config (one per seed, say)::

    gc10 report runs/xsdd-s42 runs/xsdd-s43 --out docs/results/xsdd.md --title "X-SDD"

The page holds: how it was made (the command, each run's commit, config, seed, data and machine),
the models validation chose in each run, every model's test and validation scores as mean ± std
over the runs (probes and ensembles included), the distillation step's deployment table, and
figures written beside it (``<page>_files/``): test accuracy and macro-F1 with bootstrap 95%
intervals, the chosen ensemble's confusion matrix and per-class F1. Its numbers are read from
each run's ``summary.json`` and the chosen model's ``metrics.json``, so they equal them.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pandas as pd

from gc10lib import plots
from gc10lib.errors import Gc10Error, InputError, NotFoundError, OutputExistsError
from gc10lib.modelcard import commit_label
from gc10lib.pipeline import load_config
from gc10lib.records import choose_by_validation
from gc10lib.runfolder import RunFolder

SCORES = ("test_accuracy", "test_macro_f1", "val_accuracy", "val_log_loss")


def _summary(run: RunFolder) -> dict:
    f = run.dir / "summary.json"
    if not f.is_file():
        raise NotFoundError(f"{run.dir}: no summary.json; is it a finished gc10 run? (gc10 run --resume finishes one)")
    return json.loads(f.read_text())


def model_table(runs: Sequence[RunFolder]) -> pd.DataFrame:
    """Every model of the runs with the mean and std of :data:`SCORES` over the runs that have it."""
    frames = [pd.DataFrame(_summary(r)["models"]).assign(run=r.name) for r in runs]
    rows = pd.concat(frames, ignore_index=True)
    cols = [c for c in SCORES if c in rows]
    g = rows.groupby(["model", "kind"], sort=False)[cols]
    out = g.mean().add_suffix("_mean").join(g.std(ddof=0).add_suffix("_std")).join(g.size().rename("n_runs"))
    return out.reset_index()


def chosen(run: RunFolder) -> dict[str, str | None]:
    """The ensemble and the single backbone validation chose in a run (``None`` where it has none)."""
    df = pd.DataFrame(_summary(run)["models"])
    out: dict[str, str | None] = {}
    for kind in ("ensemble", "backbone"):
        out[kind] = choose_by_validation(df, kind) if (df.get("kind") == kind).any() else None
    return out


def _fmt(mean: float, std: float, n: int) -> str:
    if pd.isna(mean):
        return "–"
    return f"{mean:.4f}" if n < 2 else f"{mean:.4f} ± {std:.4f}"


def _scores_markdown(table: pd.DataFrame) -> str:
    order = {"ensemble": 0, "student": 1, "backbone": 2, "probe": 3}
    t = table.assign(_o=table.kind.map(order).fillna(9)).sort_values(["_o", "model"])
    lines = [
        "| model | kind | test accuracy | test macro-F1 | val accuracy | val log-loss | runs |",
        "|---|---|---|---|---|---|---|",
    ]
    for _, r in t.iterrows():
        cells = [_fmt(r.get(f"{c}_mean"), r.get(f"{c}_std"), int(r.n_runs)) for c in SCORES]
        lines.append(f"| {r.model} | {r.kind} | " + " | ".join(cells) + f" | {int(r.n_runs)} |")
    return "\n".join(lines)


def _overrides(cfg: dict) -> str:
    """The run's settings that differ from the bundled config of its name (what ``-p`` changed)."""
    try:
        base = load_config(str(cfg.get("name")))
    except Gc10Error:
        return "(no bundled config of that name)"
    diff = {k: v for k, v in cfg.items() if k not in ("data_dir", "name", "description") and base.get(k) != v}
    return ", ".join(f"{k}={v}" for k, v in sorted(diff.items())) or "none"


def _provenance(runs: Sequence[RunFolder]) -> list[str]:
    lines = ["| run | commit | config | changed from it | seed | data | machine |", "|---|---|---|---|---|---|---|"]
    for r in runs:
        m, cfg = r.manifest, r.config
        machine = m.get("machine") or {}
        gpus = machine.get("gpus") or []
        where = f"{machine.get('cpus', '?')} CPU cores ({machine.get('processor', '?')}), " + (
            ", ".join(g.get("name", "GPU") for g in gpus) if gpus else "no GPU"
        )
        data = Path(str(cfg.get("data_dir"))).name
        row = [r.name, f"`{commit_label(m)}`", cfg.get("name"), _overrides(cfg), cfg.get("seed"), data, where]
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    return lines


def _figures(runs: Sequence[RunFolder], files: Path, rel: str) -> list[str]:
    """Comparison bars of the first run, and its chosen ensemble's confusion matrix and per-class F1."""
    first = runs[0]
    df = pd.DataFrame(_summary(first)["models"])
    out = [f"Figures from run `{first.name}`:", ""]
    fig = plots.comparison_bars(df)
    fig.savefig(files / "comparison.png", dpi=90, bbox_inches="tight")
    out.append(f"![test accuracy and macro-F1 with bootstrap 95% intervals, run {first.name}]({rel}/comparison.png)")
    pick = chosen(first)["ensemble"] or chosen(first)["backbone"]
    rec = next((m for m in first.models() if m.name == pick), None)
    if rec is not None and rec.test:
        fig = plots.confusion(rec.test)
        fig.savefig(files / "confusion.png", dpi=90, bbox_inches="tight")
        fig = plots.per_class_f1({rec.name: rec.test})
        fig.savefig(files / "per_class_f1.png", dpi=90, bbox_inches="tight")
        out += [
            "",
            f"![confusion matrix of {pick} on the test split]({rel}/confusion.png)",
            f"![per-class F1 of {pick} on the test split]({rel}/per_class_f1.png)",
        ]
    plots.close_all()
    return out


def write_page(run_dirs: Sequence[str | Path], out: str | Path, *, title: str | None = None, about: str = "") -> Path:
    """Write the results page of ``run_dirs`` to ``out`` (a new ``.md`` file; its figures go to
    ``<out stem>_files/``). Returns the page's path."""
    runs = [RunFolder(d) for d in run_dirs]
    if not runs:
        raise InputError("gc10 report needs at least one run folder")
    out = Path(out)
    files = out.with_name(f"{out.stem}_files")
    for p in (out, files):
        if p.exists():
            raise OutputExistsError(f"{p}: already exists; results pages are never overwritten (remove it first)")
    table = model_table(runs)
    out.parent.mkdir(parents=True, exist_ok=True)
    files.mkdir()
    cmd = "gc10 report " + " ".join(str(d) for d in run_dirs) + f" --out {out}"
    lines = [f"# Results: {title or runs[0].config.get('name', 'runs')}", ""]
    if about:
        lines += [about, ""]
    lines += [
        f"Generated by `{cmd}` on {time.strftime('%Y-%m-%d')} ({platform.python_version()}, gc10lib "
        f"{_version()}); do not edit by hand. Validation chose every model named below; the test split only reports.",
        "",
        "## Runs",
        "",
        *_provenance(runs),
        "",
        "## Chosen on validation",
        "",
        "| run | ensemble | single backbone |",
        "|---|---|---|",
        *[f"| {r.name} | {c['ensemble'] or '–'} | {c['backbone'] or '–'} |" for r in runs for c in [chosen(r)]],
        "",
        f"## Every model{' (mean ± std over the runs)' if len(runs) > 1 else ''}",
        "",
        _scores_markdown(table),
        "",
    ]
    deploy = runs[0].steps_dir / "06_distill" / "deployment.md"
    if deploy.is_file():
        lines += [f"## Deployment (run `{runs[0].name}`, test split)", "", deploy.read_text().strip(), ""]
    lines += ["## Figures", "", *_figures(runs, files, files.name), ""]
    out.write_text("\n".join(lines))
    return out


#: the largest executed notebook kept for reading in the repository
MAX_NOTEBOOK_BYTES = 2 * 2**20


def copy_notebooks(run_dir: str | Path, out_dir: str | Path, about: str = "") -> list[Path]:
    """The run's executed notebooks, for reading in the repository (``docs/notebooks/<dataset>/``):
    each headed by a cell naming the run, its commit and config, and ``about`` (the dataset's
    licence and citation), with the kernel's stderr (TensorFlow's start-up lines) left out. A
    notebook over 2 MiB is refused. Returns the files written."""
    run = RunFolder(run_dir)
    found = sorted(run.dir.glob("[0-9][0-9]_*.ipynb"))
    if not found:
        raise NotFoundError(f"{run.dir}: no executed notebooks (NN_*.ipynb); is it a gc10 run folder?")
    out = Path(out_dir)
    if out.exists():
        raise OutputExistsError(f"{out}: already exists; remove it to copy the notebooks again")
    out.mkdir(parents=True)
    head = (
        f"*Executed by `gc10 run` in run `{run.name}` (commit `{commit_label(run.manifest)}`, config "
        f"`{run.config.get('name')}`, seed {run.config.get('seed')}) and copied with `gc10 report --notebooks`; "
        f"the notebook itself is `notebooks/`'s, without outputs.*" + (f"\n\n{about}" if about else "")
    )
    written = []
    for f in found:
        nb = json.loads(f.read_text())
        for cell in nb.get("cells", []):
            if cell.get("outputs"):
                cell["outputs"] = [o for o in cell["outputs"] if o.get("name") != "stderr"]
        nb["cells"].insert(0, {"cell_type": "markdown", "metadata": {}, "source": head})
        text = json.dumps(nb, indent=1, ensure_ascii=False) + "\n"
        if len(text.encode()) > MAX_NOTEBOOK_BYTES:
            raise InputError(f"{f}: {len(text.encode()) / 2**20:.1f} MiB executed; over the 2 MiB kept for reading")
        (out / f.name).write_text(text)
        written.append(out / f.name)
    return written


def _version() -> str:
    try:
        return version("gc10lib")
    except PackageNotFoundError:
        return "unknown"
