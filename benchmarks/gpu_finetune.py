"""Whole-network fine-tuning on a GPU, on any Keras 3 backend: what the CPU budget leaves out.

The CPU configs train heads on cached features and never unfreeze a whole backbone (too slow on 2
cores). This script does the full-size version on a GPU machine, with no TensorFlow needed (run it
under ``KERAS_BACKEND=jax``; measured there). It uses the run's own split manifest, the same
``gc10lib`` classifier (preprocessing inside the model), the same square-root class weights and
flips, and keeps the best validation state over both phases:

1. head only, backbone frozen (``--epochs-head``, Adam ``--lr-head``);
2. the whole backbone unfrozen, BatchNorm kept in inference mode (``--epochs-finetune``, Adam with
   linear warm-up over the first 10% of steps, then cosine decay from ``--lr``, gradients clipped
   at norm 1).

``--bn`` chooses what BatchNorm does: ``frozen`` keeps the ImageNet statistics in inference mode
(as the CPU configs do, and the best setting measured), ``calibrated`` first resets them to the
training images' statistics, ``train`` also lets them follow batch statistics in phase 2.

One process trains one (split, backbone, bn, lr) and writes ``<tag>.json`` (history, best phase and
epoch, val and test metrics) and ``<tag>.npz`` (val and test probabilities) under ``--out``::

    KERAS_BACKEND=jax python benchmarks/gpu_finetune.py ../shared/data/elpv \\
        --split runs/elpv-s42/split.csv --backbone mobilenet --lr 3e-5 --epochs-finetune 12 --out gpu-ft

``--report DIR`` then reads every result in DIR: for each split and backbone it keeps the setting (bn,
lr) with the lowest validation log-loss (validation chooses, test only reports), averages the chosen
members' probabilities (the ``mean`` ensemble), and prints test figures per split and as mean ± std.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from gc10lib.backbones import adapt_feature_norm, build_classifier, calibrate_batchnorm, set_finetune_trainable
from gc10lib.data import class_weights, read_split
from gc10lib.evaluation import compute_metrics
from gc10lib.inputs import ImageCache

KEYS = ("accuracy", "balanced_accuracy", "macro_f1", "log_loss")


class Batches(keras.utils.PyDataset):
    """Shuffled, randomly flipped (both axes) training batches with per-sample class weights."""

    def __init__(self, x: np.ndarray, y: np.ndarray, w: np.ndarray, batch: int, seed: int):
        super().__init__()
        self.x, self.y, self.w, self.batch = x, y, w, batch
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(len(x))

    def __len__(self) -> int:
        return math.ceil(len(self.x) / self.batch)

    def __getitem__(self, i: int):
        idx = self.order[i * self.batch : (i + 1) * self.batch]
        xb = self.x[idx].astype("float32")
        for j in range(len(xb)):
            if self.rng.random() < 0.5:
                xb[j] = xb[j, :, ::-1]
            if self.rng.random() < 0.5:
                xb[j] = xb[j, ::-1]
        return xb, self.y[idx], self.w[idx]

    def on_epoch_end(self) -> None:
        self.order = self.rng.permutation(len(self.x))


class KeepBest(keras.callbacks.Callback):
    """Scores validation after every epoch and snapshots the weights with the lowest log-loss."""

    def __init__(self, x: np.ndarray, y: np.ndarray, n_classes: int, batch: int):
        super().__init__()
        self.x, self.y, self.n, self.batch = x, y, n_classes, batch
        self.phase, self.best, self.weights, self.history, self.t0 = "head", math.inf, None, [], time.time()

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        proba = self.model.predict(self.x, batch_size=self.batch, verbose=0)
        m = compute_metrics(self.y, proba, [str(i) for i in range(self.n)], n_boot=0)
        row = {"phase": self.phase, "epoch": epoch + 1, "loss": float((logs or {}).get("loss", math.nan))}
        row |= {f"val_{k}": m[k] for k in KEYS} | {"s": round(time.time() - self.t0, 1)}
        self.history.append(row)
        if m["log_loss"] < self.best:
            self.best, self.weights, self.best_at = m["log_loss"], self.model.get_weights(), (self.phase, epoch + 1)
        print(json.dumps(row), flush=True)


def train(args: argparse.Namespace) -> None:
    out = Path(args.out)
    tag = f"{Path(args.split).parent.name}_{args.backbone}_{args.bn}_lr{args.lr:g}"
    if (out / f"{tag}.json").exists():
        raise SystemExit(f"{out / tag}.json exists: choose another --out rather than overwrite that result")
    man = read_split(args.split, args.data_dir)
    classes = list(dict(sorted(zip(man["label"], man["class"], strict=True))).values())
    parts = {s: man[man["subset"] == s] for s in ("train", "val", "test")}
    t0 = time.time()
    images = ImageCache(args.img_size, "stretch")  # the pipeline's cache of resized images (as the configs)
    x = {s: images.load(list(p["path"])) for s, p in parts.items()}
    y = {s: p["label"].to_numpy("int64") for s, p in parts.items()}
    load_s = time.time() - t0
    cw = class_weights(y["train"], len(classes), args.class_weight)
    w = np.array([cw[int(c)] for c in y["train"]], "float32")

    model, source = build_classifier(
        args.backbone, classes, args.img_size, args.weights, seed=args.seed, policy="stretch"
    )
    if args.bn != "frozen":
        calibrate_batchnorm(model, x["train"], batch_size=args.batch)
    pool = keras.Model(model.inputs, model.get_layer("pool").output)
    adapt_feature_norm(model.get_layer("head"), pool.predict(x["train"], batch_size=args.batch, verbose=0))
    data = Batches(x["train"], y["train"], w, args.batch, args.seed)
    best = KeepBest(x["val"], y["val"], len(classes), args.batch)
    backbone = model.get_layer("backbone")
    t1 = time.time()

    backbone.trainable = False
    model.compile(keras.optimizers.Adam(args.lr_head), "sparse_categorical_crossentropy")
    model.fit(data, epochs=args.epochs_head, callbacks=[best], verbose=2)

    set_finetune_trainable(model, 1.0)  # every layer but BatchNorm
    if args.bn == "train":  # BatchNorm too: batch statistics while training, moving averages updated
        backbone.trainable = True
    steps = args.epochs_finetune * len(data)
    warm = max(1, round(0.1 * steps))
    lr = keras.optimizers.schedules.CosineDecay(0.0, steps - warm, warmup_target=args.lr, warmup_steps=warm)
    model.compile(keras.optimizers.Adam(lr, global_clipnorm=1.0), "sparse_categorical_crossentropy")
    best.phase = "finetune"
    model.fit(data, epochs=args.epochs_finetune, callbacks=[best], verbose=2)
    train_s = time.time() - t1

    model.set_weights(best.weights)
    proba = {s: model.predict(x[s], batch_size=args.batch, verbose=0) for s in ("val", "test")}
    full = {s: compute_metrics(y[s], proba[s], classes, n_boot=0) for s in proba}
    metrics = {s: {k: m[k] for k in KEYS} for s, m in full.items()}
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / f"{tag}.npz", **{f"{s}_proba": p for s, p in proba.items()}, val_y=y["val"], test_y=y["test"])
    record = {
        "tag": tag,
        "split": str(args.split),
        "split_name": Path(args.split).parent.name,
        "backbone": args.backbone,
        "lr": args.lr,
        "bn": args.bn,
        "img_size": args.img_size,
        "epochs_head": args.epochs_head,
        "epochs_finetune": args.epochs_finetune,
        "class_weight": args.class_weight,
        "seed": args.seed,
        "weights": source,
        "keras_backend": keras.backend.backend(),
        "classes": classes,
        "best_phase": best.best_at[0],
        "best_epoch": best.best_at[1],
        "load_s": round(load_s, 1),
        "train_s": round(train_s, 1),
        "val": metrics["val"],
        "test": metrics["test"],
        "history": best.history,
    }
    (out / f"{tag}.json").write_text(json.dumps(record, indent=1))
    print(f"{tag}: best {best.best_at}, test {metrics['test']}, {train_s:.0f} s training", flush=True)


def report(folder: Path) -> None:
    rows = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    if not rows:
        raise SystemExit(f"{folder}: no results (*.json) to report")
    df = pd.DataFrame(
        [
            {k: r[k] for k in ("tag", "split_name", "backbone", "bn", "lr", "best_phase", "best_epoch", "train_s")}
            | {f"val_{k}": r["val"][k] for k in KEYS}
            | {f"test_{k}": r["test"][k] for k in KEYS}
            for r in rows
        ]
    )
    df["lr"] = [f"Adam {v:g}" for v in df["lr"]]  # a label, so that tables do not round it
    print("## Every run\n")
    print(
        df.drop(columns="tag")
        .sort_values(["split_name", "backbone", "bn", "lr"])
        .to_markdown(index=False, floatfmt=".4f")
    )
    by_variant = df.groupby(["backbone", "bn", "lr"])[["val_log_loss", "test_accuracy", "test_macro_f1"]]
    print("\n## Each setting, mean ± std over splits\n")
    print(by_variant.agg(["mean", "std"]).to_markdown(floatfmt=".4f"))
    chosen = df.loc[df.groupby(["split_name", "backbone"])["val_log_loss"].idxmin()]
    ens = []
    for split, grp in chosen.groupby("split_name"):
        probs = [np.load(folder / f"{tag}.npz") for tag in grp["tag"]]
        row = {"split_name": split, "backbone": "ensemble_mean", "bn": "", "lr": ""}
        classes = rows[0]["classes"]
        for s in ("val", "test"):
            m = compute_metrics(probs[0][f"{s}_y"], np.mean([p[f"{s}_proba"] for p in probs], 0), classes, n_boot=0)
            row |= {f"{s}_{k}": m[k] for k in KEYS}
        ens.append(row)
    table = pd.concat([chosen, pd.DataFrame(ens)], ignore_index=True)
    print("\n## Setting chosen on validation (lowest val log-loss per split and backbone), and their mean\n")
    cols = [
        "split_name",
        "backbone",
        "bn",
        "lr",
        "best_phase",
        "val_log_loss",
        "test_accuracy",
        "test_balanced_accuracy",
        "test_macro_f1",
    ]
    print(table[cols].sort_values(["split_name", "backbone"]).to_markdown(index=False, floatfmt=".4f"))
    stats = table.groupby("backbone")[["test_accuracy", "test_balanced_accuracy", "test_macro_f1"]].agg(["mean", "std"])
    print("\n## Test, mean ± std over splits\n")
    print(stats.to_markdown(floatfmt=".4f"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data_dir", nargs="?", help="the data folder the split manifest's paths are relative to")
    ap.add_argument("--split", help="split.csv of a run (gc10 data split, or a run folder's)")
    ap.add_argument("--backbone", default="mobilenet")
    ap.add_argument("--weights", default="imagenet", help="imagenet (GC10_WEIGHTS_DIR, else download) or a file")
    ap.add_argument("--img-size", type=int, default=300)
    ap.add_argument("--epochs-head", type=int, default=5)
    ap.add_argument("--epochs-finetune", type=int, default=12)
    ap.add_argument("--lr-head", type=float, default=1e-3)
    ap.add_argument("--lr", type=float, default=3e-5, help="peak learning rate of the whole-network phase")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument(
        "--bn",
        default="frozen",
        choices=["frozen", "calibrated", "train"],
        help="frozen: ImageNet BatchNorm statistics, never updated (the CPU configs); calibrated: reset to "
        "the training images' statistics first, then frozen; train: calibrated, then updated with batch "
        "statistics during the whole-network phase",
    )
    ap.add_argument("--class-weight", default="sqrt", choices=["balanced", "sqrt", "none"])
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--out", default="gpu-finetune")
    ap.add_argument("--report", type=Path, help="summarise the results in this folder instead of training")
    args = ap.parse_args()
    if args.report:
        report(args.report)
    elif not (args.data_dir and args.split):
        ap.error("training needs data_dir and --split (or give --report DIR)")
    else:
        train(args)


if __name__ == "__main__":
    main()
