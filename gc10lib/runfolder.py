"""A run folder, read and written one way: :class:`RunFolder`.

``gc10 run`` writes, and every step, report and CLI verb reads::

    runs/<name>/
      run.json               resolved config, git commit, versions, machine, seed, step records
      split.csv (+ .json)    the split manifest every step uses
      NN_<step>.ipynb        the executed notebooks
      steps/<step>/          each step's outputs (models with their metrics.json, tables, plots)
      logs/<step>.log        streamed cell output
      summary.json/.md, MODEL_CARD.md

An earlier attempt of a step is never overwritten: :meth:`RunFolder.keep_aside` renames its
outputs to ``<name>.failed-K``.

>>> run = RunFolder("runs/xsdd-s42")
>>> run.config["seed"], run.split_csv, [m.name for m in run.models(("backbone",))]
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from gc10lib.data import read_split
from gc10lib.errors import Gc10Error, InputError
from gc10lib.records import KINDS, ModelRecord, find_models, pick_models
from gc10lib.synth import resolve_data_dir


class RunFolderError(Gc10Error, RuntimeError):
    """A folder that is not a usable run (no ``run.json``, or one that cannot be read); the message
    says what is wrong and how to start again."""


class RunFolder:
    """One run folder: its paths, its ``run.json`` manifest and the models its steps saved.

    >>> run = RunFolder("runs/xsdd-s42")
    >>> run.config["backbones"], run.step_dir("03_ensemble"), run.inputs()   # (data_dir, split.csv)
    """

    MANIFEST = "run.json"

    def __init__(self, path: str | Path):
        self.dir = Path(path)
        self._manifest: dict | None = None

    # ---- paths
    @property
    def name(self) -> str:
        return self.dir.name

    @property
    def manifest_path(self) -> Path:
        return self.dir / self.MANIFEST

    @property
    def split_csv(self) -> Path:
        return self.dir / "split.csv"

    @property
    def steps_dir(self) -> Path:
        return self.dir / "steps"

    def step_dir(self, step_id: str) -> Path:
        return self.steps_dir / step_id

    def notebook(self, step_id: str) -> Path:
        return self.dir / f"{step_id}.ipynb"

    def log(self, step_id: str) -> Path:
        return self.dir / "logs" / f"{step_id}.log"

    def exists(self) -> bool:
        """Whether the folder holds a ``run.json``."""
        return self.manifest_path.is_file()

    # ---- the manifest
    @property
    def manifest(self) -> dict:
        """``run.json`` as a mapping (empty while the run has none); one clear error when it is
        not a JSON object with a ``config`` mapping."""
        if self._manifest is None:
            self._manifest = self._read() if self.exists() else {}
        return self._manifest

    @manifest.setter
    def manifest(self, value: dict) -> None:
        self._manifest = value

    def _read(self) -> dict:
        hint = "it is not a usable gc10 run; start a new one with another --name"
        try:
            value = json.loads(self.manifest_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RunFolderError(f"{self.manifest_path}: cannot be read ({exc.__class__.__name__}); {hint}") from None
        if not isinstance(value, dict):
            raise RunFolderError(f"{self.manifest_path}: holds a {type(value).__name__}, not a JSON object; {hint}")
        if not isinstance(value.get("config"), dict):
            raise RunFolderError(f"{self.manifest_path}: has no 'config' mapping; {hint}")
        value.setdefault("steps", {})
        if not isinstance(value["steps"], dict):
            raise RunFolderError(f"{self.manifest_path}: 'steps' is not a mapping; {hint}")
        return value

    @property
    def config(self) -> dict:
        """The resolved config the run was started with (empty before it has a manifest)."""
        return self.manifest.get("config") or {}

    def save(self) -> None:
        """Write ``run.json`` atomically (a crash never leaves half a manifest)."""
        tmp = self.manifest_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.manifest, indent=2, default=str))
        tmp.replace(self.manifest_path)

    # ---- what the steps read
    def inputs(self, data_dir: str | Path | None = None, split_csv: str | Path | None = None) -> tuple[str, str]:
        """``(data_dir, split_csv)`` for a step on this run: the ones given, else the run's own
        (``run.json``'s ``data_dir``, ``split.csv``)."""
        split = str(split_csv or self.split_csv)
        data_dir = data_dir or (self.config.get("data_dir") if self.exists() else None)
        if not data_dir:
            raise InputError(f"{self.dir}: not a gc10 run folder with run.json; pass --data and --split-csv")
        return str(data_dir), split

    def split(self) -> pd.DataFrame:
        """The run's split manifest, one row per image (``path``, ``class``, ``label``, ``subset``)."""
        return read_split(self.split_csv, data_root=self.inputs()[0])

    def model(self, which: str = "best_ensemble") -> Path:
        """The file of one of the run's models: a name (``mobilenet``, ``ensemble_mean``...), or
        ``best_backbone`` / ``best_ensemble`` as validation chose them."""
        picked = pick_models(self.steps_dir, [which]) if self.steps_dir.is_dir() else []
        if not picked:
            raise RunFolderError(f"{self.dir}: no {which.removeprefix('best_')} saved in this run yet")
        return picked[0].path

    def models(self, kinds: Sequence[str] = KINDS) -> list[ModelRecord]:
        """Every model the run's steps saved (:func:`gc10lib.records.find_models`); none before any step."""
        return find_models(self.steps_dir, kinds) if self.steps_dir.is_dir() else []

    # ---- attempts
    def keep_aside(self, step_id: str) -> None:
        """Rename an earlier attempt's outputs of ``step_id`` (step folder, notebook, log) to
        ``<name>.failed-K``, one K for all of them, never deleting anything."""
        paths = [self.step_dir(step_id), self.notebook(step_id), self.log(step_id)]
        present = [p for p in paths if p.exists()]
        if not present:
            return
        k = 1
        while any(_aside(p, k).exists() for p in paths):
            k += 1
        for p in present:
            p.rename(_aside(p, k))

    @classmethod
    def for_step(
        cls,
        run_dir: str | Path | None = None,
        data_dir: str | Path | None = None,
        split_csv: str | Path | None = None,
        runs_root: str | Path = "runs",
    ) -> tuple[RunFolder, Path, str]:
        """What a step notebook (03–06) works on: the run ``run_dir``, else the newest under
        ``runs_root``, with its own data and split unless others are given. Returns ``(run, data
        folder, split manifest)``; ``data_dir`` ``"synthetic"`` is the cached synthetic set."""
        run = cls(run_dir) if run_dir else cls.newest(runs_root)
        data, split = run.inputs(data_dir, split_csv)
        return run, resolve_data_dir(data), split

    @classmethod
    def newest(cls, runs_root: str | Path = "runs") -> RunFolder:
        """The most recently started run under ``runs_root`` (the notebooks' default); one clear line
        that says how to make one when there is none."""
        root = Path(runs_root)
        found = sorted(root.glob(f"*/{cls.MANIFEST}"), key=lambda p: p.stat().st_mtime) if root.is_dir() else []
        if not found:
            raise RunFolderError(f"{root.resolve()}: no gc10 run here yet; make one with `gc10 run` (or `make run`)")
        return cls(found[-1].parent)

    @classmethod
    def choose(cls, runs_root: Path, name: str | None, default: str, resume: bool) -> RunFolder:
        """Never overwrite: an explicit existing name is an error (unless resuming); a default name
        gets a fresh timestamped folder."""
        if name:
            run = cls(runs_root / name)
            if resume:
                if not run.exists():
                    raise RunFolderError(f"{run.dir}: nothing to resume (no run.json).")
                return run
            if run.dir.exists() and not run.exists():
                raise RunFolderError(
                    f"{run.dir}: exists but holds no run.json (not a gc10 run, or one that failed before it "
                    "started); choose another --name or remove the folder."
                )
            if run.dir.exists():
                raise RunFolderError(
                    f"{run.dir}: run folder already exists; pass --resume to continue it or choose another --name."
                )
            return run
        if resume:
            raise RunFolderError("--resume needs --name of the run to continue.")
        base = f"{default}-{time.strftime('%Y%m%d-%H%M%S')}"
        d, k = runs_root / base, 2
        while d.exists():
            d, k = runs_root / f"{base}-{k}", k + 1
        return cls(d)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.dir)!r})"

    def __fspath__(self) -> str:
        return str(self.dir)

    def get(self, key: str, default: Any = None) -> Any:
        """A top-level value of ``run.json``."""
        return self.manifest.get(key, default)


def _aside(path: Path, k: int) -> Path:
    return (
        path.with_name(f"{path.stem}.failed-{k}{path.suffix}")
        if path.suffix
        else path.with_name(f"{path.name}.failed-{k}")
    )
