"""The floor to beat: frozen MobileNet ImageNet features + scikit-learn logistic regression.

    GC10_WEIGHTS_DIR=../shared/weights python benchmarks/baseline_logreg.py RUN_DIR

Uses the run's own split manifest (``RUN_DIR/split.csv``) so the figure compares directly with
the run's ``summary.md``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import keras
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from gc10lib import backbones, data
from gc10lib.inputs import make_dataset


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("--size", type=int, default=224)
    args = ap.parse_args()
    run = Path(args.run_dir)
    data_dir = json.loads((run / "run.json").read_text())["config"]["data_dir"]
    man = data.read_split(run / "split.csv", data_root=data_dir)
    model, src = backbones.build_classifier("mobilenet", ["x"], img_size=args.size, weights="imagenet")
    feat = keras.Model(model.inputs, model.get_layer("pool").output)

    def features(part):
        return feat.predict(make_dataset(list(part.path), None, args.size), verbose=0)

    tr, te = man[man.subset == "train"], man[man.subset == "test"]
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(features(tr), tr.label)
    acc = float((clf.predict(features(te)) == te.label.to_numpy()).mean())
    print(f"{run.name}: frozen MobileNet ({src}) + logistic regression, test accuracy {acc:.4f} on {len(te)} images")


if __name__ == "__main__":
    main()
