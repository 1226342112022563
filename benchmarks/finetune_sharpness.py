"""Why fine-tuning can hurt on a dataset: how sharp the loss is around the probe, measured.

    GC10_WEIGHTS_DIR=../shared/weights python benchmarks/finetune_sharpness.py ../shared/data/elpv \\
        --backbone mobilenet --img-size 300 --fraction 0.3

Starting from what training hands over to the fine-tune (ImageNet backbone, standardized pooled
features, the probe written into the head), on ``--n`` seeded training images:

1. the probe's loss on them (plain images, sample weights as training uses them);
2. per unfrozen variable, the gradient norm of one batch against the variable's own norm;
3. for each step size ``--steps`` (the step's norm over the unfrozen weights' norm), one plain
   SGD step along that batch's gradient (top ``--fraction`` of the backbone, BatchNorm frozen,
   head fixed), then:
   - the SGD learning rate that step size takes,
   - the loss on all ``--n`` images after it,
   - how much of the pooled-feature shift is common to every image (a shift the fixed feature
     standardization turns into the same logit offset everywhere), and
   - the loss once the head's standardization is refitted to the shifted features.

A step of a few 1e-4 relative that multiplies the loss says the surface is too sharp for the
fine-tune to pay at CPU budgets; the probe (which training always keeps as a candidate) is then
the model to beat. Prints a table; no files are written besides the image and feature caches.
"""

from __future__ import annotations

import argparse
import time

import keras
import numpy as np
import tensorflow as tf

from gc10lib import data, probe, training
from gc10lib.backbones import build_classifier
from gc10lib.inputs import ImageCache


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data_dir")
    ap.add_argument("--backbone", default="mobilenet")
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--fraction", type=float, default=0.3, help="top fraction of the backbone unfrozen")
    ap.add_argument("--n", type=int, default=512, help="training images the losses are measured on")
    ap.add_argument(
        "--steps", type=float, nargs="+", default=[1e-4, 3e-4, 1e-3], help="step norms relative to the weights' norm"
    )
    ap.add_argument("--class-weight", default="sqrt", choices=["balanced", "sqrt", "none"])
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args()
    t0 = time.perf_counter()
    ds = data.discover(args.data_dir)
    man = data.split_dataset(ds, (0.7, 0.15, 0.15), args.seed)
    tr, va = man[man.subset == "train"], man[man.subset == "val"]
    cw = data.class_weights(tr.label, len(ds.classes), args.class_weight)
    pick = tr.sample(min(args.n, len(tr)), random_state=args.seed)
    y = pick.label.to_numpy()
    sw = np.array([cw[int(c)] for c in y], dtype=np.float32)

    training.set_seeds(args.seed)
    model, source = build_classifier(args.backbone, ds.classes, args.img_size, "imagenet", 0.2, None, args.seed)
    model.get_layer("backbone").trainable = False
    head = model.get_layer("head")
    kw = dict(size=args.img_size, policy="stretch", weights_source=source, backbone=args.backbone, seed=args.seed)
    f_tr, _ = training.extract_features(model, list(tr.path), **kw)
    f_va, _ = training.extract_features(model, list(va.path), **kw)
    training.adapt_feature_norm(head, f_tr)
    p = probe.fit_probe(
        probe.standardize(head, f_tr), tr.label, probe.standardize(head, f_va), va.label, len(ds.classes), cw
    )
    probe.set_head(head, p)
    x = ImageCache(args.img_size, "stretch").load(list(pick.path)).astype("float32")
    pool = keras.Model(model.inputs, model.get_layer("pool").output)
    ce = keras.losses.SparseCategoricalCrossentropy()

    def loss_all() -> float:
        # eager calls: a traced ``predict`` would keep the standardization it was traced with
        proba = np.concatenate([keras.ops.convert_to_numpy(model(x[i : i + 64])) for i in range(0, len(x), 64)])
        return float(ce(y, proba, sample_weight=sw))

    f0 = f_tr[tr.index.get_indexer(pick.index)]  # the same images' pooled features, already extracted
    loss0 = loss_all()
    print(
        f"{args.data_dir}: {args.backbone} {args.img_size} px, top {args.fraction:.0%} unfrozen, "
        f"probe C={p.C} (val log-loss {p.val_log_loss:.3f}); {len(y)} train images"
    )
    print(
        f"pooled features: median image-to-image std {np.median(f0.std(0)):.3f}, median |mean| {np.median(np.abs(f0.mean(0))):.3f}"
    )
    print(f"loss at the hand-over: {loss0:.3f}")

    training.set_finetune_trainable(model, args.fraction)
    variables = [v for v in model.trainable_variables if "head" not in v.path]
    start = [keras.ops.convert_to_numpy(v) for v in variables]
    b = slice(0, 32)
    with tf.GradientTape() as tape:
        loss = ce(y[b], model(x[b], training=True), sample_weight=sw[b])
    grads = tape.gradient(loss, variables)
    rows = sorted(
        (
            (float(tf.norm(g)), float(np.linalg.norm(w)), v.path)
            for g, w, v in zip(grads, start, variables, strict=True)
        ),
        reverse=True,
    )
    print("\nlargest gradients (one batch of 32):")
    print("| variable | gradient norm | weight norm | ratio |\n|---|---|---|---|")
    for g, w, path in rows[:6]:
        print(f"| {path} | {g:.2f} | {w:.2f} | {g / w:.2f} |")
    w_norm = float(np.sqrt(sum(np.sum(w**2) for w in start)))
    g_norm = float(tf.linalg.global_norm(grads))
    print("\none SGD step on that gradient (unfrozen backbone only), then on all images:")
    print(
        "| step / weights | SGD lr | loss | share of the feature shift common to all images | loss, standardization refitted |"
    )
    print("|---|---|---|---|---|")
    norm = head.get_layer("feature_norm")
    norm_w = [keras.ops.convert_to_numpy(w) for w in norm.weights]
    for rel in args.steps:
        lr = rel * w_norm / g_norm
        for v, w, g in zip(variables, start, grads, strict=True):
            v.assign(w - lr * np.asarray(g))
        f1 = pool.predict(x, batch_size=64, verbose=0)
        loss1 = loss_all()
        shift = f1 - f0
        common = float(np.linalg.norm(shift.mean(0)) * np.sqrt(len(shift)) / (np.linalg.norm(shift) + 1e-12))
        training.adapt_feature_norm(head, f1)
        loss2 = loss_all()
        for v, w in zip(norm.weights, norm_w, strict=True):
            v.assign(w)
        norm.finalize_state()
        print(f"| {rel:g} | {lr:.2g} | {loss1:.3f} | {common**2:.0%} | {loss2:.3f} |")
    for v, w in zip(variables, start, strict=True):
        v.assign(w)
    print(f"\n{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
