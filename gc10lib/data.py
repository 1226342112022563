"""Dataset discovery, data-quality checks, seeded grouped splits and class weights.

Data flows one way: :func:`discover` reads a dataset folder into a :class:`Dataset` (one row per
image file), :func:`split_dataset` turns it into a split manifest that :func:`write_split` /
:func:`read_split` store as CSV, and the input pipeline (:mod:`gc10lib.inputs`) reads that.
Nothing in the dataset folder is ever modified.
"""

from __future__ import annotations

import json
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from gc10lib.classes import GC10_CLASSES, canonical_gc10
from gc10lib.errors import InputError, NotFoundError, OutputExistsError, SkippedImageWarning

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
SUBSETS = ("train", "val", "test")
TABLE_COLUMNS = ["path", "class", "label", "image_id", "width", "height", "xml", "boxes", "box_classes"]
QUALITY_COLUMNS = ["file", "class", "problem", "detail"]


#: What decoding a bad file raises: corrupt data, unknown formats, and headers claiming more pixels
#: than Pillow's decompression-bomb limit.
DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)


class DatasetError(InputError):
    """A dataset folder that cannot be used as given; the message says what was expected."""


@dataclass
class Dataset:
    """A discovered dataset: one table row per image file, plus its quality report."""

    root: Path
    layout: str
    classes: list[str]
    table: pd.DataFrame
    quality: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=QUALITY_COLUMNS))

    @property
    def present_classes(self) -> list[str]:
        """Classes with at least one image, in label order."""
        have = set(self.table["class"])
        return [c for c in self.classes if c in have]

    def __len__(self) -> int:
        return len(self.table)


# --------------------------------------------------------------------------- discovery


def _broken_links(folder: Path) -> list[Path]:
    """Symbolic links that lead nowhere: a loop or a missing target (``is_file`` hides both)."""
    return sorted(p for p in folder.iterdir() if p.is_symlink() and not p.exists())


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _other_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() not in IMAGE_EXTENSIONS and not p.name.startswith(".")
    )


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def detect_layout(root: Path) -> tuple[str, Path, Path | None]:
    """Return ``(layout, class_parent, xml_dir)`` for a dataset root.

    Layouts: ``kaggle`` (``images/images/<class>`` + ``label/label``), ``gc10-original``
    (numbered folders ``1``..``10`` + ``lable``), ``folder`` (``<root>/<class>`` or
    ``<root>/images/<class>``, optional ``annotations``/``labels`` XML folder).
    """
    if not root.exists():
        raise DatasetError(f"{root}: no such folder. Expected a GC10-DET download or a folder-per-class dataset.")
    if not root.is_dir():
        raise DatasetError(f"{root}: is a file, expected a dataset folder.")
    if (root / "images" / "images").is_dir():
        xml = root / "label" / "label"
        return "kaggle", root / "images" / "images", xml if xml.is_dir() else None
    numbered = [p for p in _class_dirs(root) if p.name.isdigit()]
    if numbered and all(p.name.isdigit() for p in _class_dirs(root) if p.name not in {"lable", "label"}):
        xml = next((root / n for n in ("lable", "label") if (root / n).is_dir()), None)
        return "gc10-original", root, xml
    parent = root / "images" if (root / "images").is_dir() else root
    xml = next(
        (root / n for n in ("annotations", "Annotations", "labels", "label", "xml") if (root / n).is_dir()), None
    )
    dirs = [d for d in _class_dirs(parent) if d != xml]
    if not dirs:
        raise DatasetError(
            f"{root}: unrecognised layout. Expected images/images/<class>/*.jpg (Kaggle), "
            "numbered class folders 1..10 (original GC10), or <root>/<class>/* or "
            "<root>/images/<class>/* (folder per class)."
        )
    return "folder", parent, xml


def _number(path: Path, element, key: str) -> int:
    text = element.findtext(key, "0")
    try:
        return int(float(text))
    except (TypeError, ValueError):
        raise InputError(f"{path}: <{key}> is not a number ({text!r})") from None


def parse_voc(path: Path) -> tuple[list[list[int]], list[str], tuple[int, int] | None]:
    """Read a Pascal-VOC XML file: ``(boxes [xmin,ymin,xmax,ymax], raw tags, (w, h) or None)``.

    A malformed file raises ``xml.etree.ElementTree.ParseError``, a non-numeric coordinate an
    :class:`~gc10lib.errors.InputError`; both name the file.
    """
    root = ET.parse(path).getroot()
    boxes, tags = [], []
    for obj in root.iter("object"):
        tag = (obj.findtext("name") or "").strip()
        bb = obj.find("bndbox")
        if bb is None:
            continue
        box = [_number(path, bb, k) for k in ("xmin", "ymin", "xmax", "ymax")]
        boxes.append(box)
        tags.append(tag)
    size = root.find("size")
    wh = None
    if size is not None and size.findtext("width"):
        wh = (_number(path, size, "width"), _number(path, size, "height"))
    return boxes, tags, wh


class TruncatedImageError(ValueError):
    """An image file that stops before its end marker (a cut-off download or copy)."""


#: headers claiming more pixels than this are decoded in full by the data check (a forged header
#: under Pillow's decompression-bomb limit is otherwise listed at the size it claims)
FULL_DECODE_PIXELS = 40_000_000
#: what a whole file of each kind ends with (within its last bytes; some writers pad after it)
END_MARKERS = {".jpg": b"\xff\xd9", ".jpeg": b"\xff\xd9", ".png": b"IEND"}


def _image_header(path: Path) -> tuple[int, int, str]:
    """Width, height and mode from the header, after checking the file is a readable image that is
    not cut off (a JPEG without its end-of-image marker, a PNG without IEND), so that the data
    check finds what training would later stop on."""
    with Image.open(path) as im:
        im.verify()
    marker = END_MARKERS.get(path.suffix.lower())
    if marker is not None:
        with open(path, "rb") as fh:
            fh.seek(max(0, path.stat().st_size - 4096))
            if marker not in fh.read():
                raise TruncatedImageError(f"the file is cut off (no {marker!r} end marker); image file is truncated")
    with Image.open(path) as im:
        width, height, mode = im.size[0], im.size[1], im.mode
        if width * height > FULL_DECODE_PIXELS:  # a header can claim any size: make the pixels prove it
            im.load()
    return width, height, mode


#: Modes that load, with a note in the quality table of what loading does to them.
MODE_NOTES = {
    "RGBA": ("alpha_dropped", "RGBA image: the alpha channel is dropped"),
    "LA": ("alpha_dropped", "grayscale+alpha image: the alpha channel is dropped"),
    "PA": ("alpha_dropped", "palette+alpha image: the alpha channel is dropped"),
    **{m: ("high_bit_depth", "16-bit image: scaled to 8 bit (value / 257)") for m in ("I;16", "I;16B", "I;16L", "I")},
    "F": ("float_pixels", "32-bit float image: values in 0..1 scaled by 255, others clipped to 0..255"),
}
#: Quality-table problems whose image is left out of the dataset.
EXCLUDED_PROBLEMS = ("unreadable", "broken_link")


def discover(root: str | Path, check_images: bool = True) -> Dataset:
    """Read a dataset folder into a :class:`Dataset`.

    GC10 layouts (``kaggle``, ``gc10-original``) always carry the ten canonical classes in
    canonical order, so label indices are stable across subsets of GC10; a generic folder layout
    uses its sorted folder names. Corrupt or non-image files are excluded with a warning and a
    quality-table row; a wrong path, an unrecognised layout, an empty class folder, an unknown GC10
    class folder or an empty dataset raise :class:`DatasetError`.
    """
    root = Path(root).expanduser()
    layout, parent, xml_dir = detect_layout(root)
    is_gc10 = layout in ("kaggle", "gc10-original")
    folder_class = _folder_classes(parent, xml_dir, is_gc10)
    classes = list(GC10_CLASSES) if is_gc10 else sorted(set(folder_class.values()))
    quality: list[dict] = []
    rows: list[dict] = []
    for d, cls in folder_class.items():
        rows += _scan_folder(d, cls, classes.index(cls), check_images, quality)
    if not rows:
        raise DatasetError(f"{root}: no readable images found (layout {layout!r}).")
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    _attach_boxes(table, xml_dir, is_gc10, quality)
    _note_duplicate_names(table, quality)
    qdf = pd.DataFrame(quality, columns=QUALITY_COLUMNS)
    return Dataset(root=root, layout=layout, classes=classes, table=table, quality=qdf)


def _folder_classes(parent: Path, xml_dir: Path | None, is_gc10: bool) -> dict[Path, str]:
    """Each class folder and the class it holds (GC10 folder names mapped to the canonical ones)."""
    dirs = [d for d in _class_dirs(parent) if d != xml_dir and d.name not in {"lable", "label"}]
    if not dirs:
        raise DatasetError(f"{parent}: no class folders found; expected one sub-folder per class.")
    folder_class: dict[Path, str] = {}
    for d in dirs:
        cls = canonical_gc10(d.name) if is_gc10 else d.name
        if cls is None:
            raise DatasetError(
                f"{d}: unknown class folder {d.name!r} in a GC10 dataset; expected one of "
                f"{', '.join(GC10_CLASSES)} (or the numbered folders 1..10)."
            )
        folder_class[d] = cls
    return folder_class


def _note(quality: list[dict], file, cls: str, problem: str, detail: str) -> None:
    quality.append(dict(file=str(file), **{"class": cls}, problem=problem, detail=detail))


def _scan_folder(d: Path, cls: str, label: int, check_images: bool, quality: list[dict]) -> list[dict]:
    """One row per readable image of a class folder; broken links, other files and unreadable or
    cut-off images become quality rows (with a warning) and are left out."""
    for link in _broken_links(d):
        _note(quality, link, cls, "broken_link", "symlink loop or missing target")
        warnings.warn(f"{link}: symlink loop or missing target; excluded", SkippedImageWarning, stacklevel=3)
    for other in _other_files(d):
        _note(quality, other, cls, "not_an_image", f"unexpected file with suffix {other.suffix!r}; ignored")
        warnings.warn(f"{other}: not an image file; ignored", SkippedImageWarning, stacklevel=3)
    files = _image_files(d)
    if not files:
        others = sorted(p.name for p in _other_files(d))
        what = f"holds no image files (only {', '.join(others[:5])})" if others else "is empty"
        raise DatasetError(
            f"{d}: class folder {d.name!r} {what}; expected image files "
            f"({', '.join(IMAGE_EXTENSIONS)}). Remove the folder or add its images."
        )
    rows = []
    for p in files:
        width = height = -1
        if check_images:
            try:
                width, height, mode = _image_header(p)
            except DECODE_ERRORS as exc:
                _note(quality, p, cls, "unreadable", f"{type(exc).__name__}: {exc}")
                warnings.warn(f"{p}: unreadable or corrupt image ({exc}); excluded", SkippedImageWarning, stacklevel=3)
                continue
            if mode in MODE_NOTES:
                _note(quality, p, cls, *MODE_NOTES[mode])
        rows.append(
            dict(path=str(p), **{"class": cls}, label=label, image_id=p.stem, width=width, height=height)
            | dict(xml=None, boxes=[], box_classes=[])
        )
    return rows


def _note_duplicate_names(table: pd.DataFrame, quality: list[dict]) -> None:
    """File names that occur in more than one class folder (12 in the real GC10 data)."""
    counts = table.groupby("image_id")["class"].nunique()
    for image_id in counts[counts > 1].index:
        dup = table[table.image_id == image_id]
        for _, r in dup.iterrows():
            others = ", ".join(sorted(set(dup["class"]) - {r["class"]}))
            _note(quality, r.path, r["class"], "duplicate_name", f"{image_id} also in: {others}")


def _attach_boxes(table: pd.DataFrame, xml_dir: Path | None, is_gc10: bool, quality: list[dict]) -> None:
    if xml_dir is None:
        return
    xml_files = {p.stem: p for p in xml_dir.rglob("*.xml")}
    for i, r in table.iterrows():
        xml = xml_files.get(r.image_id)
        if xml is None:
            _note(quality, r.path, r["class"], "no_xml", f"no {r.image_id}.xml in {xml_dir}")
            continue
        try:
            boxes, tags, wh = parse_voc(xml)
        except (ET.ParseError, InputError) as exc:
            _note(quality, xml, r["class"], "bad_xml", str(exc))
            continue
        w, h = (r.width, r.height) if r.width > 0 else (wh or (-1, -1))
        kept = [k for k, box in enumerate(boxes) if not _bad_box(box, w, h, xml, r["class"], quality)]
        boxes, tags = [boxes[k] for k in kept], [tags[k] for k in kept]
        names = []
        for tag in tags:
            name = canonical_gc10(tag) if is_gc10 else tag
            if name is None or (not is_gc10 and name not in set(table["class"])):
                _note(quality, xml, r["class"], "unknown_tag", f"object labelled {tag!r}")
            names.append(name if name is not None else tag)
        if boxes and r["class"] not in names:
            labels = ", ".join(sorted(set(map(str, names))))
            _note(quality, r.path, r["class"], "folder_class_not_in_xml", f"XML labels: {labels}")
        table.at[i, "xml"] = str(xml)
        table.at[i, "boxes"] = boxes
        table.at[i, "box_classes"] = names
        if r.width < 0 and wh:
            table.at[i, "width"], table.at[i, "height"] = wh


def _bad_box(box: list[int], width: int, height: int, xml: Path, cls: str, quality: list[dict]) -> bool:
    """Whether a VOC box is impossible (no positive size, or outside the image by more than a
    pixel); if so, a ``bad_box`` quality row names the file and the box, and the box is dropped."""
    xmin, ymin, xmax, ymax = box
    problem = None
    if xmax <= xmin or ymax <= ymin:
        problem = "has no positive width and height"
    elif min(xmin, ymin) < 0 or (width > 0 and xmax > width + 1) or (height > 0 and ymax > height + 1):
        problem = f"lies outside the {width}x{height} image"
    if problem is not None:
        _note(quality, xml, cls, "bad_box", f"box {box} {problem}; dropped")
    return problem is not None


# --------------------------------------------------------------------------- summary


def summarize(ds: Dataset) -> dict:
    """JSON-ready summary: layout, per-class counts, image sizes, box statistics, quality."""
    t = ds.table
    counts = t["class"].value_counts()
    per_class = {c: int(counts.get(c, 0)) for c in ds.classes}
    present = {c: n for c, n in per_class.items() if n}
    n_boxes = t["boxes"].map(len)
    areas = []
    for _, r in t.iterrows():
        if r.width > 0 and r.height > 0:
            for b in r.boxes:
                areas.append(((b[2] - b[0]) * (b[3] - b[1])) / float(r.width * r.height))
    sizes = t.groupby(["width", "height"]).size().sort_values(ascending=False)
    return {
        "root": str(ds.root),
        "layout": ds.layout,
        "n_images": len(t),
        "n_classes": len(present),
        "classes": ds.classes,
        "images_per_class": per_class,
        "imbalance_ratio": (max(present.values()) / min(present.values())) if present else None,
        "image_sizes": [{"width": int(w), "height": int(h), "count": int(n)} for (w, h), n in sizes.items()],
        "boxes": {
            "images_with_xml": int(t["xml"].notna().sum()),
            "n_boxes": int(n_boxes.sum()),
            "boxes_per_image_mean": float(n_boxes[t["xml"].notna()].mean()) if t["xml"].notna().any() else 0.0,
            "relative_area_median": float(np.median(areas)) if areas else None,
        },
        "quality": {k: int(v) for k, v in ds.quality["problem"].value_counts().items()},
        "quality_rows": ds.quality.to_dict(orient="records"),
    }


def box_table(ds: Dataset) -> pd.DataFrame:
    """One row per box: image class, box class, pixel size and area relative to the image."""
    rows = []
    for _, r in ds.table.iterrows():
        for b, bc in zip(r.boxes, r.box_classes, strict=False):
            w, h = b[2] - b[0], b[3] - b[1]
            rel = (w * h) / float(r.width * r.height) if r.width > 0 else np.nan
            rows.append(
                {"image_id": r.image_id, "class": r["class"], "box_class": bc, "box_w": w, "box_h": h, "rel_area": rel}
            )
    return pd.DataFrame(rows, columns=["image_id", "class", "box_class", "box_w", "box_h", "rel_area"])


# --------------------------------------------------------------------------- split


def split_dataset(ds: Dataset, fractions: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 42) -> pd.DataFrame:
    """Seeded, stratified train/val/test split, grouped by image id.

    All files sharing an image id (the same file name in two class folders) go to the same
    subset. Every class with at least 3 groups gets at least one group in val and in test.
    Returns the manifest: ``path, class, label, image_id, subset``.
    """
    fr = np.asarray(fractions, dtype=float)
    if fr.shape != (3,) or np.any(fr < 0) or not np.isclose(fr.sum(), 1.0):
        raise InputError(f"fractions must be three non-negative numbers summing to 1, got {list(fractions)}")
    t = ds.table
    # Stratum of a group: its rarest class, so that rare classes are placed first and kept whole.
    freq = t["class"].value_counts()
    groups = t.groupby("image_id")["class"].agg(lambda s: min(s, key=lambda c: (freq[c], c)))
    rng = np.random.default_rng(seed)
    assign: dict[str, str] = {}
    for cls in sorted(groups.unique()):
        ids = sorted(groups[groups == cls].index)
        rng.shuffle(ids)
        n = len(ids)
        n_val = int(round(fr[1] * n))
        n_test = int(round(fr[2] * n))
        if n >= 3:
            n_val, n_test = max(n_val, 1 if fr[1] > 0 else 0), max(n_test, 1 if fr[2] > 0 else 0)
        n_val = min(n_val, n)
        n_test = min(n_test, n - n_val)
        for j, image_id in enumerate(ids):
            assign[image_id] = "val" if j < n_val else "test" if j < n_val + n_test else "train"
    man = t[["path", "class", "label", "image_id"]].copy()
    man["subset"] = man["image_id"].map(assign)
    return man.reset_index(drop=True)


def write_split(
    manifest: pd.DataFrame,
    path: str | Path,
    data_root: str | Path,
    *,
    classes: Sequence[str],
    seed: int,
    fractions: Sequence[float],
    overwrite: bool = False,
) -> Path:
    """Write the manifest as CSV (paths relative to ``data_root``) plus a ``.json`` sidecar
    recording the class order, seed and fractions. Both files are checked before either is
    written; neither is overwritten unless asked."""
    path = Path(path)
    sidecar = path.with_suffix(".json")
    if sidecar == path:
        raise InputError(f"{path}: the manifest is a CSV file and its sidecar is {sidecar.name}; choose a .csv name.")
    for f in (path, sidecar):
        if f.exists() and not overwrite:
            raise OutputExistsError(
                f"{f}: already exists (the split writes {path.name} and {sidecar.name}); choose another --out."
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    out = manifest[["path", "class", "label", "image_id", "subset"]].copy()
    root = Path(data_root).resolve()
    out["path"] = [str(Path(p).resolve().relative_to(root)) for p in out["path"]]
    out.to_csv(path, index=False)
    meta = {
        "data_root": str(root),
        "classes": list(classes),
        "seed": seed,
        "fractions": list(map(float, fractions)),
        "counts": {s: int((out.subset == s).sum()) for s in SUBSETS},
    }
    sidecar.write_text(json.dumps(meta, indent=2))
    return path


def split_counts(manifest: pd.DataFrame, classes: Sequence[str] | None = None) -> pd.DataFrame:
    """Images per class (rows, in ``classes`` order) and subset (columns train/val/test), with totals."""
    order = list(classes) if classes is not None else sorted(manifest["class"].unique())
    counts = pd.crosstab(manifest["class"], manifest["subset"]).reindex(index=order, columns=list(SUBSETS))
    counts = counts.fillna(0).astype(int)
    counts.loc["total"] = counts.sum()
    counts["total"] = counts.sum(axis=1)
    return counts


def read_split(path: str | Path, data_root: str | Path | None = None) -> pd.DataFrame:
    """Read a split manifest, resolving paths against ``data_root`` (default: the sidecar's).

    Every row is checked: a numeric ``label`` that names the row's ``class`` in the class order
    (the sidecar's, else the one the CSV's own label/class pairs give), a known ``subset``, no
    path listed twice. A problem is one error naming the file and the line, never a silent relabel.
    """
    path = Path(path)
    man = _read_manifest(path)
    classes = split_classes(path, man)
    for i, (cls, label) in enumerate(zip(man["class"], man["label"], strict=True)):
        if not 0 <= label < len(classes) or classes[label] != cls:
            named = f"{classes[label]!r}" if 0 <= label < len(classes) else "no class"
            raise DatasetError(
                f"{path}, line {i + 2}: label {label} is {named} in the class order {classes}, but the class "
                f"column says {cls!r}; fix the row or write the split again with `gc10 data split`."
            )
    if data_root is None:
        meta = _sidecar(path)
        if meta is None:
            raise DatasetError(
                f"{path}: no data_root given and no sidecar {path.with_suffix('.json').name} to find it."
            )
        data_root = meta["data_root"]
    root = Path(data_root)
    man["path"] = [str(root / p) for p in man["path"]]
    absent = [p for p in man["path"] if not Path(p).is_file()]
    if absent:
        raise DatasetError(f"{path}: {len(absent)} listed images are missing under {root}, e.g. {absent[0]}.")
    return man


def _read_manifest(path: Path) -> pd.DataFrame:
    """The CSV's rows, with one clear error for an empty or malformed file, a missing column, a
    non-numeric label, an unknown subset or a path listed twice."""
    if not path.is_file():
        raise NotFoundError(f"{path}: split manifest not found; create it with `gc10 data split`.")
    try:
        man = pd.read_csv(path, dtype={"image_id": str, "path": str, "class": str})
    except pd.errors.EmptyDataError:
        raise DatasetError(f"{path}: the split manifest is empty; create it with `gc10 data split`.") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: not a readable CSV ({str(exc).splitlines()[0]}).") from None
    missing = {"path", "class", "label", "subset"} - set(man.columns)
    if missing:
        raise DatasetError(f"{path}: not a split manifest, missing columns {sorted(missing)}.")
    labels = pd.to_numeric(man["label"], errors="coerce")
    bad = labels.isna() | (labels != labels.round())
    if bad.any():
        i = int(bad.to_numpy().argmax())
        raise DatasetError(f"{path}, line {i + 2}: label {man['label'].iloc[i]!r} is not a whole number.")
    man["label"] = labels.astype(int)
    unknown = ~man["subset"].isin(SUBSETS)
    if unknown.any():
        i = int(unknown.to_numpy().argmax())
        raise DatasetError(f"{path}, line {i + 2}: subset {man['subset'].iloc[i]!r} is not one of {list(SUBSETS)}.")
    dup = man["path"].duplicated()
    if dup.any():
        i = int(dup.to_numpy().argmax())
        first = int((man["path"] == man["path"].iloc[i]).to_numpy().argmax())
        raise DatasetError(f"{path}, line {i + 2}: {man['path'].iloc[i]} is listed again (first on line {first + 2}).")
    return man


def _sidecar(path: Path) -> dict | None:
    """A manifest's ``.json`` sidecar, checked: an object with a ``classes`` list; ``None`` without one."""
    meta = path.with_suffix(".json")
    if not meta.is_file():
        return None
    try:
        value = json.loads(meta.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{meta}: the split's sidecar is not valid JSON ({exc.__class__.__name__}).") from None
    ok = isinstance(value, dict) and isinstance(value.get("classes"), list) and value["classes"]
    if not ok or not all(isinstance(c, str) for c in value["classes"]):
        raise DatasetError(f"{meta}: the split's sidecar has no 'classes' list of names.")
    if "data_root" in value and not isinstance(value["data_root"], str):
        raise DatasetError(f"{meta}: the split's sidecar has a 'data_root' that is not a path.")
    return value


def split_classes(path: str | Path, manifest: pd.DataFrame | None = None) -> list[str]:
    """The class order of a split manifest: its sidecar's, else the one its own ``label``/``class``
    pairs give, when each label names one class and the labels run 0..k-1 without a gap."""
    path = Path(path)
    meta = _sidecar(path)
    if meta is not None:
        return list(meta["classes"])
    man = manifest if manifest is not None else _read_manifest(path)
    pairs = man[["label", "class"]].drop_duplicates()
    for col, other in (("label", "class"), ("class", "label")):
        clash = pairs[pairs[col].duplicated(keep=False)]
        if len(clash):
            values = sorted(map(str, clash[other]))
            raise DatasetError(
                f"{path}: {col} {clash[col].iloc[0]!r} goes with more than one {other} ({', '.join(values)}) "
                "and there is no sidecar to say which is right."
            )
    order = pairs.sort_values("label")
    if list(order["label"]) != list(range(len(order))):
        raise DatasetError(
            f"{path}: its labels {list(order['label'])} skip some classes and there is no sidecar "
            f"({path.with_suffix('.json').name}) naming them; write the split with `gc10 data split`."
        )
    return list(order["class"])


# --------------------------------------------------------------------------- class weights


CLASS_WEIGHT_MODES = ("balanced", "sqrt", "none")


def class_weights(labels: Sequence[int], n_classes: int | None = None, mode: str = "balanced") -> dict[int, float]:
    """Class weights keyed by label index.

    ``balanced``: ``n / (k * count)``; ``sqrt``: the square root of that (softer: the rarest class
    of GC10 gets about 2.4x instead of 5.7x); ``none``: 1 for every class. ``k`` is the number of
    classes present in ``labels``; absent classes are left out (Keras gives them weight 1, and they
    have no samples). The rarest class gets the largest weight, under its own label index.
    """
    if mode not in CLASS_WEIGHT_MODES:
        raise InputError(f"unknown class-weight mode {mode!r}; expected one of {CLASS_WEIGHT_MODES}")
    labels = np.asarray(labels, dtype=int)
    if labels.size == 0:
        raise InputError("class_weights: no labels")
    counts = np.bincount(labels, minlength=n_classes or 0)
    present = np.flatnonzero(counts)
    k = len(present)
    power = {"balanced": 1.0, "sqrt": 0.5, "none": 0.0}[mode]
    return {int(c): float((labels.size / (k * counts[c])) ** power) for c in present}


def label_table(root: str | Path) -> pd.DataFrame:
    """Label-only view: one row per VOC object in ``<root>/label/label`` (or ``<root>``), with the
    GC10 class of its tag, its corner, size and area relative to the image, and the image size. For the 2,280 real GC10 XMLs, which
    come without their images."""
    root = Path(root)
    xml_dir = root / "label" / "label" if (root / "label" / "label").is_dir() else root
    files = sorted(xml_dir.glob("*.xml"))
    if not files:
        raise DatasetError(f"{xml_dir}: no XML files found.")
    rows = []
    for f in files:
        boxes, tags, wh = parse_voc(f)
        w, h = wh if wh else (0, 0)
        for b, tag in zip(boxes, tags, strict=True):
            area = (b[2] - b[0]) * (b[3] - b[1])
            rows.append(
                {
                    "image_id": f.stem,
                    "tag": tag,
                    "class": canonical_gc10(tag) or f"unknown:{tag}",
                    "x0": b[0],
                    "y0": b[1],
                    "img_w": w,
                    "img_h": h,
                    "box_w": b[2] - b[0],
                    "box_h": b[3] - b[1],
                    "rel_area": area / float(w * h) if w and h else np.nan,
                }
            )
    return pd.DataFrame(rows)
