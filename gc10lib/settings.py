"""Environment-driven locations: the cache folder and the offline weights folder."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from gc10lib.errors import InputError, OutputExistsError


def cache_dir() -> Path:
    """The gc10lib cache folder: ``$GC10_CACHE_DIR`` or ``~/.cache/gc10lib``."""
    return Path(os.environ.get("GC10_CACHE_DIR", Path.home() / ".cache" / "gc10lib")).expanduser()


def writable_dir(path: str | Path, what: str) -> Path:
    """Create ``path`` if needed and return it; a file in the way or a folder that cannot be created
    is a one-line error naming the path and ``what`` it is for."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        blocking = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
        if blocking is not None:
            raise InputError(f"{blocking}: is a file, expected a folder for {what}.") from None
        raise InputError(f"{path}: cannot create the folder for {what} ({exc.strerror or exc}).") from None
    if not os.access(path, os.W_OK):
        raise InputError(f"{path}: folder for {what} is not writable.")
    return path


def weights_dir() -> Path | None:
    """Folder of offline ImageNet weight files, from ``$GC10_WEIGHTS_DIR``, or ``None``."""
    value = os.environ.get("GC10_WEIGHTS_DIR")
    return Path(value).expanduser() if value else None


def new_output_dir(path: str | Path | None, prefix: str = "run") -> Path:
    """Create and return an output folder, never reusing one that already holds results.

    ``None`` gives ``runs/<prefix>-<timestamp>``. An existing, non-empty folder is an error, so a
    previous run's results are never overwritten.
    """
    if path is None or str(path) == "":
        path = Path("runs") / f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"
    path = Path(path).expanduser()
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise OutputExistsError(f"{path}: output folder already holds results; choose a new out_dir.")
    return writable_dir(path, "the results")


def save_json(obj: object, path: str | Path) -> Path:
    """Write ``obj`` as indented JSON (numpy scalars and paths converted)."""

    def default(o):
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        return str(o)

    path = Path(path)
    path.write_text(json.dumps(obj, indent=2, default=default))
    return path


def file_size_mb(path: str | Path) -> float:
    """A file's size in MiB, rounded to 3 decimals."""
    return round(Path(path).stat().st_size / 2**20, 3)
