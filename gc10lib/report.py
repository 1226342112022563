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
import os
import platform
import time
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pandas as pd

from gc10lib import plots
from gc10lib.errors import Gc10Error, InputError, NotFoundError, OutputExistsError
from gc10lib.modelcard import commit_label, deploy_lines
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


def _fmt(mean: float, std: float, n: int, digits: int = 4) -> str:
    if pd.isna(mean):
        return "–"
    return f"{mean:.{digits}f}" if n < 2 else f"{mean:.{digits}f} ± {std:.{digits}f}"


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


#: the README's results table: one row per results page (``gc10 report --table docs/results/*.md``)
TABLE_HEADER = [
    "| dataset | runs | chosen ensemble: test acc. | single backbone: test acc. "
    "| int8 student: test acc., size, speed-up | deployable model: test acc., size | page |",
    "|---|---|---|---|---|---|---|",
]


def _mean(values: Sequence[float | None], digits: int = 4) -> str:
    got = pd.Series([float(v) for v in values if v is not None and not pd.isna(v)], dtype=float)
    if got.empty:
        return "–"
    return _fmt(float(got.mean()), float(got.std(ddof=0)), len(got), digits)


def _names(values: Sequence[str | None]) -> str:
    return ", ".join(dict.fromkeys(str(v).removeprefix("ensemble_") for v in values if v)) or "–"


def _student_int8(run: RunFolder) -> dict:
    """The int8 student's test accuracy, size and batch-1 speed-up over the teacher (the distill
    step's deployment table); empty where the run has none."""
    f = run.steps_dir / "06_distill" / "deployment.csv"
    if not f.is_file():
        return {}
    d = pd.read_csv(f)
    if not {"role", "variant"} <= set(d):
        return {}
    student = d[(d.role == "student") & (d.variant == "int8")]
    if student.empty:
        return {}
    s = student.iloc[0]
    return {"accuracy": float(s.accuracy), "size_mib": float(s.size_mib), "speedup": s.get("speedup_vs_teacher_b1")}


def headline(runs: Sequence[RunFolder]) -> dict:
    """The page's one-line summary over its runs: the chosen ensemble, the chosen single backbone,
    the int8 student and the deployable model, each with its test accuracy (mean ± std)."""
    rows = []
    for r in runs:
        summary = _summary(r)  # read once per run
        models = pd.DataFrame(summary["models"]).set_index("model")
        pick = chosen(r)
        dep = summary.get("deployable") or {}
        cand = next((c for c in dep.get("candidates", []) if c["name"] == dep.get("chosen")), {})
        acc = {k: (models.test_accuracy.get(v) if v else None) for k, v in pick.items()}
        rows.append(
            {"pick": pick, "acc": acc, "deploy": dep.get("chosen"), "deploy_c": cand, "student": _student_int8(r)}
        )
    student = [x["student"] for x in rows if x["student"]]
    return {
        "runs": len(runs),
        "ensemble": f"{_names([x['pick']['ensemble'] for x in rows])}: {_mean([x['acc']['ensemble'] for x in rows])}",
        "backbone": f"{_names([x['pick']['backbone'] for x in rows])}: {_mean([x['acc']['backbone'] for x in rows])}",
        "student_int8": (
            f"{_mean([s['accuracy'] for s in student])}, {_mean([s['size_mib'] for s in student], 2)} MiB, "
            f"{_mean([s['speedup'] for s in student], 1)}x"
            if student
            else "not run"
        ),
        "deployable": (
            f"{_names([x['deploy'] for x in rows])}: {_mean([x['deploy_c'].get('test_accuracy') for x in rows])}, "
            f"{_mean([x['deploy_c'].get('size_mib') for x in rows], 2)} MiB"
            if any(x["deploy"] for x in rows)
            else "–"
        ),
    }


def _headline_row(head: dict, link: str) -> str:
    cells = [head["title"], head["runs"], head["ensemble"], head["backbone"], head["student_int8"], head["deployable"]]
    return "| " + " | ".join(str(c) for c in cells) + f" | {link} |"


def table_rows(pages: Sequence[str | Path], link_from: str | Path = ".") -> list[str]:
    """The README's results table from results pages (their ``_files/headline.json``), linking each
    page relative to ``link_from``."""
    lines = list(TABLE_HEADER)
    for page in (Path(p) for p in pages if Path(p).name != "README.md"):  # a folder's index is not a page
        f = page.with_name(f"{page.stem}_files") / "headline.json"
        if not f.is_file():
            raise NotFoundError(f"{page}: no {f.name} beside it; regenerate the page with gc10 report")
        h = json.loads(f.read_text())
        link = Path(os.path.relpath(page, link_from)).as_posix()
        lines.append(_headline_row(h, f"[{page.stem}]({link})"))
    return lines


def _deploy_section(runs: Sequence[RunFolder]) -> list[str]:
    """Each run's deployable model with its validation evidence (``deploy/choice.json``)."""
    out = []
    for r in runs:
        lines = deploy_lines(r.dir)
        if lines:
            out += [f"Run `{r.name}`:", "", *lines, ""]
    return ["## The deployable model (chosen on validation)", "", *out] if out else []


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
    lines += _deploy_section(runs)
    lines += ["## Figures", "", *_figures(runs, files, files.name), ""]
    head = {"title": title or runs[0].config.get("name", "runs"), **headline(runs)}
    (files / "headline.json").write_text(json.dumps(head, indent=1) + "\n")
    at = lines.index("## Runs")  # the headline first, in the README table's words
    lines[at:at] = [*TABLE_HEADER[:2], _headline_row(head, "this page"), ""]
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
