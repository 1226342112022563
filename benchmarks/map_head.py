"""A small head trained from scratch on cached middle-layer feature maps, against the probe.

    GC10_WEIGHTS_DIR=../shared/weights python benchmarks/map_head.py ../shared/data/elpv \\
        --backbone mobilenet --img-size 300 --seeds 42 43

Fine-tuning the pretrained top of a backbone could not beat the frozen-feature probe on ELPV
(README, "Why fine-tuning hurt"; ``benchmarks/finetune_sharpness.py``). This measures the
alternative: keep the whole pretrained backbone frozen up to a middle layer, cache its feature maps
for the four flips of every training image (one backbone pass each, then never again), and train a
new, well-conditioned head on them: 1x1 conv to ``--width`` channels, 3x3 conv, each with
BatchNorm and ReLU, average plus max pooling, dropout, softmax; Adam with warm-up and cosine decay,
class weights as training uses them. Each epoch shows every training image once, in a random one of
its four flips. The epoch with the lowest validation log-loss is reported on test, next to the
probe (logistic regression on the last layer's pooled features, ``C`` chosen on validation).

The cut is the last layer at or below ``1 - --fraction`` of the backbone's depth whose output alone
feeds the rest (MobileNet at 0.3: ``conv_pw_9_bn``, 18x18x512 at 300 px). Maps are cached as
float16 under ``<GC10_CACHE_DIR>/maps/`` (MobileNet at 300 px: about 2 GB for ELPV's 1,469 training
images and four flips). Seeded 70/15/15 split; ``--seeds`` vary only the head's initialisation and
the epochs' order. ``--tta`` adds a row per head with its output averaged over the four flips.

Regularizers and decision rules measured against the plain head (README, Results -> ELPV, "Tried on
ELPV since"): ``--label-smoothing EPS`` trains on smoothed one-hot targets; ``--focal GAMMA``
on the focal loss (class weights still on); ``--mixup ALPHA`` mixes each batch with a shuffled copy
of itself (maps, targets and sample weights, ``lam ~ Beta(ALPHA, ALPHA)``); ``--prior-correction``
adds per-class log-biases to the head's output (the flip-averaged one with ``--tta``), fitted on
validation for the highest macro-F1 and scored three ways: on the validation images it was fitted
on, cross-fitted over five stratified folds of them (the honest figure), and on test.

The head, its training and the map cache are :mod:`gc10lib.maphead`, which training runs as phase
``maps`` with ``map_head: true``; this script adds the seeds, the test rows and the flip averaging.
"""

from __future__ import annotations

import argparse
import time

import keras
import numpy as np
from sklearn.metrics import f1_score

from gc10lib import data, maphead, probe, training
from gc10lib.backbones import build_classifier
from gc10lib.ensemble import validation_folds


class SoftBatches(maphead.FlipBatches):
    """:class:`maphead.FlipBatches` with one-hot targets, smoothed by ``eps``, and mixup of strength ``alpha``."""

    eps, alpha, k = 0.0, 0.0, 2

    def __getitem__(self, i: int):
        x, y, w = super().__getitem__(i)
        y = np.eye(self.k, dtype=np.float32)[y] * (1 - self.eps) + self.eps / self.k
        if self.alpha > 0:
            lam = self.rng.beta(self.alpha, self.alpha, len(x)).astype(np.float32)
            lam = np.maximum(lam, 1 - lam)  # the batch's own image dominates its mix
            p = self.rng.permutation(len(x))
            x = lam[:, None, None, None] * x + (1 - lam[:, None, None, None]) * x[p]
            y, w = lam[:, None] * y + (1 - lam[:, None]) * y[p], lam * w + (1 - lam) * w[p]
        return x, y, w


BIAS_GRID = np.linspace(-3, 3, 61)


def shift(proba: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``proba`` with per-class log-biases ``b`` added, renormalized."""
    return probe.softmax(np.log(np.clip(proba, 1e-12, 1.0)) + b)


def fit_log_bias(y: np.ndarray, proba: np.ndarray, grid=BIAS_GRID, rounds: int = 3) -> np.ndarray:
    """Per-class log-biases (class 0 fixed at 0) that maximize macro-F1 of ``argmax(log proba + b)``,
    by coordinate search over ``grid``."""
    logp, b = np.log(np.clip(proba, 1e-12, 1.0)), np.zeros(proba.shape[1])
    best = f1_score(y, logp.argmax(1), average="macro", zero_division=0)
    for _ in range(rounds):
        for c in range(1, proba.shape[1]):
            for g in grid:
                trial = b.copy()
                trial[c] = g  # the argmax needs no renormalization
                f1 = f1_score(y, (logp + trial).argmax(1), average="macro", zero_division=0)
                if f1 > best + 1e-12:
                    best, b = f1, trial
    return b


def prior_correction_rows(y_va: np.ndarray, pv: np.ndarray, y_te: np.ndarray, pt: np.ndarray) -> str:
    """The head's output (the row above) with log-biases fitted on validation: in-sample, cross-fitted, test."""
    b = fit_log_bias(y_va, pv)
    label = f"+ prior correction (log-biases {np.round(b, 1).tolist()}), val in-sample"
    rows = f"| {label} | | {scores(y_va, shift(pv, b))} | {scores(y_te, shift(pt, b))} |"
    folds = validation_folds(y_va)
    if folds is None:  # a class with a single validation image: no honest cross-fitted score
        return rows
    cross = np.zeros_like(pv)
    for fit, held in folds.split(pv, y_va):
        cross[held] = shift(pv[held], fit_log_bias(y_va[fit], pv[fit]))
    return rows + f"\n| + prior correction, val cross-fitted | | {scores(y_va, cross)} | |"


def scores(y: np.ndarray, proba: np.ndarray) -> str:
    s = training.val_scores(y, proba)
    return f"{s['val_accuracy']:.3f} / {s['val_macro_f1']:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data_dir")
    ap.add_argument("--backbone", default="mobilenet")
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--fraction", type=float, default=0.3, help="share of the backbone's depth above the cut")
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--class-weight", default="sqrt", choices=["balanced", "sqrt", "none"])
    ap.add_argument("--split-seed", type=int, default=42)
    ap.add_argument("--seeds", type=int, nargs="+", default=[42])
    ap.add_argument("--tta", action="store_true", help="also average each head's val/test output over the four flips")
    ap.add_argument("--label-smoothing", type=float, default=0.0, help="train on one-hot targets smoothed by EPS")
    ap.add_argument("--focal", type=float, default=0.0, help="focal loss with this gamma instead of cross-entropy")
    ap.add_argument("--mixup", type=float, default=0.0, help="mix each batch with a shuffled copy, Beta(ALPHA, ALPHA)")
    ap.add_argument("--prior-correction", action="store_true", help="log-biases fitted on val for macro-F1")
    args = ap.parse_args()
    t0 = time.perf_counter()
    ds = data.discover(args.data_dir)
    man = data.split_dataset(ds, (0.7, 0.15, 0.15), args.split_seed)
    tr, va, te = (man[man.subset == s] for s in ("train", "val", "test"))
    y_tr, y_va, y_te = (d.label.to_numpy() for d in (tr, va, te))
    k = len(ds.classes)
    cw = data.class_weights(y_tr, k, args.class_weight)
    model, source = build_classifier(args.backbone, ds.classes, args.img_size, "imagenet", 0.2, None, args.split_seed)
    model.get_layer("backbone").trainable = False

    # the probe: logistic regression on the last layer's pooled features of the plain images
    kw = dict(size=args.img_size, policy="stretch", weights_source=source, backbone=args.backbone, seed=args.split_seed)
    f_tr, f_va, f_te = (training.extract_features(model, list(d.path), **kw)[0] for d in (tr, va, te))
    head = model.get_layer("head")
    training.adapt_feature_norm(head, f_tr)
    z = [probe.standardize(head, f) for f in (f_tr, f_va, f_te)]
    p = probe.fit_probe(z[0], y_tr, z[1], y_va, k, cw)
    print(f"{args.data_dir}: {args.backbone} {args.img_size} px; train {len(tr)}, val {len(va)}, test {len(te)}")
    print("| model | val log-loss | val acc / macro-F1 | test acc / macro-F1 |\n|---|---|---|---|")
    print(
        f"| probe_{args.backbone} (C={p.C}) | {p.val_log_loss:.3f} | {scores(y_va, p.predict_proba(z[1]))} "
        f"| {scores(y_te, p.predict_proba(z[2]))} |"
    )

    # keyed by the trunk's weights, as training keys it: the two share the map cache
    src, trunk, cut = maphead.map_source(model, args.fraction, args.backbone, args.img_size, "stretch")
    t1 = time.perf_counter()
    train_maps = [src.maps(list(tr.path), f) for f in maphead.FLIPS]
    val_maps, test_maps = (np.asarray(src.maps(list(d.path)), "float32") for d in (va, te))
    flipped = {  # val and test maps of flips 1..3, for --tta
        n: [np.asarray(src.maps(list(d.path), f), "float32") for f in maphead.FLIPS[1:]] if args.tta else []
        for n, d in (("val", va), ("test", te))
    }
    t_maps = time.perf_counter() - t1
    runs = []  # each seed's plain val and test probabilities, for the average over seeds
    soft = args.label_smoothing > 0 or args.mixup > 0 or args.focal > 0
    loss = keras.losses.CategoricalFocalCrossentropy(alpha=1.0, gamma=args.focal) if args.focal else None
    if soft:
        SoftBatches.eps, SoftBatches.alpha, SoftBatches.k = args.label_smoothing, args.mixup, k
        maphead.FlipBatches = SoftBatches  # what fit_head builds its batches with
    for seed in args.seeds:
        keras.utils.set_random_seed(seed)
        net = maphead.build_head(train_maps[0].shape[1:], k, args.width, seed=seed)
        t1 = time.perf_counter()
        _, kept = maphead.fit_head(
            net,
            train_maps,
            y_tr,
            val_maps,
            y_va,
            weights=np.array([cw.get(int(c), 1.0) for c in y_tr], np.float32),
            epochs=args.epochs,
            lr=args.lr,
            batch_size=32,
            monitor="val_loss",
            seed=seed,
            scores=training.val_scores,
            loss=loss or ("categorical_crossentropy" if soft else "sparse_categorical_crossentropy"),
        )
        ll, epoch = kept["scores"]["val_loss"], kept["epoch"]
        pv, pt = (net.predict(m, batch_size=64, verbose=0) for m in (val_maps, test_maps))
        runs.append((pv, pt))
        print(
            f"| map head, seed {seed} (epoch {epoch + 1} of {args.epochs}) | {ll:.3f} | {scores(y_va, pv)} "
            f"| {scores(y_te, pt)} |"
        )
        if args.tta:
            pv = np.mean([pv] + [net.predict(m, batch_size=64, verbose=0) for m in flipped["val"]], axis=0)
            pt = np.mean([pt] + [net.predict(m, batch_size=64, verbose=0) for m in flipped["test"]], axis=0)
            print(
                f"| the same, four flips averaged | {probe.log_loss(y_va, pv):.3f} | {scores(y_va, pv)} "
                f"| {scores(y_te, pt)} |"
            )
        if args.prior_correction:
            print(prior_correction_rows(y_va, pv, y_te, pt))
        print(f"    head training {time.perf_counter() - t1:.0f} s")
    if len(runs) > 1:  # an ensemble of the heads: same maps, other initializations and batch orders
        pv, pt = (np.mean([r[i] for r in runs], axis=0) for i in (0, 1))
        print(
            f"| the {len(runs)} heads' outputs averaged | {probe.log_loss(y_va, pv):.3f} | {scores(y_va, pv)} "
            f"| {scores(y_te, pt)} |"
        )
    print(f"\ncut at {cut} {tuple(trunk.output.shape[1:])}; maps {t_maps:.0f} s (cached under <GC10_CACHE_DIR>/maps/)")
    print(f"{time.perf_counter() - t0:.0f} s in all")


if __name__ == "__main__":
    main()
