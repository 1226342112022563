"""A seeded synthetic GC10-like dataset in the Kaggle layout, with VOC boxes.

Each of the ten classes has a distinct visual signature shaped after the real defect, drawn at a
random position on a steel-like texture (rolling streaks and grain noise), with its bounding box
written as a Pascal-VOC XML using the real pinyin tags. It is the embedded default dataset for
``make run`` and for the tests.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from gc10lib.classes import GC10_CLASSES, GC10_TAGS
from gc10lib.errors import OutputExistsError
from gc10lib.settings import cache_dir

Box = tuple[int, int, int, int]
WIDTH, HEIGHT = 256, 125  # GC10's 2.05:1 aspect, scaled down


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    base = rng.uniform(110, 150)
    streaks = rng.normal(0, 6, size=(h, 1)) * np.ones((1, w))  # rolling direction: horizontal
    grain = rng.normal(0, 5, size=(h, w))
    shade = np.linspace(-8, 8, w)[None, :] * rng.choice([-1, 1])
    return base + streaks + grain + shade


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    return np.mgrid[0:h, 0:w].astype(float)


def _clip_box(x0: float, y0: float, x1: float, y1: float, w: int, h: int) -> Box:
    return (int(max(0, x0)), int(max(0, y0)), int(min(w, x1)), int(min(h, y1)))


def _punching_hole(img, rng):
    h, w = img.shape
    r = rng.uniform(7, 11)
    cx, cy = rng.uniform(r + 2, w - r - 2), rng.uniform(r + 2, h - r - 2)
    yy, xx = _grid(h, w)
    img[(xx - cx) ** 2 + (yy - cy) ** 2 <= r * r] = rng.uniform(5, 25)
    return _clip_box(cx - r, cy - r, cx + r, cy + r, w, h)


def _welding_line(img, rng):
    h, w = img.shape
    x = rng.uniform(10, w - 10)
    half = rng.uniform(1.5, 3)
    yy, xx = _grid(h, w)
    img[np.abs(xx - x) <= half] += rng.choice([-1, 1]) * rng.uniform(55, 75)
    return _clip_box(x - half - 1, 0, x + half + 1, h, w, h)


def _crescent_gap(img, rng):
    h, w = img.shape
    r = rng.uniform(18, 28)
    cy = rng.uniform(r, h - r)
    cx = 0.0 if rng.random() < 0.5 else float(w)
    yy, xx = _grid(h, w)
    img[(xx - cx) ** 2 + (yy - cy) ** 2 <= r * r] = rng.uniform(10, 30)
    return _clip_box(cx - r, cy - r, cx + r, cy + r, w, h)


def _water_spot(img, rng):
    h, w = img.shape
    ax, ay = rng.uniform(18, 30), rng.uniform(12, 20)
    cx, cy = rng.uniform(ax, w - ax), rng.uniform(ay, h - ay)
    yy, xx = _grid(h, w)
    d = ((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2
    img += -22 * np.exp(-2 * d)
    return _clip_box(cx - ax, cy - ay, cx + ax, cy + ay, w, h)


def _oil_spot(img, rng):
    h, w = img.shape
    cx, cy = rng.uniform(30, w - 30), rng.uniform(22, h - 22)
    yy, xx = _grid(h, w)
    for _ in range(rng.integers(3, 6)):
        bx, by, r = cx + rng.uniform(-14, 14), cy + rng.uniform(-10, 10), rng.uniform(4, 7)
        img -= 60 * np.exp(-((xx - bx) ** 2 + (yy - by) ** 2) / (2 * r * r))
    return _clip_box(cx - 24, cy - 20, cx + 24, cy + 20, w, h)


def _silk_spot(img, rng):
    h, w = img.shape
    x0 = rng.uniform(0, w - 80)
    bw = rng.uniform(60, 80)
    yy, xx = _grid(h, w)
    period = rng.uniform(6, 9)
    band = (xx >= x0) & (xx <= x0 + bw)
    wave = np.sin(2 * np.pi * (yy + 4 * np.sin(xx / 9.0)) / period)
    img[band] += 28 * wave[band]
    return _clip_box(x0, 0, x0 + bw, h, w, h)


def _inclusion(img, rng):
    h, w = img.shape
    cx, cy = rng.uniform(30, w - 30), rng.uniform(10, h - 10)
    length = rng.uniform(25, 45)
    yy, xx = _grid(h, w)
    mask = (np.abs(yy - cy) <= 1.2) & (np.abs(xx - cx) <= length / 2)
    img[mask] = rng.uniform(20, 45)
    return _clip_box(cx - length / 2, cy - 3, cx + length / 2, cy + 3, w, h)


def _rolled_pit(img, rng):
    h, w = img.shape
    x0, y0 = rng.uniform(5, w - 45), rng.uniform(5, h - 25)
    for i in range(3):
        for j in range(2):
            x, y = int(x0 + 14 * i), int(y0 + 12 * j)
            img[y : y + 5, x : x + 5] = 235
    return _clip_box(x0, y0, x0 + 33, y0 + 17, w, h)


def _crease(img, rng):
    h, w = img.shape
    x0 = rng.uniform(20, w - 60)
    slope = rng.uniform(0.3, 0.5) * rng.choice([-1, 1])
    yy, xx = _grid(h, w)
    line = x0 + 20 + slope * (yy - h / 2)
    img[np.abs(xx - line) <= 1.5] -= 60
    xs = line[:, 0]
    return _clip_box(xs.min() - 2, 0, xs.max() + 2, h, w, h)


def _waist_folding(img, rng):
    h, w = img.shape
    x0 = rng.uniform(10, w - 40)
    bw = rng.uniform(22, 32)
    yy, xx = _grid(h, w)
    t = np.clip((xx - x0) / bw, 0, 1)
    band = (xx >= x0) & (xx <= x0 + bw)
    img[band] += (50 * np.sin(np.pi * t) * np.sign(np.sin(2 * np.pi * t)))[band]
    return _clip_box(x0, 0, x0 + bw, h, w, h)


PAINTERS: dict[str, Callable[[np.ndarray, np.random.Generator], Box]] = {
    "punching_hole": _punching_hole,
    "welding_line": _welding_line,
    "crescent_gap": _crescent_gap,
    "water_spot": _water_spot,
    "oil_spot": _oil_spot,
    "silk_spot": _silk_spot,
    "inclusion": _inclusion,
    "rolled_pit": _rolled_pit,
    "crease": _crease,
    "waist_folding": _waist_folding,
}
KAGGLE_FOLDER = {c: ("waist folding" if c == "waist_folding" else c) for c in GC10_CLASSES}


def render(cls: str, rng: np.random.Generator, size: tuple[int, int] = (WIDTH, HEIGHT)) -> tuple[np.ndarray, Box]:
    """One synthetic grayscale uint8 image of class ``cls`` and its defect box."""
    w, h = size
    img = _texture(rng, h, w)
    box = PAINTERS[cls](img, rng)
    return np.clip(img, 0, 255).astype(np.uint8), box


def _voc_xml(filename: str, folder: str, w: int, h: int, tag: str, box: Box) -> str:
    return (
        f"<annotation>\n\t<folder>{folder}</folder>\n\t<filename>{filename}</filename>\n"
        f"\t<size>\n\t\t<width>{w}</width>\n\t\t<height>{h}</height>\n\t\t<depth>1</depth>\n\t</size>\n"
        f"\t<object>\n\t\t<name>{tag}</name>\n\t\t<bndbox>\n\t\t\t<xmin>{box[0]}</xmin>\n"
        f"\t\t\t<ymin>{box[1]}</ymin>\n\t\t\t<xmax>{box[2]}</xmax>\n\t\t\t<ymax>{box[3]}</ymax>\n"
        "\t\t</bndbox>\n\t</object>\n</annotation>\n"
    )


def make_synthetic(
    out: str | Path,
    per_class: int = 30,
    seed: int = 0,
    size: tuple[int, int] = (WIDTH, HEIGHT),
    overwrite: bool = False,
) -> Path:
    """Write a synthetic dataset in the Kaggle layout to ``out`` and return it.

    Refuses to write into a non-empty folder unless ``overwrite`` is set (and even then only
    replaces files it would write itself).
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise OutputExistsError(f"{out}: folder is not empty; choose an empty OUT folder.")
    img_root, xml_root = out / "images" / "images", out / "label" / "label"
    xml_root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for k, cls in enumerate(GC10_CLASSES):
        folder = img_root / KAGGLE_FOLDER[cls]
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img, box = render(cls, rng, size)
            name = f"syn_{k + 1:02d}_{i:05d}"
            Image.fromarray(img, mode="L").save(folder / f"{name}.jpg", quality=95)
            (xml_root / f"{name}.xml").write_text(
                _voc_xml(f"{name}.jpg", str(k + 1), size[0], size[1], GC10_TAGS[k], box)
            )
    (out / "SYNTHETIC.txt").write_text(f"gc10lib synthetic dataset: per_class={per_class} seed={seed} size={size}\n")
    return out


def ensure_synthetic(per_class: int = 30, seed: int = 0, root: str | Path | None = None) -> Path:
    """Return a cached synthetic dataset for these parameters, generating it on first use."""
    base = Path(root) if root is not None else cache_dir() / "synthetic"
    out = base / f"gc10-synth-n{per_class}-s{seed}"
    stamp = out / "SYNTHETIC.txt"
    if not stamp.is_file():
        tmp = base / f".tmp-{os.getpid()}-{out.name}"
        make_synthetic(tmp, per_class=per_class, seed=seed, overwrite=True)
        try:
            tmp.rename(out)
        except OSError:  # another process won the race; its copy is identical
            shutil.rmtree(tmp, ignore_errors=True)
    return out


#: images per class of the plain ``"synthetic"`` set: what notebooks 01 and 02 open with (a quick
#: look, about a minute of training on 2 CPU cores); ``synthetic:N`` or a config's
#: ``synthetic_per_class`` asks for more
SYNTHETIC_PER_CLASS = 12


def resolve_data_dir(data_dir: str | Path, per_class: int = SYNTHETIC_PER_CLASS, seed: int = 0) -> Path:
    """``"synthetic"`` (or ``synthetic:N``) means the cached synthetic set; anything else is a path."""
    s = str(data_dir)
    if s == "synthetic" or s.startswith("synthetic:"):
        n = int(s.split(":", 1)[1]) if ":" in s else per_class
        return ensure_synthetic(per_class=n, seed=seed)
    return Path(s).expanduser()
