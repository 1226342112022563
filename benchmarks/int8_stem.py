"""Which layers an int8 LiteRT file keeps in float, and what each choice costs and buys.

    python benchmarks/int8_stem.py MODEL.keras DATA_DIR SPLIT_CSV
        [--keep "" "preprocess,conv1" "preprocess,conv1,conv_dw_1" stem ...]
        [--subsets val test] [--calibration 200] [--calibration-seed 42] [--out DIR]

Each ``--keep`` entry is one int8 file: a comma-separated list of Keras layer names kept in float
(``""``: full integer; ``stem``: the registry's default, :func:`gc10lib.export.float_stem_layers`;
``stem+conv_dw_2,conv_pw_2``: the default plus more). All are calibrated on the same
``--calibration`` train-split images (default 200 with seed 42, as the distill step does). Prints, per file and subset:
accuracy, log-loss and top-1 agreement with the Keras model, then its size and ms per image at
batch 1 (LiteRT on all cores; ``gc10lib.quantize.speed``, median of 20 single images, as the quantize step times).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import log_loss

from gc10lib.backbones import load_model
from gc10lib.export import calibration_images, float_stem_layers, int8_blob, logits_classifier, write_sidecar
from gc10lib.inputs import ImageCache
from gc10lib.layers import model_info
from gc10lib.predict import KerasPredictor, LiteRTPredictor, labelled_subset
from gc10lib.quantize import speed


def layers_of(entry: str, stem: list[str]) -> list[str]:
    """The layer list an ``--keep`` entry names."""
    names: list[str] = []
    for part in entry.replace("+", ",").split(","):
        part = part.strip()
        names += stem if part == "stem" else [part] if part else []
    return list(dict.fromkeys(names))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("data_dir")
    ap.add_argument("split_csv")
    ap.add_argument("--keep", nargs="+", default=["", "stem"])
    ap.add_argument("--subsets", nargs="+", default=["val", "test"])
    ap.add_argument("--calibration", type=int, default=200, help="number of calibration images")
    ap.add_argument("--calibration-seed", type=int, default=42)
    ap.add_argument("--out", help="folder for the .tflite files (default: a temporary one)")
    a = ap.parse_args()
    model = load_model(a.model)
    info = model_info(model)
    stem = float_stem_layers(info)
    cal = [
        np.asarray(im, np.float32)[None]
        for im in calibration_images(model, a.data_dir, a.split_csv, n=a.calibration, seed=a.calibration_seed)
    ]
    keras_pred = KerasPredictor(a.model)
    sets = {}
    for sub in a.subsets:
        table, mapping = labelled_subset(a.data_dir, a.split_csv, info.classes, sub)
        x = ImageCache(info.input_size, info.policy).load(list(table.path))
        y = np.array([mapping[int(v)] for v in table.label])
        sets[sub] = (x, y, keras_pred(x))
    labels = range(len(info.classes))
    for sub, (_, y, ref) in sets.items():
        print(
            f"keras {sub}: accuracy {np.mean(ref.argmax(1) == y):.4f}, log-loss {log_loss(y, np.clip(ref, 1e-7, 1), labels=labels):.4f}"
        )
    out = Path(a.out or tempfile.mkdtemp())
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as saved:
        logits_classifier(model).export(saved, format="tf_saved_model", verbose=False)
        for i, entry in enumerate(a.keep):
            keep = layers_of(entry, stem)
            f = out / f"int8_{i}.tflite"
            t0 = time.perf_counter()
            blob, keep = int8_blob(saved, cal, keep)
            f.write_bytes(blob)
            convert_s = time.perf_counter() - t0
            write_sidecar(f, info, "int8", "logits", keep)
            lite = LiteRTPredictor(f, batch_size=32)
            print(f"float: {', '.join(keep) or 'nothing (full integer)'}")
            for sub, (x, y, ref) in sets.items():
                p = lite(x)
                ll = log_loss(y, np.clip(p, 1e-7, 1), labels=labels)
                agree = np.mean(p.argmax(1) == ref.argmax(1))
                print(f"  {sub}: accuracy {np.mean(p.argmax(1) == y):.4f}, log-loss {ll:.4f}, agreement {agree:.3f}")
            x = next(iter(sets.values()))[0][:32]
            ms = speed(lambda b, lite=lite: lite(b, batch_size=len(b)), x, (1,), repeats=20)["latency_ms_b1"]
            print(
                f"  {f.stat().st_size / 2**20:.2f} MiB, {ms:.1f} ms per image at batch 1, converted in {convert_s:.0f} s"
            )


if __name__ == "__main__":
    main()
