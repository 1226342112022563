"""Property-based tests of the readers of user input: whatever the bytes, each ends in a result or in
one :class:`~gc10lib.errors.Gc10Error` (or, for the image decoder, the one error it documents) and
never in another exception. Seeded and bounded (60 examples each; ``GC10_FUZZ_EXAMPLES=600`` for a longer
search), so they run in ``make test-fast``."""

from __future__ import annotations

import contextlib
import io
import json
import os

import pandas as pd
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from PIL import Image

from gc10lib import config, data
from gc10lib.errors import Gc10Error
from gc10lib.inference import read_tflite_sidecar
from gc10lib.inputs import ImageReadError, load_rgb

FUZZ = settings(
    max_examples=int(os.environ.get("GC10_FUZZ_EXAMPLES", 60)),
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200)


@seed(42)
@FUZZ
@given(body=TEXT, sidecar=st.one_of(st.none(), TEXT))
def test_split_reader_on_any_text(tmp_path_factory, body, sidecar):
    folder = tmp_path_factory.mktemp("split")
    path = folder / "s.csv"
    path.write_text(body)
    if sidecar is not None:
        path.with_suffix(".json").write_text(sidecar)
    with contextlib.suppress(Gc10Error):
        data.read_split(path, data_root=folder)


@seed(42)
@FUZZ
@given(
    rows=st.lists(
        st.tuples(
            st.sampled_from(["a.png", "b.png", "c.png", "d.png"]),
            st.sampled_from(["x", "y", "z"]),
            st.one_of(st.integers(-2, 4), st.sampled_from(["1.5", "one", ""])),
            st.sampled_from(["train", "val", "test", "other"]),
        ),
        max_size=8,
    ),
    with_sidecar=st.booleans(),
)
def test_split_reader_on_any_rows(tmp_path_factory, rows, with_sidecar):
    folder = tmp_path_factory.mktemp("rows")
    for name in ("a.png", "b.png", "c.png", "d.png"):
        Image.new("RGB", (4, 4)).save(folder / name)
    path = folder / "s.csv"
    pd.DataFrame(rows, columns=["path", "class", "label", "subset"]).to_csv(path, index=False)
    if with_sidecar:
        path.with_suffix(".json").write_text(json.dumps({"classes": ["x", "y", "z"], "data_root": str(folder)}))
    try:
        man = data.read_split(path, data_root=folder)
    except Gc10Error:
        return
    classes = data.split_classes(path, pd.read_csv(path))
    assert all(classes[label] == cls for label, cls in zip(man.label, man["class"], strict=True))  # never mislabelled


@seed(42)
@FUZZ
@given(
    coords=st.lists(
        st.one_of(st.integers(-100, 3000), st.sampled_from(["", "abc", "1e3", "12.5"])), min_size=4, max_size=4
    ),
    size=st.one_of(st.none(), st.tuples(st.integers(-5, 3000), st.integers(-5, 3000))),
    garbage=st.booleans(),
)
def test_voc_parser_on_any_box(tmp_path_factory, coords, size, garbage):
    path = tmp_path_factory.mktemp("voc") / "a.xml"
    box = "".join(f"<{k}>{v}</{k}>" for k, v in zip(("xmin", "ymin", "xmax", "ymax"), coords, strict=True))
    dims = f"<size><width>{size[0]}</width><height>{size[1]}</height></size>" if size else ""
    text = f"<annotation>{dims}<object><name>x</name><bndbox>{box}</bndbox></object></annotation>"
    path.write_text(text[: len(text) // 2] if garbage else text)
    with contextlib.suppress(Gc10Error, data.ET.ParseError):
        data.parse_voc(path)


@seed(42)
@FUZZ
@given(
    text=st.one_of(
        TEXT,
        st.dictionaries(
            st.sampled_from(["classes", "size", "policy"]),
            st.one_of(st.none(), st.integers(), TEXT, st.lists(TEXT, max_size=3)),
        ).map(json.dumps),
    )
)
def test_tflite_sidecar_reader_on_any_text(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("lite") / "m.tflite.json"
    path.write_text(text)
    try:
        meta = read_tflite_sidecar(path)
    except Gc10Error:
        return
    assert meta["classes"] and all(isinstance(c, str) for c in meta["classes"])


@seed(42)
@FUZZ
@given(
    pairs=st.lists(
        st.tuples(
            st.sampled_from(
                ["epochs_head", "img_size", "lr_head", "backbones", "fractions", "seed", "augment", "nope"]
            ),
            TEXT,
        ),
        max_size=4,
    )
)
def test_overrides_and_the_run_config_check_on_any_values(pairs):
    cfg = {
        "backbones": ["mobilenet"],
        "fractions": [0.7, 0.15, 0.15],
        "epochs_head": 1,
        "img_size": 64,
        "lr_head": 1e-3,
        "seed": 1,
        "augment": True,
    }
    try:
        out = config.apply_overrides(cfg, pairs, {**cfg, "nope": None})
        config.check_run_config(out, ["02_finetune", "06_distill"])
    except Gc10Error:
        pass


@seed(42)
@FUZZ
@given(
    cut=st.integers(0, 2000),
    flips=st.lists(st.integers(0, 2000), max_size=6),
    fmt=st.sampled_from(["PNG", "JPEG", "TIFF", "BMP"]),
)
def test_image_decoder_on_mutated_bytes(tmp_path_factory, cut, flips, fmt):
    buf = io.BytesIO()
    Image.new("RGB", (24, 16), (120, 60, 30)).save(buf, format=fmt)
    raw = bytearray(buf.getvalue())
    for i in flips:
        raw[i % len(raw)] ^= 0xFF
    path = tmp_path_factory.mktemp("img") / f"x.{fmt.lower()}"
    path.write_bytes(bytes(raw[: max(1, len(raw) - cut)]))
    try:
        img = load_rgb(path)
    except ImageReadError:
        return
    assert img.dtype.name == "uint8" and img.ndim == 3 and img.shape[2] == 3
