"""How an int8 LiteRT file's output probabilities differ from its Keras model's, on validation.

    python benchmarks/int8_outputs.py RUN/steps/06_distill DATA_DIR [--split-csv RUN/split.csv]
        [--model model.keras] [--tflite student_int8.tflite] [--subset val]

Prints, for the Keras model and the int8 file: accuracy and log-loss on the subset; then the
distinct output values of the int8 file (in units of 1/256: an int8 file that ends in its softmax,
as gc10lib wrote them before 2026-11-28, has at most 257; one that returns logits, as now, has
about as many as its outputs), how many true-class probabilities read as exactly 0 in int8, and
the lowest true-class probabilities side by side.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from sklearn.metrics import log_loss

from gc10lib.inputs import ImageCache
from gc10lib.predict import KerasPredictor, LiteRTPredictor, labelled_subset


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("step_dir", type=Path, help="a folder holding the model and its int8 file (a distill step)")
    ap.add_argument("data_dir")
    ap.add_argument("--split-csv", help="default: <step_dir>/../../split.csv")
    ap.add_argument("--model", default="model.keras")
    ap.add_argument("--tflite", default="student_int8.tflite")
    ap.add_argument("--subset", default="val")
    args = ap.parse_args()
    split = args.split_csv or args.step_dir.parent.parent / "split.csv"
    keras_pred = KerasPredictor(args.step_dir / args.model)
    table, mapping = labelled_subset(args.data_dir, split, keras_pred.classes, args.subset)
    x = ImageCache(keras_pred.input_size, keras_pred.policy).load(list(table.path))
    y = np.array([mapping[int(v)] for v in table.label])
    probas = {"keras": keras_pred(x), "int8": LiteRTPredictor(args.step_dir / args.tflite, batch_size=32)(x)}
    labels = range(len(keras_pred.classes))
    for name, p in probas.items():
        ll = log_loss(y, np.clip(p, 1e-7, 1), labels=labels)
        print(f"{name}: {args.subset} accuracy {np.mean(p.argmax(1) == y):.4f}, log-loss {ll:.4f} ({len(y)} images)")
    steps = np.unique(np.round(probas["int8"] * 256, 3))
    lite = LiteRTPredictor(args.step_dir / args.tflite)
    print(
        f"int8 file returns {lite.output}; its probabilities x 256: {len(steps)} distinct, first {steps[:10].tolist()}"
    )
    true = {k: p[np.arange(len(y)), y] for k, p in probas.items()}
    print(f"true-class probability exactly 0 in int8: {int((true['int8'] == 0).sum())}")
    low = np.argsort(true["int8"])[:5]
    print("lowest true-class probabilities, int8:", np.round(true["int8"][low], 5).tolist())
    print("                      the same, Keras:", np.round(true["keras"][low], 5).tolist())


if __name__ == "__main__":
    main()
