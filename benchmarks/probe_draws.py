"""How much the probe row moves with the random flips of its augmented view.

    GC10_CACHE_DIR=... python benchmarks/probe_draws.py runs/elpv-s45-maps --backbone mobilenet --draws 8

The probe (:mod:`gc10lib.probe`) is fitted on two views of every training image: plain, and one
seeded random flip per image (:func:`gc10lib.maphead.flip_codes`). This refits it on other draws of
that second view, on the same split, and on all four flips at once (nothing drawn). The pooled
features come from the run's map cache (:func:`gc10lib.maphead.pooled_from_maps`), so the run's
``GC10_CACHE_DIR`` must still hold its maps; the test features come from a float32 pass of the
run's saved probe. It prints each fit's ``C``, val log-loss and accuracy, and test accuracy and
macro-F1, then the mean ± std over the draws.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import keras
import numpy as np
from sklearn.metrics import accuracy_score, f1_score

from gc10lib import data, maphead, probe
from gc10lib.backbones import floored_variance, load_model
from gc10lib.inputs import ImageCache
from gc10lib.layers import model_info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="a run folder with a trained map-head backbone step")
    ap.add_argument("--backbone", default="mobilenet")
    ap.add_argument("--draws", type=int, default=8, help="draws of the flipped view (seeds run seed .. + draws - 1)")
    args = ap.parse_args()

    step = args.run / "steps" / f"02_finetune_{args.backbone}"
    metrics = json.loads((step / "metrics.json").read_text())
    cfg = metrics["config"]
    man = data.read_split(args.run / "split.csv")
    tr, va, te = (man[man.subset == s] for s in ("train", "val", "test"))
    model = load_model(step / "probe" / "model.keras")
    info = model_info(model)
    src, _, cut = maphead.map_source(model, cfg["map_fraction"], args.backbone, info.input_size, info.policy)
    per_flip = np.stack([maphead.pooled_from_maps(model, cut, src.maps(list(tr.path), c)) for c in maphead.FLIPS])
    x_val = maphead.pooled_from_maps(model, cut, src.maps(list(va.path), 0))
    pool = keras.Model(model.inputs, model.get_layer("pool").output)
    test_images = ImageCache(info.input_size, info.policy).load(list(te.path)).astype("float32")
    x_test = np.asarray(pool.predict(test_images, batch_size=32, verbose=0))
    y_tr, y_va, y_te = (d.label.to_numpy() for d in (tr, va, te))
    cw = data.class_weights(tr.label, len(info.classes), cfg["class_weight"])

    def fit(x: np.ndarray, y: np.ndarray, label: str) -> tuple[float, float, float]:
        mean, std = x.mean(0), np.sqrt(floored_variance(x))
        p = probe.fit_probe((x - mean) / std, y, (x_val - mean) / std, y_va, len(info.classes), cw, seed=cfg["seed"])
        pred_val = p.predict_proba((x_val - mean) / std).argmax(1)
        pred_test = p.predict_proba((x_test - mean) / std).argmax(1)
        acc, f1 = accuracy_score(y_te, pred_test), f1_score(y_te, pred_test, average="macro")
        print(
            f"{label:26s} C {p.C:<6} val log-loss {p.val_log_loss:.4f}  val acc {accuracy_score(y_va, pred_val):.4f}"
            f"  test acc {acc:.4f}  macro-F1 {f1:.4f}"
        )
        return p.val_log_loss, acc, f1

    rows = np.arange(len(tr))
    results = []
    for seed in range(cfg["seed"], cfg["seed"] + args.draws):
        codes = maphead.flip_codes(seed, 2, len(tr))[1]
        x = np.concatenate([per_flip[0], per_flip[codes, rows]])
        results.append(fit(x, np.concatenate([y_tr, y_tr]), f"plain + flips of seed {seed}"))
    r = np.array(results)
    print(
        f"{args.backbone}, {args.draws} draws: val log-loss {r[:, 0].mean():.4f} ± {r[:, 0].std():.4f}, "
        f"test acc {r[:, 1].mean():.4f} ± {r[:, 1].std():.4f} ({r[:, 1].min():.4f}-{r[:, 1].max():.4f}), "
        f"macro-F1 {r[:, 2].mean():.4f} ± {r[:, 2].std():.4f}"
    )
    fit(np.concatenate(list(per_flip)), np.concatenate([y_tr] * len(per_flip)), "all four flips")


if __name__ == "__main__":
    main()
