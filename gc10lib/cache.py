"""gc10lib's cache folder: what it holds, how big it is, and clearing it (``gc10 cache``).

The cache lives in ``$GC10_CACHE_DIR`` (default ``~/.cache/gc10lib``). Training and evaluation
fill it so that reruns are fast; predicting on loose images never writes to it. Each part can be
deleted at any time: it is rebuilt when needed.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from gc10lib.errors import InputError
from gc10lib.settings import cache_dir

#: the parts of the cache, and what fills each
PARTS = {
    "images": "resized training/evaluation images, one PNG per file, size and policy",
    "features": "pooled backbone features of phase 1, per view",
    "maps": "middle-layer maps of the map head, per flip",
    "distill": "the teacher's soft targets and the student's views",
}


def _usage(folder: Path) -> tuple[int, int]:
    """``(bytes, files)`` under ``folder``."""
    files = [p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()] if folder.is_dir() else []
    return sum(p.stat().st_size for p in files), len(files)


def info() -> dict:
    """The cache's root, total bytes and files, and the same per part (every folder under it)."""
    root = cache_dir()
    parts = {}
    if root.is_dir():
        for d in sorted(p for p in root.iterdir() if p.is_dir()):
            b, n = _usage(d)
            parts[d.name] = {"bytes": b, "files": n}
    total, n = _usage(root)
    return {"root": str(root), "bytes": total, "files": n, "parts": parts}


def clear(part: str | None = None) -> int:
    """Delete the whole cache, or one part of it; returns the bytes freed."""
    root = cache_dir()
    if part is not None and ("/" in part or part in ("", ".", "..")):
        raise InputError(f"{part!r}: not a part of the cache; one of {', '.join(PARTS)}")
    target = root / part if part else root
    if part and not target.is_dir():
        present = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        raise InputError(f"{target}: no such part of the cache; present: {', '.join(present) or 'none'}")
    freed, _ = _usage(target)
    if target.is_dir():
        shutil.rmtree(target)
    return freed


def human(n: int) -> str:
    """A byte count for people: ``12.3 MiB``."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"
